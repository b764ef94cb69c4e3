"""The sandbox's app factory and the middleware that applies the fault knobs."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app, g, jsonify, request
from flask.wrappers import Response
from werkzeug.exceptions import HTTPException

from sandbox import admin, auth, ehr, fhir
from sandbox.options import SandboxOptions
from sandbox.state import SandboxState, sha
from sandbox.web import FhirError, OAuthError, fhir_response, operation_outcome, state

log = logging.getLogger(__name__)


def create_app(options: SandboxOptions | Mapping[str, Any] | None = None) -> Flask:
    """Build the sandbox app. `options` is a SandboxOptions or a mapping of its fields."""
    if options is None:
        options = SandboxOptions()
    elif not isinstance(options, SandboxOptions):
        options = SandboxOptions(**options)
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["sandbox"] = SandboxState(options)
    # Seeded so a fault run can be repeated; not used for anything secret.
    app.extensions["sandbox_rng"] = random.Random(options.seed)  # noqa: S311
    app.register_blueprint(auth.bp)
    app.register_blueprint(fhir.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(ehr.bp)
    app.before_request(_before)
    app.after_request(_after)
    app.register_error_handler(FhirError, _fhir_error)
    app.register_error_handler(OAuthError, lambda exc: exc.response())
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    return app


def _kind(path: str) -> str:
    if path.startswith("/fhir/.well-known") or path.startswith(("/auth/", "/oauth2/")):
        return "auth"
    if path == "/fhir" or path.startswith("/fhir/"):
        return "fhir"
    return "other"


def _before() -> Response | None:
    g.start = time.monotonic()
    kind = _kind(request.path)
    if kind == "other":
        return None
    st = state()
    with st.lock:
        knobs = st.knobs
        latency = knobs.latency_ms
        scripted = None
        if kind == "fhir":
            st.fhir_request_count += 1
            number = st.fhir_request_count
            for i, item in enumerate(knobs.fail_next):
                if item.get("path_contains", "") in request.full_path:
                    scripted = knobs.fail_next.pop(i)
                    break
    if latency:
        time.sleep(latency / 1000.0)
    if kind != "fhir":
        return None
    if scripted is not None:
        st.count(f"faults.scripted_{scripted['status']}")
        return _fault(
            int(scripted["status"]),
            str(scripted.get("diagnostics") or "scripted failure (sandbox fail_next)"),
            scripted.get("retry_after"),
        )
    if request.path == "/fhir/metadata":
        return None  # random faults spare discovery; fail_next can still target it
    limit = knobs.rate_limit
    if limit and number % int(limit["every"]) == 0:
        st.count("faults.rate_limited")
        return _fault(429, "rate limited (sandbox rate_limit knob)", limit.get("retry_after", 1))
    rng: random.Random = current_app.extensions["sandbox_rng"]
    if knobs.error_rate and rng.random() < knobs.error_rate:
        st.count("faults.error_rate")
        return _fault(503, "service unavailable (sandbox error_rate knob)", None)
    return None


def _fault(status: int, diagnostics: str, retry_after: Any) -> Response:
    code = {429: "throttled", 503: "transient"}.get(status, "processing")
    headers = {}
    if retry_after is not None:
        value = float(retry_after)
        headers["Retry-After"] = str(int(value)) if value.is_integer() else str(value)
    return fhir_response(operation_outcome(diagnostics, code), status, headers)


def _after(response: Response) -> Response:
    kind = _kind(request.path)
    if kind == "other":
        return response
    st = state()
    header = request.headers.get("Authorization", "")
    entry: dict[str, Any] = {
        "method": request.method,
        "path": request.path,
        "query": request.query_string.decode("latin-1"),
        "status": response.status_code,
        "start": g.get("start", time.monotonic()),
        "end": time.monotonic(),
    }
    if header.lower().startswith("bearer "):
        entry["token_sha"] = sha(header[7:].strip())[:16]
    st.log_request(entry)
    if kind == "fhir":
        st.count(f"fhir_status.{response.status_code}")
    return response


def _fhir_error(exc: FhirError) -> Response:
    if _kind(request.path) != "fhir":
        resp = jsonify({"error": exc.code, "error_description": exc.diagnostics})
        resp.status_code = exc.status
        return resp
    return fhir_response(exc.outcome(), exc.status, exc.headers)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    if _kind(request.path) == "fhir":
        code = {404: "not-found", 405: "not-supported"}.get(status, "processing")
        return fhir_response(operation_outcome(exc.description or exc.name, code), status)
    resp = exc.get_response()
    return resp  # type: ignore[return-value]


def _unexpected(exc: Exception) -> Response:
    log.exception("sandbox: unhandled error on %s %s", request.method, request.path)
    if _kind(request.path) == "fhir":
        return fhir_response(operation_outcome("internal error in the sandbox", "exception"), 500)
    resp = jsonify({"error": "server_error", "error_description": "internal error"})
    resp.status_code = 500
    return resp
