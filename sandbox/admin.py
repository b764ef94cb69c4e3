"""The admin API: knobs, clients, launches, the request log, stats, bulk data, reset.

No authentication: the sandbox is a loopback-only development and test tool. Never
expose it on a shared network.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from flask import Blueprint, jsonify, request
from flask.wrappers import Response

from sandbox.auth import create_launch
from sandbox.clients import client_from_json
from sandbox.web import state

bp = Blueprint("admin", __name__, url_prefix="/admin")

MAX_GENERATE = 200_000


def _error(message: str, status: int = 400) -> Response:
    resp = jsonify({"error": message})
    resp.status_code = status
    return resp


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    return data if isinstance(data, dict) else {}


@bp.get("/knobs")
def get_knobs() -> Response:
    return jsonify(state().knobs.to_json())


@bp.post("/knobs")
def set_knobs() -> Response:
    st = state()
    try:
        with st.lock:
            st.knobs.update(_body())
    except ValueError as exc:
        return _error(str(exc))
    return jsonify(st.knobs.to_json())


def _clock_json() -> dict[str, Any]:
    st = state()
    now = dt.datetime.fromtimestamp(st.now(), dt.UTC)
    return {"offset_seconds": st.clock_offset, "now": now.isoformat(timespec="seconds")}


@bp.get("/clock")
def get_clock() -> Response:
    return jsonify(_clock_json())


@bp.post("/clock")
def set_clock() -> Response:
    """`{"advance_seconds": N}` moves the sandbox's clock forward; `{"reset": true}`
    puts it back on the wall clock. Tests use it instead of sleeping for an expiry."""
    body = _body()
    if body.get("reset") is True and "advance_seconds" not in body:
        state().reset_clock()
        return jsonify(_clock_json())
    seconds = body.get("advance_seconds")
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
        return _error('expected {"advance_seconds": N > 0} or {"reset": true}')
    state().advance_clock(float(seconds))
    return jsonify(_clock_json())


@bp.post("/expire-tokens")
def expire_tokens() -> Response:
    """Every live access token ends now; refresh tokens stay, so clients refresh."""
    return jsonify({"expired": state().expire_access_tokens()})


@bp.get("/clients")
def list_clients() -> Response:
    return jsonify([c.public_json() for c in state().iter_clients()])


@bp.post("/clients")
def add_client() -> tuple[Response, int] | Response:
    try:
        client = client_from_json(_body())
    except ValueError as exc:
        return _error(str(exc))
    state().add_client(client)
    return jsonify(client.public_json()), 201


@bp.post("/launch")
def launch() -> Response:
    body = _body()
    try:
        result = create_launch(
            state(),
            str(body.get("client_id", "")),
            patient=body.get("patient"),
            encounter=body.get("encounter"),
            user=body.get("user"),
            intent=body.get("intent"),
            need_patient_banner=bool(body.get("need_patient_banner", False)),
        )
    except LookupError as exc:
        return _error(str(exc.args[0]), 404)
    return jsonify(result)


@bp.get("/requests")
def get_requests() -> Response:
    return jsonify(state().requests())


@bp.delete("/requests")
def clear_requests() -> tuple[str, int]:
    st = state()
    with st.lock:
        st.request_log.clear()
    return "", 204


@bp.get("/stats")
def stats() -> Response:
    st = state()
    with st.lock:
        counters = dict(st.counters)
        fhir_requests = st.fhir_request_count
    by_prefix: dict[str, dict[str, int]] = {}
    for key, value in counters.items():
        group, _, name = key.partition(".")
        by_prefix.setdefault(group, {})[name] = value
    token_requests = {"authorization_code": 0, "refresh_token": 0, "client_credentials": 0}
    token_requests.update(by_prefix.pop("token_requests", {}))
    return jsonify(
        {
            "token_requests": token_requests,
            "token_errors": by_prefix.pop("token_errors", {}),
            "fhir_requests": fhir_requests,
            "fhir_status": by_prefix.pop("fhir_status", {}),
            "faults": by_prefix.pop("faults", {}),
            "resources": {t: st.store.count(t) for t in st.store.types()},
        }
    )


@bp.post("/resources")
def put_resource() -> tuple[Response, int] | Response:
    """Store a resource as the EHR's own users would (staff booking an appointment for a
    referral): no token, no scopes, no feature switches. `id` optional; `meta.lastUpdated`
    is kept when given, so a test can say when something happened."""
    st = state()
    body = _body()
    rtype = body.get("resourceType")
    if not isinstance(rtype, str) or not rtype[:1].isupper():
        return _error("resourceType is required")
    resource = dict(body)
    rid = resource.setdefault("id", uuid.uuid4().hex)
    if not isinstance(rid, str) or not rid:
        return _error("id must be a string")
    with st.lock:
        existing = st.store.get(rtype, rid)
        version = int((existing or {}).get("meta", {}).get("versionId", "0") or 0) + 1
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta.setdefault("lastUpdated", dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"))
        resource["meta"] = meta
        st.store.put(resource)
    st.journal({"op": "put", "resource": resource})
    return jsonify(resource), 200 if existing else 201


@bp.get("/resources/<rtype>/<rid>")
def get_resource(rtype: str, rid: str) -> Response:
    """A resource as stored (what a test checks a client wrote), without a token."""
    resource = state().store.get(rtype, rid)
    if resource is None:
        return _error(f"no {rtype}/{rid}", 404)
    return jsonify(resource)


@bp.post("/generate-appointments")
def generate_appointments() -> Response:
    st = state()
    body = _body()
    try:
        day = dt.date.fromisoformat(str(body.get("date")))
    except ValueError:
        return _error("date must be YYYY-MM-DD")
    count = body.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= MAX_GENERATE:
        return _error(f"count must be an integer in 1..{MAX_GENERATE}")
    location = body.get("location")
    try:
        added = st.generate_appointments(day, count, location)
    except LookupError as exc:
        return _error(str(exc.args[0]), 404)
    st.journal({"op": "generate", "date": day.isoformat(), "count": count, "location": location})
    return jsonify({"added": added, "date": day.isoformat()})


@bp.post("/reset")
def reset() -> Response:
    st = state()
    st.reset()
    return jsonify({"reset": True, "resources": {t: st.store.count(t) for t in st.store.types()}})
