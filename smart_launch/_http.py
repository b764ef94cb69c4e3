"""Small HTTP helpers shared by the modules: cache headers, Retry-After, error text, URL scope."""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.auth

DEFAULT_PORTS = {"http": 80, "https": 443}


class _OwnCredentials(requests.auth.AuthBase):
    """The ``auth`` of a request that carries its own credentials (a bearer token, a
    client assertion): requests is to add none.

    Without an ``auth``, requests looks up ``~/.netrc`` for the host on every request (two
    file-system look-ups and the home directory's expansion: a write-back job's one EHR
    request paid them every time, issue 16) and, when the file names that host, replaces
    the request's ``Authorization`` header with Basic credentials from it: a login of the
    machine's user sent to the EHR instead of the token. With any ``auth`` it does neither
    (nor does it read credentials from the URL).
    """

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request

    def __repr__(self) -> str:
        return "OWN_CREDENTIALS"


OWN_CREDENTIALS = _OwnCredentials()


def cache_ttl(
    headers: Mapping[str, str],
    *,
    now: datetime,
    default: float,
    minimum: float,
    ceiling: float,
) -> float:
    """Seconds a response may be reused, from Cache-Control max-age or Expires.

    Clamped to [minimum, ceiling]: a server that says ``no-store`` still must not make us
    refetch discovery on every launch, and one that says a year must not pin a stale
    token endpoint for that long.
    """
    ttl = default
    cache_control = headers.get("Cache-Control", "")
    directives = {d.strip().lower() for d in cache_control.split(",") if d.strip()}
    match = re.search(r"(?:^|,)\s*(?:s-)?max-age\s*=\s*\"?(\d+)", cache_control, re.IGNORECASE)
    if "no-store" in directives or "no-cache" in directives:
        ttl = 0.0
    elif match:
        ttl = float(match.group(1))
    elif headers.get("Expires"):
        expires = parse_http_date(headers["Expires"])
        # An unparseable Expires means "already expired" (RFC 9111 5.3).
        ttl = (expires - now).total_seconds() if expires else 0.0
    return max(minimum, min(ceiling, ttl))


def parse_http_date(value: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from now: either delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    when = parse_http_date(value)
    if when is None:
        return None
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def outcome_text(outcome: Mapping[str, Any] | None) -> str | None:
    """The human text of an OperationOutcome: issue[].diagnostics, else details.text."""
    if not outcome or outcome.get("resourceType") != "OperationOutcome":
        return None
    texts: list[str] = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, Mapping):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
        if isinstance(text, str) and text:
            texts.append(text)
    return "; ".join(texts) or None


def json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or DEFAULT_PORTS.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def is_under(url: str, base: str) -> bool:
    """True when ``url`` is ``base`` itself or below it (same scheme, host, port, path prefix).

    A plain string prefix test would accept ``https://ehr.example/fhir-evil`` for the base
    ``https://ehr.example/fhir`` or ``https://ehr.example.attacker.net``.
    """
    if _origin(url) != _origin(base):
        return False
    base_path = urlsplit(base).path.rstrip("/")
    path = urlsplit(url).path
    if ".." in path.split("/"):
        return False
    return path == base_path or path.startswith(base_path + "/")
