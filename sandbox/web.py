"""Shared bits of the sandbox's web layer: its URLs, its state, its two error shapes."""

from __future__ import annotations

from typing import Any

from flask import current_app, jsonify, request
from flask.wrappers import Response

from sandbox.state import SandboxState

FHIR_JSON = "application/fhir+json"


def state() -> SandboxState:
    st: SandboxState = current_app.extensions["sandbox"]
    return st


def base_url() -> str:
    """`http://host:port` as the client reached us (the sandbox serves no other host)."""
    return request.host_url.rstrip("/")


def fhir_base() -> str:
    return base_url() + "/fhir"


def issuer() -> str:
    """OIDC issuer: the FHIR base, or the vendor's OAuth server path (epic: /oauth2)."""
    path = state().profile.issuer_path
    return base_url() + path if path else fhir_base()


def token_endpoint() -> str:
    return base_url() + "/auth/token"


class OAuthError(Exception):
    """An OAuth 2.0 error response (RFC 6749 5.2)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def response(self) -> Response:
        resp = jsonify({"error": self.error, "error_description": self.description})
        resp.status_code = self.status
        resp.headers["Cache-Control"] = "no-store"
        if self.status == 401:
            resp.headers["WWW-Authenticate"] = 'Basic realm="sandbox"'
        return resp


# OperationOutcome issue codes by HTTP status, for errors raised without an explicit code.
_ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    415: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "duplicate",
    422: "processing",
    429: "throttled",
    500: "exception",
    503: "transient",
}


class FhirError(Exception):
    """A FHIR error: answered with an OperationOutcome and the status it carries."""

    def __init__(
        self,
        status: int,
        diagnostics: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code or _ISSUE_CODES.get(status, "processing")
        self.headers = headers or {}

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.diagnostics, self.code, "error")


def operation_outcome(diagnostics: str, code: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def fhir_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    resp = current_app.response_class(
        current_app.json.dumps(body) if body is not None else "",
        status=status,
        mimetype=FHIR_JSON,
    )
    if body is None:
        resp.headers.pop("Content-Type", None)
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp
