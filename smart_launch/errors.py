"""Errors raised by the SMART client.

Lower layers raise; the web edge turns these into a sidebar-sized page or one JSON error
shape, and jobs let RQ see them. Every message is safe to show a user: it comes from the
server's OperationOutcome or OAuth ``error_description``, never from a token or a code.
"""

from __future__ import annotations

from typing import Any


class SmartError(Exception):
    """Base class. ``code`` is a short machine-readable reason; ``str(exc)`` is user-safe."""

    code: str = "smart_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class LaunchError(SmartError):
    code = "launch_error"


class UnknownIssuer(LaunchError):
    code = "unknown_issuer"


class StateError(LaunchError):
    code = "invalid_state"


class DiscoveryError(LaunchError):
    code = "discovery_failed"


class AuthorizationDenied(LaunchError):
    """The authorization server redirected back with ``error=...``."""

    code = "authorization_denied"

    def __init__(self, error: str, error_description: str | None = None) -> None:
        super().__init__(error_description or error, code=error)
        self.error = error
        self.error_description = error_description


class AuthFailed(SmartError):
    """The token endpoint refused us, or what it returned cannot be trusted."""

    code = "auth_failed"

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        error_description: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message, code=error)
        self.error = error
        self.error_description = error_description
        self.status = status


class IdTokenInvalid(AuthFailed):
    code = "invalid_id_token"


class NeedsAuthorization(SmartError):
    """No usable access token, refresh token or backend credentials: a user must launch again."""

    code = "needs_authorization"


class RefreshBusy(SmartError):
    """Another worker held the refresh lock for longer than we were willing to wait."""

    code = "refresh_busy"


class FhirError(SmartError):
    code = "fhir_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        operation_outcome: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.operation_outcome = operation_outcome
        self.retry_after = retry_after


class TemporaryFhirError(FhirError):
    """408/429/500/502/503/504, timeouts and connection failures: worth retrying."""

    code = "fhir_temporary"


class FatalFhirError(FhirError):
    """Everything else: retrying the same request will not help."""

    code = "fhir_fatal"


class UnsafeUrl(FatalFhirError):
    """A URL (a paging link, a redirect) that leaves the registration's FHIR base.

    The bearer token must never travel there, so no request is made.
    """

    code = "unsafe_url"
