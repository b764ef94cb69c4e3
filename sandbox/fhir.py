"""FHIR R4 REST under /fhir: metadata, read, search, create, update and batch.

Every interaction is a function of (token context, request data) that returns
(status, body, headers) or raises FhirError, so batch entries run through exactly the
same code as single requests.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from flask import Blueprint, request
from flask.wrappers import Response

from sandbox import scopes as scope_rules
from sandbox.auth import lookup_token
from sandbox.jsonpatch import PatchError, apply_patch
from sandbox.state import SandboxState
from sandbox.store import (
    NON_COMPARTMENT_TYPES,
    SEARCH_PARAMS,
    Criterion,
    SearchError,
    params_of,
    parse_criteria,
    ref_key,
    search_param_names,
)
from sandbox.web import FhirError, base_url, fhir_base, fhir_response, state

bp = Blueprint("fhir", __name__, url_prefix="/fhir")

Result = tuple[int, Any, dict[str, str]]

DEFAULT_COUNT = 50
MAX_COUNT = 1000
# Writable types and the feature that switches their create (and update) off.
CREATE_FEATURES = {
    "QuestionnaireResponse": "questionnaire-response-create",
    "ServiceRequest": "service-request-create",
    "Task": "task-create",
    "Questionnaire": "questionnaire-write",
}
# Types a client may update (PUT, PATCH) but not create: booking stays in the EHR.
UPDATE_ONLY_FEATURES = {"Appointment": "appointment-update"}
# Reference search parameters that name the patient: under patient/ scopes they must
# name the launch patient.
_PATIENT_PARAMS = ("patient", "subject", "beneficiary")
_QR_STATUSES = {"in-progress", "completed", "amended", "entered-in-error", "stopped"}
_APPOINTMENT_STATUSES = {
    "proposed",
    "pending",
    "booked",
    "arrived",
    "fulfilled",
    "cancelled",
    "noshow",
    "entered-in-error",
    "checked-in",
    "waitlist",
}
_PARTICIPATION_STATUSES = {"accepted", "declined", "tentative", "needs-action"}


@dataclass(frozen=True)
class TokenContext:
    scopes: tuple[str, ...]
    client_id: str
    patient: str | None = None
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def current_token(st: SandboxState) -> TokenContext:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise FhirError(
            401,
            "Bearer token required",
            "login",
            {"WWW-Authenticate": 'Bearer realm="sandbox"'},
        )
    entry = lookup_token(st, value.strip())
    if entry is None:
        raise FhirError(
            401,
            "access token is invalid, expired or revoked",
            "expired",
            {"WWW-Authenticate": 'Bearer realm="sandbox", error="invalid_token"'},
        )
    context = entry["context"]
    return TokenContext(
        scopes=tuple(entry["scopes"]),
        client_id=entry["client_id"],
        patient=context.get("patient"),
        user=context.get("user"),
    )


# --- helpers ------------------------------------------------------------------------


def supported_types(st: SandboxState) -> list[str]:
    types = set(st.store.types()) | set(CREATE_FEATURES) | set(SEARCH_PARAMS)
    if "task" in st.knobs.disabled:
        types.discard("Task")
    return sorted(types)


def _check_type(st: SandboxState, rtype: str) -> None:
    if rtype not in supported_types(st):
        raise FhirError(404, f"resource type {rtype} is not supported", "not-supported")


def _access(ctx: TokenContext, rtype: str, letter: str) -> scope_rules.Access:
    acc = scope_rules.access(ctx.scopes, rtype, letter, ctx.patient is not None)
    if not acc.allowed:
        verb = {"r": "read", "s": "search", "c": "create", "u": "update", "d": "delete"}[letter]
        raise FhirError(403, f"the token's scopes do not allow {verb} on {rtype}", "forbidden")
    return acc


def _in_compartment(st: SandboxState, rtype: str, rid: str, patient: str | None) -> bool:
    if rtype in NON_COMPARTMENT_TYPES:
        return True
    return patient is not None and patient in st.store.compartment_of(rtype, rid)


def _search(
    st: SandboxState, rtype: str, criteria: Sequence[Criterion], *, compartment: str | None = None
) -> list[str]:
    """A search as the client asked it (the canonical_version_search knob applies)."""
    return st.store.search(
        rtype,
        criteria,
        compartment=compartment,
        canonical=st.knobs.canonical_version_search,
    )


def _query_ids(st: SandboxState, rtype: str, queries: Sequence[str]) -> set[str]:
    """Ids allowed by v2 granular scopes such as `patient/Observation.rs?category=x`."""
    out: set[str] = set()
    for query in queries:
        try:
            out.update(_search(st, rtype, parse_criteria(rtype, parse_qsl(query))))
        except SearchError:
            continue
    return out


def _version_headers(resource: Mapping[str, Any]) -> dict[str, str]:
    meta = resource.get("meta") or {}
    headers = {"ETag": f'W/"{meta.get("versionId", "1")}"'}
    last = meta.get("lastUpdated")
    if isinstance(last, str):
        try:
            moment = dt.datetime.fromisoformat(last.replace("Z", "+00:00"))
            headers["Last-Modified"] = moment.strftime("%a, %d %b %Y %H:%M:%S GMT")
        except ValueError:
            pass
    return headers


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def served(st: SandboxState, body: Any) -> Any:
    """What goes on the wire: with the omit_display knob, References lose `display`.

    A real third-party server sends `{"reference": "Practitioner/123"}` and nothing
    else, so a client has to read the Practitioner for a name. A display-only Reference
    (no `reference`, no `identifier`) keeps its display: without it nothing is left.
    """
    if body is None or not st.knobs.omit_display:
        return body
    return _strip_display(body)


def _strip_display(value: Any) -> Any:
    if isinstance(value, list):
        return [_strip_display(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _strip_display(v) for k, v in value.items()}
    is_reference = isinstance(out.get("reference"), str) or isinstance(out.get("identifier"), dict)
    if is_reference and "display" in out:
        del out["display"]
    return out


# --- interactions -------------------------------------------------------------------


def do_read(st: SandboxState, ctx: TokenContext, rtype: str, rid: str) -> Result:
    _check_type(st, rtype)
    acc = _access(ctx, rtype, "r")
    resource = st.store.get(rtype, rid)
    if resource is None:
        raise FhirError(404, f"{rtype}/{rid} is not known", "not-found")
    if acc.patient_only and not _in_compartment(st, rtype, rid, ctx.patient):
        raise FhirError(403, f"{rtype}/{rid} is outside the launch patient's compartment")
    if acc.queries and rid not in _query_ids(st, rtype, acc.queries):
        raise FhirError(403, f"{rtype}/{rid} is outside the granted scope's query")
    return 200, resource, _version_headers(resource)


def do_search(
    st: SandboxState, ctx: TokenContext, rtype: str, params: Sequence[tuple[str, str]]
) -> Result:
    _check_type(st, rtype)
    acc = _access(ctx, rtype, "s")
    compartment = None
    if acc.patient_only and rtype not in NON_COMPARTMENT_TYPES:
        compartment = ctx.patient
        for name, value in params:
            if name.split(":")[0] in _PATIENT_PARAMS:
                for v in value.split(","):
                    key = ref_key(v) if "/" in v else f"Patient/{v}"
                    if key != f"Patient/{ctx.patient}":
                        raise FhirError(403, "patient-scoped token: search names another patient")
    count = _int_param(params, "_count", DEFAULT_COUNT)
    count = max(0, min(count, MAX_COUNT))
    offset = max(0, _int_param(params, "_offset", 0))
    if rtype in st.knobs.empty_for:
        # Like Epic answering a search outside the granted scope: 200 with nothing in it.
        ids: list[str] = []
    else:
        try:
            criteria = parse_criteria(rtype, params)
            ids = _search(st, rtype, criteria, compartment=compartment)
        except SearchError as exc:
            raise FhirError(400, str(exc), "invalid") from exc
        if acc.queries:
            allowed = _query_ids(st, rtype, acc.queries)
            ids = [i for i in ids if i in allowed]
    summary_count = ("_summary", "count") in params
    page = [] if summary_count else ids[offset : offset + count]
    entries: list[dict[str, Any]] = []
    for rid in page:
        resource = st.store.get(rtype, rid)
        if resource is not None:
            entries.append(_entry(resource, "match"))
    entries += _includes(st, ctx, rtype, [e["resource"] for e in entries], params)
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": uuid.uuid4().hex,
        "meta": {"lastUpdated": _now()},
        "type": "searchset",
        "total": len(ids),
        "link": [{"relation": "self", "url": _page_url(rtype, params, offset)}],
        "entry": entries,
    }
    if not summary_count and offset + count < len(ids) and count > 0:
        bundle["link"].append({"relation": "next", "url": _page_url(rtype, params, offset + count)})
    if not summary_count and offset > 0:
        prev = _page_url(rtype, params, max(0, offset - count))
        bundle["link"].append({"relation": "previous", "url": prev})
    if not entries:
        del bundle["entry"]
    return 200, bundle, {}


def _int_param(params: Sequence[tuple[str, str]], name: str, default: int) -> int:
    for key, value in params:
        if key == name:
            try:
                return int(value)
            except ValueError as exc:
                raise FhirError(400, f"{name} must be an integer") from exc
    return default


def _page_url(rtype: str, params: Sequence[tuple[str, str]], offset: int) -> str:
    kept = [(k, v) for k, v in params if k != "_offset"]
    if offset:
        kept.append(("_offset", str(offset)))
    query = urlencode(kept)
    return f"{fhir_base()}/{rtype}" + (f"?{query}" if query else "")


def _entry(resource: Mapping[str, Any], mode: str) -> dict[str, Any]:
    return {
        "fullUrl": f"{fhir_base()}/{resource['resourceType']}/{resource['id']}",
        "resource": resource,
        "search": {"mode": mode},
    }


def _includes(
    st: SandboxState,
    ctx: TokenContext,
    rtype: str,
    matches: Sequence[Mapping[str, Any]],
    params: Sequence[tuple[str, str]],
) -> list[dict[str, Any]]:
    """`_include=Type:param[:Target]` entries the token may read (others are left out)."""
    wanted: list[str] = []
    for name, value in params:
        if name != "_include":
            continue
        source, _, rest = value.partition(":")
        pname, _, target = rest.partition(":")
        param = SEARCH_PARAMS.get(rtype, {}).get(pname)
        if source != rtype or param is None or param.kind != "reference":
            raise FhirError(400, f"_include={value} is not supported on {rtype}")
        for res in matches:
            for key in param.extract(res):
                if (not target or key.startswith(target + "/")) and key not in wanted:
                    wanted.append(key)
    out = []
    seen = {f"{r['resourceType']}/{r['id']}" for r in matches}
    for key in wanted:
        if key in seen:
            continue
        itype, _, iid = key.partition("/")
        try:
            _, resource, _ = do_read(st, ctx, itype, iid)
        except FhirError:
            continue  # not readable with this token, or a dangling reference
        seen.add(key)
        out.append(_entry(resource, "include"))
    return out


def _validate(st: SandboxState, rtype: str, body: Any, rid: str | None = None) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise FhirError(400, "the body must be a JSON resource")
    if body.get("resourceType") != rtype:
        raise FhirError(400, f"resourceType must be {rtype}")
    if rid is not None and body.get("id") != rid:
        raise FhirError(400, "the resource id must match the URL id")
    missing = [
        name
        for name in {
            "QuestionnaireResponse": ("status",),
            "Task": ("status", "intent"),
            "ServiceRequest": ("status", "intent", "subject"),
            "Questionnaire": ("status",),
            "Appointment": ("status", "participant"),
        }.get(rtype, ())
        if not body.get(name)
    ]
    if missing:
        raise FhirError(422, f"{rtype} is missing required element(s): {', '.join(missing)}")
    if rtype == "Appointment":
        _validate_appointment(body)
    if rtype == "QuestionnaireResponse":
        if body["status"] not in _QR_STATUSES:
            raise FhirError(422, f"QuestionnaireResponse.status {body['status']!r} is not valid")
        canonical = body.get("questionnaire")
        if canonical is not None:
            if not isinstance(canonical, str):
                raise FhirError(422, "QuestionnaireResponse.questionnaire must be a canonical")
            crit = parse_criteria("Questionnaire", [("url", canonical)])
            if not st.store.search("Questionnaire", crit):
                raise FhirError(422, f"Questionnaire {canonical} is not known to this server")
    return dict(body)


def _validate_appointment(body: Mapping[str, Any]) -> None:
    if body["status"] not in _APPOINTMENT_STATUSES:
        raise FhirError(422, f"Appointment.status {body['status']!r} is not valid")
    participants = body["participant"]
    if not isinstance(participants, list) or not all(isinstance(p, dict) for p in participants):
        raise FhirError(422, "Appointment.participant must be a list of participants")
    for part in participants:
        if part.get("status") not in _PARTICIPATION_STATUSES:
            raise FhirError(
                422, f"Appointment.participant.status {part.get('status')!r} is not valid"
            )


def creatable(st: SandboxState, rtype: str) -> bool:
    feature = CREATE_FEATURES.get(rtype)
    return feature is not None and feature not in st.knobs.disabled


def updatable(st: SandboxState, rtype: str) -> bool:
    feature = UPDATE_ONLY_FEATURES.get(rtype)
    return creatable(st, rtype) or (feature is not None and feature not in st.knobs.disabled)


def _check_writable(st: SandboxState, rtype: str, *, create: bool = True) -> None:
    _check_type(st, rtype)
    if not (creatable(st, rtype) if create else updatable(st, rtype)):
        raise FhirError(405, f"{rtype} is read-only on this server", "not-supported")


def do_create(
    st: SandboxState,
    ctx: TokenContext,
    rtype: str,
    body: Any,
    if_none_exist: str | None,
    prefer: str | None,
) -> Result:
    _check_writable(st, rtype)
    acc = _access(ctx, rtype, "c")
    resource = _validate(st, rtype, body)
    if acc.patient_only:
        from sandbox.store import compartment_patients

        if ctx.patient not in compartment_patients(resource):
            raise FhirError(403, "patient-scoped token: the resource is for another patient")
    if if_none_exist and "conditional-create" not in st.knobs.disabled:
        pairs = parse_qsl(if_none_exist.lstrip("?"), keep_blank_values=True)
        try:
            criteria = parse_criteria(rtype, pairs)
        except SearchError as exc:
            raise FhirError(400, f"If-None-Exist: {exc}") from exc
        if not criteria:
            raise FhirError(400, "If-None-Exist has no supported search parameter")
        compartment = ctx.patient if acc.patient_only else None
        with st.lock:
            try:
                found = _search(st, rtype, criteria, compartment=compartment)
            except SearchError as exc:
                raise FhirError(400, f"If-None-Exist: {exc}") from exc
            if len(found) > 1:
                raise FhirError(412, "If-None-Exist matches more than one resource", "duplicate")
            if found:
                existing = st.store.get(rtype, found[0])
                assert existing is not None
                headers = _version_headers(existing)
                headers["Location"] = _location(existing)
                return 200, _prefer(existing, prefer), headers
            return _store_new(st, resource, prefer)
    # Without conditional create support the header is ignored, as such servers do:
    # the client must not rely on it (the CapabilityStatement says so).
    return _store_new(st, resource, prefer)


def _store_new(st: SandboxState, resource: dict[str, Any], prefer: str | None) -> Result:
    resource["id"] = uuid.uuid4().hex
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId",)}
    meta.update(versionId="1", lastUpdated=_now())
    resource["meta"] = meta
    st.store.put(resource)
    st.journal({"op": "put", "resource": resource})
    headers = _version_headers(resource)
    headers["Location"] = _location(resource)
    return 201, _prefer(resource, prefer), headers


def _location(resource: Mapping[str, Any]) -> str:
    meta = resource.get("meta") or {}
    return (
        f"{fhir_base()}/{resource['resourceType']}/{resource['id']}"
        f"/_history/{meta.get('versionId', '1')}"
    )


def _prefer(resource: dict[str, Any], prefer: str | None) -> Any:
    return None if prefer and "return=minimal" in prefer else resource


def do_update(
    st: SandboxState,
    ctx: TokenContext,
    rtype: str,
    rid: str,
    body: Any,
    if_match: str | None,
    prefer: str | None,
) -> Result:
    _check_writable(st, rtype, create=False)
    acc = _access(ctx, rtype, "u")
    resource = _validate(st, rtype, body, rid)
    with st.lock:
        existing = st.store.get(rtype, rid)
        if existing is None and not creatable(st, rtype):
            # No update-as-create where the type cannot be created at all.
            raise FhirError(405, f"{rtype}/{rid} does not exist and cannot be created")
        if acc.patient_only:
            from sandbox.store import compartment_patients

            if ctx.patient not in compartment_patients(resource) or (
                existing is not None and not _in_compartment(st, rtype, rid, ctx.patient)
            ):
                raise FhirError(403, "patient-scoped token: the resource is for another patient")
        version = int((existing or {}).get("meta", {}).get("versionId", "0") or 0)
        if if_match is not None and if_match.strip() != f'W/"{version}"':
            raise FhirError(412, f"version conflict: current version is {version}", "conflict")
        meta = dict(resource.get("meta") or {})
        meta.update(versionId=str(version + 1), lastUpdated=_now())
        resource["meta"] = meta
        st.store.put(resource)
    st.journal({"op": "put", "resource": resource})
    headers = _version_headers(resource)
    headers["Location"] = _location(resource)
    return (201 if existing is None else 200), _prefer(resource, prefer), headers


def do_patch(
    st: SandboxState,
    ctx: TokenContext,
    rtype: str,
    rid: str,
    operations: Any,
    if_match: str | None,
    prefer: str | None,
) -> Result:
    """JSON Patch on the current version, then the same path as an update."""
    _check_writable(st, rtype, create=False)
    _access(ctx, rtype, "u")
    with st.lock:  # re-entrant: the update below takes it too, nothing slips in between
        existing = st.store.get(rtype, rid)
        if existing is None:
            raise FhirError(404, f"{rtype}/{rid} is not known", "not-found")
        try:
            patched = apply_patch(existing, operations)
        except PatchError as exc:
            if exc.malformed:
                raise FhirError(400, f"bad JSON Patch: {exc}") from exc
            raise FhirError(422, f"JSON Patch cannot be applied: {exc}", "processing") from exc
        return do_update(st, ctx, rtype, rid, patched, if_match, prefer)


def do_batch(st: SandboxState, ctx: TokenContext, body: Any) -> Result:
    if "batch" in st.knobs.disabled:
        raise FhirError(405, "batch is not supported on this server", "not-supported")
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise FhirError(400, "POST to the base needs a Bundle")
    if body.get("type") != "batch":
        raise FhirError(400, "only Bundle.type=batch is supported (no transaction)")
    responses = []
    for entry in body.get("entry") or []:
        responses.append(_batch_entry(st, ctx, entry))
    return 200, {"resourceType": "Bundle", "type": "batch-response", "entry": responses}, {}


_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}
_REASONS.update({404: "Not Found", 405: "Method Not Allowed", 412: "Precondition Failed"})
_REASONS.update({422: "Unprocessable Entity"})


def _batch_entry(st: SandboxState, ctx: TokenContext, entry: Any) -> dict[str, Any]:
    try:
        req = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(req, dict) or not req.get("method") or not req.get("url"):
            raise FhirError(400, "batch entry needs request.method and request.url")
        method = str(req["method"]).upper()
        url = str(req["url"])
        if url.startswith(fhir_base()):
            url = url[len(fhir_base()) :]
        parts = urlsplit(url.lstrip("/"))
        segments = [s for s in parts.path.split("/") if s]
        params = parse_qsl(parts.query, keep_blank_values=True)
        if method == "GET" and len(segments) == 2:
            status, body, headers = do_read(st, ctx, segments[0], segments[1])
        elif method == "GET" and len(segments) == 1:
            status, body, headers = do_search(st, ctx, segments[0], params)
        elif method == "POST" and len(segments) == 1:
            status, body, headers = do_create(
                st, ctx, segments[0], entry.get("resource"), req.get("ifNoneExist"), None
            )
        elif method == "PUT" and len(segments) == 2:
            status, body, headers = do_update(
                st, ctx, segments[0], segments[1], entry.get("resource"), req.get("ifMatch"), None
            )
        else:
            raise FhirError(400, f"unsupported batch request {method} {url}")
    except FhirError as exc:
        return {
            "response": {
                "status": f"{exc.status} {_REASONS.get(exc.status, '')}".strip(),
                "outcome": exc.outcome(),
            }
        }
    response: dict[str, Any] = {"status": f"{status} {_REASONS.get(status, '')}".strip()}
    if "Location" in headers:
        response["location"] = headers["Location"]
    if "ETag" in headers:
        response["etag"] = headers["ETag"]
    out: dict[str, Any] = {"response": response}
    if body is not None:
        out["resource"] = body
        if body.get("resourceType") != "Bundle":
            out["fullUrl"] = f"{fhir_base()}/{body['resourceType']}/{body['id']}"
    return out


# --- CapabilityStatement ------------------------------------------------------------


def capability_statement(st: SandboxState) -> dict[str, Any]:
    disabled = set(st.knobs.disabled)
    base = base_url()
    resources = []
    for rtype in supported_types(st):
        interactions = ["read", "search-type"]
        can_create, can_update = creatable(st, rtype), updatable(st, rtype)
        if can_create:
            interactions.append("create")
        if can_update:
            interactions += ["update", "patch"]
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": c} for c in interactions],
            "versioning": "versioned-update" if can_update else "versioned",
            "readHistory": False,
            "updateCreate": can_create,
            "conditionalCreate": can_create and "conditional-create" not in disabled,
            "searchParam": [
                {"name": name, "type": _param_type(rtype, name)}
                for name in search_param_names(rtype)
            ],
        }
        includes = [
            f"{rtype}:{name}"
            for name, p in SEARCH_PARAMS.get(rtype, {}).items()
            if p.kind == "reference"
        ]
        if includes:
            entry["searchInclude"] = includes
        resources.append(entry)
    profile = st.profile
    rest: dict[str, Any] = {
        "mode": "server",
        "security": {
            "extension": [
                {
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [
                        {"url": "authorize", "valueUri": f"{base}/auth/authorize"},
                        {"url": "token", "valueUri": f"{base}/auth/token"},
                        {"url": "introspect", "valueUri": f"{base}/auth/introspect"},
                    ],
                }
            ],
            "service": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "SMART-on-FHIR",
                        }
                    ],
                    "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
                }
            ],
        },
        "resource": resources,
    }
    if "batch" not in disabled:
        rest["interaction"] = [{"code": "batch"}]
    off = sorted(disabled)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": dt.datetime.now(dt.UTC).date().isoformat(),
        "kind": "instance",
        "description": (
            f"CareDesk sandbox EHR, profile '{profile.name}': {profile.description}"
            + (f" Disabled features: {', '.join(off)}." if off else "")
        ),
        "software": {"name": "CareDesk sandbox EHR", "version": f"profile-{profile.name}"},
        "implementation": {"description": f"sandbox ({profile.name})", "url": fhir_base()},
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "rest": [rest],
    }


def _param_type(rtype: str, name: str) -> str:
    kind = params_of(rtype)[name].kind
    return "string" if kind == "string" else kind


# --- routes -------------------------------------------------------------------------


def _json_body() -> Any:
    try:
        return json.loads(request.get_data(cache=False) or b"null")
    except ValueError as exc:
        raise FhirError(400, "the body is not valid JSON") from exc


def _reply(result: Result) -> Response:
    status, body, headers = result
    return fhir_response(served(state(), body), status, headers)


def _query_pairs(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in items if k != "_format"]


@bp.get("/metadata")
def metadata() -> Response:
    return fhir_response(capability_statement(state()))


@bp.post("")
@bp.post("/")
def batch() -> Response:
    st = state()
    return _reply(do_batch(st, current_token(st), _json_body()))


@bp.get("/<rtype>")
def search(rtype: str) -> Response:
    st = state()
    ctx = current_token(st)
    return _reply(do_search(st, ctx, rtype, _query_pairs(request.args.items(multi=True))))


@bp.post("/<rtype>/_search")
def search_post(rtype: str) -> Response:
    st = state()
    ctx = current_token(st)
    pairs = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
    return _reply(do_search(st, ctx, rtype, _query_pairs(pairs)))


@bp.get("/<rtype>/<rid>")
def read(rtype: str, rid: str) -> Response:
    st = state()
    ctx = current_token(st)
    status, body, headers = do_read(st, ctx, rtype, rid)
    if request.headers.get("If-None-Match") == headers.get("ETag"):
        return fhir_response(None, 304, headers)
    return fhir_response(served(st, body), status, headers)


@bp.get("/<rtype>/<rid>/_history/<vid>")
def vread(rtype: str, rid: str, vid: str) -> Response:
    st = state()
    status, body, headers = do_read(st, current_token(st), rtype, rid)
    if (body.get("meta") or {}).get("versionId") != vid:
        # Only the current version is kept.
        raise FhirError(404, f"{rtype}/{rid}/_history/{vid} is not known", "not-found")
    return fhir_response(served(st, body), status, headers)


@bp.post("/<rtype>")
def create(rtype: str) -> Response:
    st = state()
    ctx = current_token(st)
    return _reply(
        do_create(
            st,
            ctx,
            rtype,
            _json_body(),
            request.headers.get("If-None-Exist"),
            request.headers.get("Prefer"),
        )
    )


@bp.patch("/<rtype>/<rid>")
def patch(rtype: str, rid: str) -> Response:
    st = state()
    ctx = current_token(st)
    if request.mimetype != "application/json-patch+json":
        raise FhirError(415, "PATCH takes a JSON Patch (application/json-patch+json)")
    return _reply(
        do_patch(
            st,
            ctx,
            rtype,
            rid,
            _json_body(),
            request.headers.get("If-Match"),
            request.headers.get("Prefer"),
        )
    )


@bp.put("/<rtype>/<rid>")
def update(rtype: str, rid: str) -> Response:
    st = state()
    ctx = current_token(st)
    return _reply(
        do_update(
            st,
            ctx,
            rtype,
            rid,
            _json_body(),
            request.headers.get("If-Match"),
            request.headers.get("Prefer"),
        )
    )
