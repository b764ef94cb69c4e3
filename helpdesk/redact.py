"""Secrets out of every log line: the web app's, the worker's, gunicorn's access log and
the libraries' (werkzeug, urllib3, rq) alike.

CareDesk's own log calls carry ids only; this is the net under them, for the lines that
quote a URL or a payload: a survey link is a bearer credential (``/s/<token>``), an EHR
launch carries ``launch=`` in its query, the OAuth callback ``code=`` and ``state=``, a
FHIR search may name a phone number or an email, a token response carries tokens. One
record factory (``install``) rewrites every record's message as it is made, so no
handler, formatter or library can print the original: query values of sensitive
parameters, survey link tokens, bearer tokens, JWTs and token fields of JSON become
``[redacted]``, and control characters (CR/LF would forge a log line) are escaped.
Tracebacks are redacted too, but keep their line breaks.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"

# Query and form parameters whose values are credentials or patient data.
SENSITIVE_PARAMS = (
    "code",
    "state",
    "launch",
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "client_secret",
    "client_assertion",
    "assertion",
    "code_verifier",
    "password",
    "error_description",
    "telecom",
    "phone",
    "email",
    "name",
    "family",
    "given",
    "birthdate",
    "identifier",
    "address",
)
_PARAM = re.compile(
    r"(?P<key>(?<![A-Za-z0-9_])(?:" + "|".join(SENSITIVE_PARAMS) + r"))=(?P<value>[^&\s\"'<>;,)]+)",
    re.IGNORECASE,
)
_SURVEY_LINK = re.compile(r"/s/[A-Za-z0-9_\-]{8,}")
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]+", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")
_JSON_FIELD = re.compile(
    r"(?P<key>[\"'](?:access_token|refresh_token|id_token|client_secret|code|state|launch"
    r"|code_verifier|client_assertion)[\"']\s*:\s*)[\"'][^\"']*[\"']"
)
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    return match.group(0).encode("unicode_escape").decode("ascii")


def redact(text: str, *, keep_lines: bool = False) -> str:
    """``text`` without secrets (see the module docstring). ``keep_lines`` leaves line
    breaks alone (a traceback); otherwise control characters are escaped."""
    text = _SURVEY_LINK.sub("/s/" + REDACTED, text)
    text = _PARAM.sub(lambda m: f"{m.group('key')}={REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    text = _JSON_FIELD.sub(lambda m: f'{m.group("key")}"{REDACTED}"', text)
    if keep_lines:
        return text
    return _CONTROLS.sub(_escape, text)


_formatter = logging.Formatter()


def _redacting_factory(base: Any) -> Any:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: logging reports it at emit
            return record
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(_formatter.formatException(record.exc_info), keep_lines=True)
        return record

    make._caredesk_redacting = True  # type: ignore[attr-defined]
    return make


def install() -> None:
    """Make every log record of this process redacted as it is made (idempotent)."""
    current = logging.getLogRecordFactory()
    if not getattr(current, "_caredesk_redacting", False):
        logging.setLogRecordFactory(_redacting_factory(current))
