"""Every failure becomes one JSON error shape or a sidebar-sized page; never a traceback.

JSON shape: ``{"error": {"code": str, "message": str, "request_id": str}}``. The request
id is also on the log line, so a user's screenshot leads straight to the log.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from marshmallow import ValidationError
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from helpdesk.db import store_problem
from helpdesk.errors import AppError
from helpdesk.logctx import current_request_id
from smart_launch.errors import (
    AuthorizationDenied,
    ClientRejected,
    ConfigurationError,
    NeedsAuthorization,
    SmartError,
    StateError,
    TemporaryFhirError,
)

log = logging.getLogger("caredesk.errors")

# Patients see these too (the survey page): what to do, not how; the log line and
# /healthz tell the operator to run `caredesk db upgrade`.
_NOT_MIGRATED = (
    "CareDesk is not set up yet: its database needs an upgrade by the people who run it. "
    "Try again later."
)
_UNAVAILABLE = "CareDesk cannot reach its store right now. Try again in a minute."


def wants_json() -> bool:
    if request.path.startswith("/api/") or request.is_json:
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return (
        best == "application/json"
        and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]
    )


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    title: str | None = None,
    fields: dict[str, Any] | None = None,
    ehr_text: str | None = None,
) -> Response:
    """The one JSON error shape (``fields``: a 422's messages per input field), or a
    sidebar-sized page. ``message`` is CareDesk's own sentence; ``ehr_text`` is what the
    EHR said (cleaned by ``smart_launch.errors``: one line, no control characters), kept
    apart so a page shows it quoted and attributed to the EHR, never as CareDesk's."""
    rid = current_request_id()
    if wants_json():
        error: dict[str, Any] = {"code": code, "message": message, "request_id": rid}
        if fields is not None:
            error["fields"] = fields
        if ehr_text:
            error["ehr_text"] = ehr_text
        response = jsonify({"error": error})
    else:
        response = Response(
            render_template(
                "error.html",
                status=status,
                code=code,
                message=message,
                request_id=rid,
                title=title or _TITLES.get(status, "Something went wrong"),
                ehr_text=ehr_text,
            ),
            mimetype="text/html",
        )
    response.status_code = status
    return response


_TITLES = {
    400: "That request could not be used",
    401: "Please launch CareDesk again",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed",
    429: "Too many requests",
    500: "Something went wrong on our side",
    502: "The EHR did not answer as expected",
    503: "Temporarily unavailable",
}


# The page's heading says whose side must act, so an `invalid_client` (CareDesk's own
# credentials) is not headed "The EHR did not answer as expected". The EHR's failures keep
# the status's heading.
_PARTY_TITLES = {
    "caredesk": "CareDesk's set-up for this EHR needs fixing",
    "network": "The EHR could not be reached",
}


def _party_title(exc: SmartError) -> str | None:
    """The heading for CareDesk's own credentials or set-up and for an unreachable EHR;
    None (the status's heading) otherwise: a launch to redo, a refused sign-in, the EHR's
    own failure."""
    if isinstance(exc, ClientRejected | ConfigurationError) or exc.party == "network":
        return _PARTY_TITLES.get(exc.party)
    return None


def smart_error_status(exc: SmartError) -> tuple[int, str]:
    """The one reading of a SMART/FHIR failure as an HTTP answer: (status, code).

    401 when the user must launch again (no usable token); 400 for a broken or replayed
    sign-in; 503 when the EHR is busy or down for now; 502 when the EHR failed or refused.
    """
    if isinstance(exc, NeedsAuthorization):
        return 401, exc.code or "needs_authorization"
    if isinstance(exc, StateError):
        return 400, exc.code
    if isinstance(exc, AuthorizationDenied):
        return 403, "authorization_denied"
    if isinstance(exc, TemporaryFhirError):
        return 503, "ehr_unavailable"
    return 502, "ehr_error"


_INVALID = "Some fields are missing or invalid."
_INTERNAL = "CareDesk hit an unexpected error. Quote the request id to support."


def _refused(status: int, code: str, message: str, **extra: Any) -> Response:
    """A request refused for what it asked (not a failure of CareDesk or the EHR): one log
    line with the code and status only (the input may hold patient data), and the answer."""
    log.info("request failed: %s (%s)", code, status)
    return error_response(status, code, message, **extra)


def register(app: Flask) -> None:
    @app.errorhandler(AppError)
    def _app_error(exc: AppError) -> Response:
        return _refused(exc.status, exc.code, exc.message)

    @app.errorhandler(SmartError)
    def _smart_error(exc: SmartError) -> Response:
        status, code = smart_error_status(exc)
        # The class and status only: the EHR's own text may quote patient data.
        log.info(
            "EHR request failed: %s (HTTP %s) -> %s",
            type(exc).__name__,
            getattr(exc, "status", None),
            status,
        )
        response = error_response(
            status, code, exc.summary, ehr_text=exc.ehr_text, title=_party_title(exc)
        )
        retry_after = getattr(exc, "retry_after", None)
        if status == 503 and retry_after:
            response.headers["Retry-After"] = str(int(retry_after))
        return response

    @app.errorhandler(ValidationError)
    def _invalid(exc: ValidationError) -> Response:
        # A schema (plugin.schemas) or a service rule refused the input: 422 with the
        # messages per field.
        return _refused(422, "validation_failed", _INVALID, fields=field_messages(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        if status >= 500:
            log.error("HTTP %s", status)
        response = error_response(status, code, exc.description or exc.name or "Error")
        # The exception's own headers: a 405's `Allow` lists the methods the URL takes.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(DBAPIError)
    def _store_error(exc: DBAPIError) -> Response:
        problem = store_problem(exc)
        if problem is None:
            return _unhandled(exc)
        # The database's first line only (no statement, no parameters, never the URL).
        log.error("store not ready (%s): %s", problem.kind, problem.detail)
        if problem.kind == "not_migrated":
            return error_response(503, "store_not_migrated", _NOT_MIGRATED)
        return error_response(503, "store_unavailable", _UNAVAILABLE)

    @app.errorhandler(Exception)
    def _unhandled(exc: Exception) -> Response:
        # The traceback goes to the log with the request id; the client gets the id only.
        log.exception("unhandled error")
        return error_response(500, "internal_error", _INTERNAL)


def field_messages(exc: ValidationError) -> dict[str, Any]:
    """``{field: [messages]}``, also for an error raised outside a schema with a field name
    (``exc.messages`` is then a bare list)."""
    messages: dict[str, Any] = exc.normalized_messages()  # type: ignore[no-untyped-call]
    return messages
