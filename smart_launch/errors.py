"""Errors raised by the SMART client, each saying whose fault it is.

Lower layers raise; the web edge turns these into a sidebar-sized page or one JSON error
shape (:meth:`SmartError.to_dict`), and jobs let RQ see them. Every error carries:

- ``summary``: CareDesk's own sentence, safe to show a user. It never contains text the
  EHR sent, nor a token or a code.
- ``party``: whose side the problem is on. ``"caredesk"``: CareDesk's own registration,
  credentials or configuration (an administrator of CareDesk or of the EHR's app
  registration fixes it); ``"ehr"``: the EHR refused or failed (its answer is in
  ``ehr_text``); ``"network"``: the EHR could not be reached or did not answer in time.
- ``error``: the OAuth error code the EHR sent (``invalid_client``...), sanitized.
- ``ehr_text``: what the EHR said (OAuth ``error_description``, OperationOutcome text),
  with control characters stripped, to be shown only quoted and attributed to the EHR.
- ``temporary``: whether the same request may succeed later.

- ``message`` (and ``str(exc)``): :meth:`SmartError.describe`, the summary followed by
  the EHR's words quoted and attributed (``... The EHR said: "..."``), for job rows, logs
  and the command line. A page that can set the EHR's words apart shows ``summary`` and
  ``ehr_text`` separately instead.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal, TypedDict, Unpack

Party = Literal["caredesk", "ehr", "network"]

# C0 and C1 controls (CR, LF, TAB, ESC, DEL...), Unicode line/paragraph separators,
# zero-width and bidirectional formatting characters: none of them belong in one line
# of quoted text, and CR/LF in a log line or a header is an injection.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]+")
EHR_TEXT_LIMIT = 500
# RFC 6749 5.2 error codes are short ASCII words; keep the leading run of such characters.
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def clean_ehr_text(value: object, *, limit: int = EHR_TEXT_LIMIT) -> str | None:
    """EHR-supplied text as one line: controls replaced by spaces, runs of whitespace
    collapsed, cut at ``limit`` characters. ``None`` for anything that is not text or
    is empty afterwards."""
    if not isinstance(value, str):
        return None
    text = " ".join(_CONTROLS.sub(" ", value).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text or None


def clean_error_code(value: object) -> str | None:
    """An OAuth error code fit for a JSON field and a log line: the leading run of
    ``[A-Za-z0-9_.-]`` (at most 64), or ``None``. ``"access_denied\\r\\nX: y"`` gives
    ``"access_denied"``."""
    if not isinstance(value, str):
        return None
    match = _ERROR_CODE.match(value)
    return match.group(0) if match else None


class Detail(TypedDict, total=False):
    """What an error says besides its summary (see the module docstring)."""

    code: str | None  # instead of the class's own code (an id_token check's, say)
    party: Party | None  # instead of the class's own party
    error: str | None
    ehr_text: str | None
    status: int | None  # the HTTP status, when there was an answer


class SmartError(Exception):
    """Base class. ``code`` is a short machine-readable reason; ``summary`` is CareDesk's
    own user-safe sentence; see the module docstring for the other attributes."""

    code: str = "smart_error"
    party: Party = "caredesk"
    temporary: bool = False
    # What ``to_dict`` gives, in this order.
    _PUBLIC: ClassVar[tuple[str, ...]] = (
        "code",
        "party",
        "summary",
        "error",
        "ehr_text",
        "status",
        "temporary",
    )

    def __init__(self, message: str, **detail: Unpack[Detail]) -> None:
        super().__init__(message)
        self.summary = message
        self.code = clean_error_code(detail.get("code")) or self.code
        self.party = detail.get("party") or self.party
        self.error = clean_error_code(detail.get("error"))
        self.ehr_text = clean_ehr_text(detail.get("ehr_text"))
        self.status = detail.get("status")
        self.message = self.describe()

    def describe(self) -> str:
        """The summary, then the EHR's own words quoted and attributed to it."""
        if self.ehr_text:
            return f'{self.summary} The EHR said: "{self.ehr_text}"'
        return self.summary

    def __str__(self) -> str:
        return self.describe()

    def to_dict(self) -> dict[str, Any]:
        """One JSON-able shape for every error (the web edge's error body)."""
        return {name: getattr(self, name) for name in self._PUBLIC}


class OAuthErrorResponse(SmartError):
    """What an OAuth server answered with instead of a grant or a token (RFC 6749
    4.1.2.1, 5.2): its ``error`` code, and its ``error_description`` kept as ``ehr_text``."""

    @property
    def error_description(self) -> str | None:
        return self.ehr_text


class ConfigurationError(SmartError):
    """CareDesk was asked to do something its registration does not allow (a redirect
    without a redirect URI, a backend token without a backend client)."""

    code = "configuration"


class LaunchError(SmartError):
    """The launch cannot go on; the subclasses say why."""

    code = "launch_error"


class UnknownIssuer(LaunchError):
    """The launch names an EHR (``iss``) that is not registered."""

    code = "unknown_issuer"


class StateError(LaunchError):
    """The callback's ``state`` is missing, unknown, used or expired."""

    code = "invalid_state"


class BrowserMismatch(StateError):
    """The callback arrived in a browser other than the one that started the launch."""

    code = "browser_mismatch"


class DiscoveryError(LaunchError):
    """The EHR's SMART configuration cannot be found or read."""

    code = "discovery_failed"
    party: Party = "ehr"


class AuthorizationDenied(LaunchError, OAuthErrorResponse):
    """The authorization server redirected back with ``error=...`` (the user said no, or
    the EHR refused the request). The EHR's code is ``error``, its text ``ehr_text``."""

    code = "authorization_denied"
    party: Party = "ehr"

    def __init__(self, error: str, error_description: str | None = None) -> None:
        code = clean_error_code(error)
        super().__init__(
            "The EHR did not authorize CareDesk"
            + (f" ({code})." if code else ".")
            + " Launch CareDesk again, or ask your EHR administrator.",
            code=code,
            error=code,
            ehr_text=error_description,
        )


class NeedsAuthorization(SmartError):
    """No usable access token, refresh token or backend credentials: a user must launch again."""

    code = "needs_authorization"


class NoBackendClient(NeedsAuthorization, ConfigurationError):
    """The registration has no backend-services client (or no key): not a failure of
    the EHR, just a job that must wait for a user's grant. Sweeps log it in one line."""

    code = "no_backend_client"


class RefreshBusy(SmartError):
    """Another worker held the refresh lock for longer than we were willing to wait."""

    code = "refresh_busy"
    temporary = True


class AuthFailed(OAuthErrorResponse):
    """The token endpoint refused us, or what it returned cannot be trusted.

    The subclasses say whose fault: :class:`ClientRejected` (CareDesk's credentials),
    :class:`GrantRejected` (the EHR no longer honours this grant), :class:`EhrServerError`,
    :class:`EhrUnreachable`, :class:`IdTokenInvalid`.
    """

    code = "auth_failed"
    party: Party = "ehr"


class ClientRejected(AuthFailed):
    """The token endpoint refused CareDesk's own client credentials or registration:
    ``invalid_client`` (unknown client, unknown asymmetric client, bad secret, bad
    assertion), ``unauthorized_client``, ``invalid_scope``. Relaunching will not help;
    the registration (here or in the EHR) must be fixed."""

    code = "client_rejected"
    party: Party = "caredesk"


class BackendClientRejected(ClientRejected, NeedsAuthorization):
    """The EHR refused the backend-services client (``invalid_client`` for an unknown
    asymmetric client or a bad assertion...). A :class:`NeedsAuthorization` too: a job
    may still run on the refresh token of the launch that queued it."""

    code = "backend_client_rejected"


class GrantRejected(AuthFailed, NeedsAuthorization):
    """``invalid_grant``: the EHR no longer honours this code or refresh token (used,
    expired, revoked). The user must launch CareDesk again."""

    code = "grant_rejected"
    party: Party = "ehr"


class EhrServerError(AuthFailed):
    """The token endpoint failed on its side (5xx, ``server_error``,
    ``temporarily_unavailable``): worth retrying later."""

    code = "ehr_server_error"
    party: Party = "ehr"
    temporary = True


class EhrUnreachable(AuthFailed):
    """The token endpoint could not be reached or did not answer in time."""

    code = "ehr_unreachable"
    party: Party = "network"
    temporary = True


class IdTokenInvalid(AuthFailed):
    """The EHR's id_token cannot be trusted: no keys to check it with, not a JWT, or a
    signature or claim that does not verify."""

    code = "invalid_id_token"
    party: Party = "ehr"


class FhirError(SmartError):
    """A FHIR request failed (see :class:`TemporaryFhirError` and :class:`FatalFhirError`);
    ``operation_outcome`` is what the server explained, ``retry_after`` how long it asked
    to wait (seconds)."""

    code = "fhir_error"
    party: Party = "ehr"

    def __init__(
        self,
        message: str,
        *,
        operation_outcome: dict[str, Any] | None = None,
        retry_after: float | None = None,
        **detail: Unpack[Detail],
    ) -> None:
        super().__init__(message, **detail)
        self.operation_outcome = operation_outcome
        self.retry_after = retry_after


class TemporaryFhirError(FhirError):
    """408/429/500/502/503/504, timeouts and connection failures: worth retrying."""

    code = "fhir_temporary"
    temporary = True


class FhirUnreachable(TemporaryFhirError):
    """The FHIR server could not be reached or did not answer in time."""

    code = "fhir_unreachable"
    party: Party = "network"


class FatalFhirError(FhirError):
    """Everything else: retrying the same request will not help."""

    code = "fhir_fatal"


class UnsafeUrl(FatalFhirError):
    """A URL (a paging link, a redirect) that leaves the registration's FHIR base.

    The bearer token must never travel there, so no request is made.
    """

    code = "unsafe_url"
