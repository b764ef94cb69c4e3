"""The SMART authorization server: discovery, authorize, token, jwks, introspection.

Implements SMART App Launch 2.x (EHR and standalone launch, PKCE S256 required) and the
Backend Services IG (client_credentials with a private_key_jwt assertion).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests
from flask import Blueprint, jsonify, redirect, render_template, request
from flask.typing import ResponseReturnValue
from flask.wrappers import Response
from joserfc import jwk, jwt
from joserfc.errors import JoseError
from werkzeug.wrappers import Response as BaseResponse

from sandbox import scopes as scope_rules
from sandbox.clients import Client
from sandbox.state import (
    CODE_LIFETIME_S,
    LAUNCH_LIFETIME_S,
    PENDING_LIFETIME_S,
    SandboxState,
    sha,
)
from sandbox.web import (
    OAuthError,
    base_url,
    fhir_base,
    issuer,
    state,
    token_endpoint,
)

bp = Blueprint("auth", __name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME_S = 300
CLOCK_SKEW_S = 10

CAPABILITIES = [
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-banner",
    "context-style",
    "sso-openid-connect",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "authorize-post",
]


# --- users --------------------------------------------------------------------------


def users(st: SandboxState) -> list[dict[str, str]]:
    """The people who can log in: the fixtures' clinician and scheduler, then the rest."""
    practitioners = {p["id"]: p for p in st.store.all_of("Practitioner")}
    roles = {"prac-clinician-lee": "clinician", "prac-scheduler-ortiz": "scheduler"}
    ordered = [pid for pid in roles if pid in practitioners]
    ordered += [pid for pid in practitioners if pid not in ordered]
    if len(ordered) >= 2 and not any(pid in practitioners for pid in roles):
        roles = {ordered[0]: "clinician", ordered[1]: "scheduler"}
    return [
        {
            "id": pid,
            "fhirUser": f"Practitioner/{pid}",
            "role": roles.get(pid, "clinician"),
            "name": display_name(practitioners[pid]),
        }
        for pid in ordered
    ]


def display_name(resource: Mapping[str, Any]) -> str:
    for name in resource.get("name") or []:
        if isinstance(name, dict):
            if name.get("text"):
                return str(name["text"])
            parts = [*(name.get("given") or []), name.get("family") or ""]
            text = " ".join(str(p) for p in parts if p)
            if text:
                return text
    return str(resource.get("id", "?"))


# --- discovery ----------------------------------------------------------------------


def smart_configuration() -> dict[str, Any]:
    base = base_url()
    return {
        "issuer": issuer(),
        "jwks_uri": f"{base}/auth/jwks",
        "authorization_endpoint": f"{base}/auth/authorize",
        "token_endpoint": token_endpoint(),
        "introspection_endpoint": f"{base}/auth/introspect",
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "scopes_supported": [
            *sorted(scope_rules.CONTEXT_SCOPES),
            "patient/*.rs",
            "user/*.rs",
            "system/*.rs",
            "patient/*.read",
            "user/*.read",
            "system/*.read",
            "patient/*.cruds",
            "user/*.cruds",
            "system/*.cruds",
        ],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": CAPABILITIES,
    }


@bp.get("/fhir/.well-known/smart-configuration")
def well_known() -> Response:
    if "well-known" in state().knobs.disabled:
        # Some EHRs publish only the CapabilityStatement's oauth-uris extension.
        resp = jsonify({"error": "not_found", "error_description": "no SMART configuration"})
        resp.status_code = 404
        return resp
    resp = jsonify(smart_configuration())
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp


@bp.get("/fhir/.well-known/openid-configuration")
@bp.get("/oauth2/.well-known/openid-configuration")
def openid_configuration() -> Response:
    conf = smart_configuration()
    conf.update(
        subject_types_supported=["public"],
        id_token_signing_alg_values_supported=["RS256"],
        claims_supported=["sub", "fhirUser", "name", "iss", "aud", "exp", "iat", "nonce"],
    )
    return jsonify(conf)


@bp.get("/auth/jwks")
def jwks() -> Response:
    return jsonify({"keys": [public_jwk(state())]})


def public_jwk(st: SandboxState) -> dict[str, Any]:
    data = dict(st.signing_key.as_dict(private=False))
    data.update(use="sig", alg="RS256")
    return data


@bp.get("/style/smart-style.json")
def smart_style() -> Response:
    return jsonify(
        {
            "color_background": "#f4f6f8",
            "color_error": "#b00020",
            "color_highlight": "#2a6ebb",
            "color_modal_backdrop": "#00000066",
            "color_success": "#2e7d32",
            "color_text": "#1b1f23",
            "dim_border_radius": "4px",
            "dim_font_size": "14px",
            "dim_spacing_size": "16px",
            "font_family_body": "Segoe UI, Helvetica, Arial, sans-serif",
            "font_family_heading": "Segoe UI, Helvetica, Arial, sans-serif",
        }
    )


# --- authorize ----------------------------------------------------------------------


class AuthorizeError(Exception):
    """An authorize error that is shown to the user instead of redirected (bad client or
    redirect_uri: redirecting would hand the error to an unverified address)."""


def _redirect_with(uri: str, params: Mapping[str, str | None]) -> BaseResponse:
    parts = urlsplit(uri)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return redirect(urlunsplit(parts._replace(query=query)), code=302)


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


@bp.route("/auth/authorize", methods=["GET", "POST"])
def authorize() -> ResponseReturnValue:
    st = state()
    params = request.form if request.method == "POST" else request.args
    client = st.clients.get(params.get("client_id", ""))
    redirect_uri = params.get("redirect_uri", "")
    if client is None:
        return render_template("error.html", message="Unknown client_id."), 400
    if redirect_uri not in client.redirect_uris:
        # Exact match only (no prefix or pattern): anything else is an open redirector.
        return render_template("error.html", message="redirect_uri is not registered."), 400
    req_state = params.get("state")

    def fail(error: str, description: str) -> BaseResponse:
        return _redirect_with(
            redirect_uri, {"error": error, "error_description": description, "state": req_state}
        )

    if params.get("response_type") != "code":
        return fail("unsupported_response_type", "response_type must be code")
    if not req_state:
        return fail("invalid_request", "state is required")
    if not params.get("code_challenge") or params.get("code_challenge_method") != "S256":
        return fail("invalid_request", "PKCE with code_challenge_method=S256 is required")
    aud = params.get("aud")
    if not aud:
        return fail("invalid_request", "aud is required (the FHIR base URL)")
    if not _same_url(aud, fhir_base()):
        return fail("invalid_request", "aud does not name this FHIR server")
    requested = params.get("scope", "").split()
    if not requested:
        return fail("invalid_scope", "scope is required")
    granted = scope_rules.grant(requested, client.scopes)
    request_info = {
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "state": req_state,
        "code_challenge": params["code_challenge"],
        "nonce": params.get("nonce"),
        "scopes": granted,
    }
    launch_id = params.get("launch")
    if launch_id:
        st.expire_old()
        launch = st.launches.get(launch_id)
        if launch is None or launch["client_id"] != client.client_id:
            return fail("invalid_request", "unknown or expired launch")
        # EHR launch: the user is already logged in to the EHR; approve without a page.
        request_info["scopes"] = _consented(st, granted, None)
        context = _launch_context(launch, request_info["scopes"])
        return _issue_code(st, request_info, context)
    request_info["scopes"] = [s for s in granted if s != "launch"]
    pending_id = secrets.token_urlsafe(24)
    with st.lock:
        st.pending[pending_id] = {**request_info, "expires": st.now() + PENDING_LIFETIME_S}
    patients = (
        [
            {"id": p["id"], "name": display_name(p), "birthDate": p.get("birthDate", "")}
            for p in st.store.all_of("Patient")
        ]
        if "launch/patient" in granted
        else []
    )
    return render_template(
        "authorize.html",
        pending=pending_id,
        client=client,
        users=users(st),
        patients=patients,
        scopes=request_info["scopes"],
        unticked=set(st.knobs.consent_drop_scopes),
    )


def _consented(st: SandboxState, offered: list[str], form: Any) -> list[str]:
    """What the user consented to out of `offered`: the consent_drop_scopes knob plays a
    user who unticks those scopes; on the standalone consent page (`form`) the user may
    untick more. A post without the consent fields (a script driving the picker)
    keeps everything else. The token's `scope` then lacks them and the FHIR API refuses
    what needed them, as real servers with a consent screen do."""
    dropped = set(st.knobs.consent_drop_scopes)
    kept = [s for s in offered if s not in dropped]
    if form is not None and form.get("consent") == "1":
        ticked = set(form.getlist("scope"))
        kept = [s for s in kept if s in ticked]
    return kept


def _launch_context(launch: Mapping[str, Any], granted: list[str]) -> dict[str, Any]:
    context: dict[str, Any] = {
        "user": launch.get("user"),
        "intent": launch.get("intent"),
        "need_patient_banner": launch.get("need_patient_banner", False),
    }
    if "launch" in granted or "launch/patient" in granted:
        context["patient"] = launch.get("patient")
    if "launch" in granted or "launch/encounter" in granted:
        context["encounter"] = launch.get("encounter")
    return context


@bp.post("/auth/authorize/decide")
def decide() -> ResponseReturnValue:
    """The login / patient picker's answer (standalone launch)."""
    st = state()
    st.expire_old()
    with st.lock:
        info = st.pending.pop(request.form.get("pending", ""), None)
    if info is None:
        return render_template("error.html", message="This sign-in request has expired."), 400
    if request.form.get("decision") != "approve":
        return _redirect_with(
            info["redirect_uri"],
            {"error": "access_denied", "error_description": "denied", "state": info["state"]},
        )
    known_users = {u["id"]: u for u in users(st)}
    user = known_users.get(request.form.get("user", ""))
    if user is None:
        return render_template("error.html", message="Pick a user."), 400
    context: dict[str, Any] = {"user": user["fhirUser"], "need_patient_banner": True}
    info = {**info, "scopes": _consented(st, info["scopes"], request.form)}
    if "launch/patient" in info["scopes"]:
        patient = request.form.get("patient", "")
        if st.store.get("Patient", patient) is None:
            return render_template("error.html", message="Pick a patient."), 400
        context["patient"] = patient
    return _issue_code(st, info, context)


def _issue_code(st: SandboxState, info: Mapping[str, Any], context: dict[str, Any]) -> BaseResponse:
    code = secrets.token_urlsafe(32)
    with st.lock:
        st.codes[sha(code)] = {
            "client_id": info["client_id"],
            "redirect_uri": info["redirect_uri"],
            "code_challenge": info["code_challenge"],
            "nonce": info.get("nonce"),
            "scopes": list(info["scopes"]),
            "context": {k: v for k, v in context.items() if v is not None},
            "expires": st.now() + CODE_LIFETIME_S,
            "used": False,
            "grant_id": None,
        }
    st.save_grants()
    return _redirect_with(info["redirect_uri"], {"code": code, "state": info["state"]})


def create_launch(
    st: SandboxState,
    client_id: str,
    *,
    patient: str | None = None,
    encounter: str | None = None,
    user: str | None = None,
    intent: str | None = None,
    need_patient_banner: bool = False,
) -> dict[str, str]:
    """A launch id bound to a client and context, plus the client's launch URL for it."""
    client = st.clients.get(client_id)
    if client is None:
        raise LookupError(f"unknown client {client_id!r}")
    if patient is not None and st.store.get("Patient", patient) is None:
        raise LookupError(f"no Patient/{patient}")
    launch_id = secrets.token_urlsafe(24)
    if user is None:
        user = users(st)[0]["fhirUser"] if users(st) else None
    with st.lock:
        st.launches[launch_id] = {
            "client_id": client_id,
            "patient": patient,
            "encounter": encounter,
            "user": user,
            "intent": intent,
            "need_patient_banner": need_patient_banner,
            "expires": st.now() + LAUNCH_LIFETIME_S,
        }
    st.save_grants()
    url = ""
    if client.launch_url:
        parts = urlsplit(client.launch_url)
        # Seen on a real server: the launch link's iss ends with "/" while the
        # CapabilityStatement and the token's aud name the base without it.
        iss = fhir_base() + ("/" if st.knobs.iss_trailing_slash else "")
        extra = urlencode({"iss": iss, "launch": launch_id})
        url = urlunsplit(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))
    return {"launch": launch_id, "url": url}


# --- token --------------------------------------------------------------------------


@bp.post("/auth/token")
def token() -> Response:
    st = state()
    grant_type = request.form.get("grant_type", "")
    if grant_type in ("authorization_code", "refresh_token", "client_credentials"):
        st.count(f"token_requests.{grant_type}")
    try:
        client = authenticate_client(st)
        if grant_type == "authorization_code":
            body = _code_grant(st, client)
        elif grant_type == "refresh_token":
            body = _refresh_grant(st, client)
        elif grant_type == "client_credentials":
            body = _client_credentials(st, client)
        else:
            raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r}")
    except OAuthError as exc:
        st.count(f"token_errors.{exc.error}")
        return exc.response()
    resp = jsonify(body)
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    return resp


def authenticate_client(st: SandboxState) -> Client:
    form = request.form
    auth = request.authorization
    if auth is not None and auth.type == "basic":
        client = st.clients.get(auth.username or "")
        if (
            client is None
            or client.type != "confidential-symmetric"
            or not client.client_secret
            or not hmac.compare_digest(client.client_secret, auth.password or "")
        ):
            raise OAuthError("invalid_client", "client authentication failed", 401)
        return client
    if "client_assertion" in form:
        return _verify_assertion(st, form)
    client = st.clients.get(form.get("client_id", ""))
    if client is None:
        raise OAuthError("invalid_client", "unknown client", 401)
    if client.type != "public":
        raise OAuthError("invalid_client", f"a {client.type} client must authenticate", 401)
    return client


def _verify_assertion(st: SandboxState, form: Mapping[str, str]) -> Client:
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise OAuthError("invalid_client", "client_assertion_type must be jwt-bearer", 401)
    assertion = form["client_assertion"]
    try:
        header_b64, payload_b64 = assertion.split(".")[:2]
        header = json.loads(_b64(header_b64))
        unverified = json.loads(_b64(payload_b64))
    except (ValueError, TypeError) as exc:
        raise OAuthError("invalid_client", "client_assertion is not a JWT", 401) from exc
    if header.get("alg") not in ASSERTION_ALGS:
        raise OAuthError("invalid_client", "client_assertion must be signed RS384 or ES384", 401)
    client = st.clients.get(str(unverified.get("iss", "")))
    if client is None or client.type != "confidential-asymmetric":
        raise OAuthError("invalid_client", "unknown asymmetric client", 401)
    keys = _client_keys(client)
    try:
        claims = jwt.decode(assertion, keys, algorithms=[header["alg"]]).claims
    except (JoseError, ValueError) as exc:
        raise OAuthError("invalid_client", "client_assertion signature invalid", 401) from exc
    now = time.time()
    if claims.get("sub") != client.client_id:
        raise OAuthError("invalid_client", "client_assertion sub must equal iss", 401)
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if token_endpoint() not in auds:
        raise OAuthError("invalid_client", "client_assertion aud must be the token URL", 401)
    exp = claims.get("exp")
    if not isinstance(exp, int | float):
        raise OAuthError("invalid_client", "client_assertion needs exp", 401)
    if exp < now - CLOCK_SKEW_S:
        raise OAuthError("invalid_client", "client_assertion expired", 401)
    if exp > now + MAX_ASSERTION_LIFETIME_S + CLOCK_SKEW_S:
        raise OAuthError("invalid_client", "client_assertion exp is over 5 minutes ahead", 401)
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise OAuthError("invalid_client", "client_assertion needs jti", 401)
    jti_key = sha(f"{client.client_id}|{jti}")
    with st.lock:
        st.expire_old()
        if jti_key in st.jtis:
            raise OAuthError("invalid_client", "client_assertion jti was already used", 401)
        st.jtis[jti_key] = float(exp) + CLOCK_SKEW_S
    return client


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _client_keys(client: Client) -> jwk.KeySet:
    data: Any = client.jwks
    if data is None and client.jwks_uri:
        try:
            resp = requests.get(client.jwks_uri, timeout=5)
            resp.raise_for_status()
            data = resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise OAuthError(
                "invalid_client", "could not fetch the client's jwks_uri", 401
            ) from exc
    try:
        return jwk.KeySet.import_key_set(data)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise OAuthError("invalid_client", "the client's JWKS is unusable", 401) from exc


def _code_grant(st: SandboxState, client: Client) -> dict[str, Any]:
    form = request.form
    code = form.get("code", "")
    with st.lock:
        entry = st.codes.get(sha(code))
        if entry is None or entry["client_id"] != client.client_id:
            raise OAuthError("invalid_grant", "unknown authorization code")
        if entry["used"]:
            # RFC 6749 4.1.2: a reused code revokes what was issued with it.
            if entry["grant_id"]:
                st.revoke_grant(entry["grant_id"])
            raise OAuthError("invalid_grant", "authorization code already used")
        # Any exchange attempt burns the code, so a wrong verifier cannot be retried.
        entry["used"] = True
    st.save_grants()
    if entry["expires"] < st.now():
        raise OAuthError("invalid_grant", "authorization code expired")
    if form.get("redirect_uri") != entry["redirect_uri"]:
        raise OAuthError("invalid_grant", "redirect_uri differs from the authorize request")
    verifier = form.get("code_verifier")
    if not verifier:
        raise OAuthError("invalid_grant", "code_verifier is required (PKCE)")
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    if not hmac.compare_digest(digest.decode(), entry["code_challenge"]):
        raise OAuthError("invalid_grant", "code_verifier does not match code_challenge")
    grant_id = secrets.token_hex(12)
    with st.lock:
        entry["grant_id"] = grant_id
        st.grants[grant_id] = {
            "client_id": client.client_id,
            "scopes": entry["scopes"],
            "context": entry["context"],
            "revoked": False,
            "created": st.now(),
        }
    return _issue(st, client, grant_id, entry["scopes"], nonce=entry.get("nonce"))


def _refresh_grant(st: SandboxState, client: Client) -> dict[str, Any]:
    presented = request.form.get("refresh_token", "")
    with st.lock:
        entry = st.refresh.get(sha(presented))
        if entry is None or entry["client_id"] != client.client_id:
            raise OAuthError("invalid_grant", "unknown refresh token")
        if st.knobs.drop_refresh_tokens:
            raise OAuthError("invalid_grant", "refresh token no longer valid")
        if entry.get("revoked"):
            raise OAuthError("invalid_grant", "refresh token revoked")
        if entry["used"]:
            # Rotation reuse detection: a rotated-out token came back, so one copy was
            # stolen. Kill the whole grant (every access and refresh token in it).
            st.revoke_grant(entry["grant_id"])
            raise OAuthError("invalid_grant", "refresh token already used; grant revoked")
        if entry.get("exp") is not None and entry["exp"] <= st.now():
            raise OAuthError("invalid_grant", "refresh token expired")
        grant = st.grants[entry["grant_id"]]
        requested = request.form.get("scope")
        scope_list = grant["scopes"]
        if requested is not None:
            wanted = requested.split()
            if not scope_rules.is_subset(wanted, grant["scopes"]):
                raise OAuthError("invalid_scope", "requested scope exceeds the original grant")
            scope_list = wanted
        rotate = st.knobs.rotate_refresh
        if rotate:
            entry["used"] = True
    return _issue(st, client, entry["grant_id"], scope_list, refresh=True, new_refresh=rotate)


def _client_credentials(st: SandboxState, client: Client) -> dict[str, Any]:
    if client.type != "confidential-asymmetric" or not client.backend:
        raise OAuthError("unauthorized_client", "client may not use client_credentials")
    if "client_assertion" not in request.form:
        raise OAuthError("invalid_client", "backend services need private_key_jwt", 401)
    requested = request.form.get("scope", "").split()
    granted = [
        s
        for s in scope_rules.grant(requested, client.scopes)
        if (parsed := scope_rules.parse_scope(s)) is not None and parsed.context == "system"
    ]
    if not granted:
        raise OAuthError("invalid_scope", "no grantable system/ scopes requested")
    grant_id = secrets.token_hex(12)
    with st.lock:
        st.grants[grant_id] = {
            "client_id": client.client_id,
            "scopes": granted,
            "context": {},
            "revoked": False,
            "created": st.now(),
            "backend": True,
        }
    return _issue(st, client, grant_id, granted)


def _issue(
    st: SandboxState,
    client: Client,
    grant_id: str,
    scope_list: list[str],
    *,
    nonce: str | None = None,
    refresh: bool = False,
    new_refresh: bool = True,
) -> dict[str, Any]:
    """The token response. `refresh`: answering a refresh_token grant; `new_refresh`:
    whether it may carry a new refresh token (False on a server that does not rotate)."""
    grant = st.grants[grant_id]
    context = grant["context"]
    # Claims are on the wall clock (the client's); the record is on the sandbox's.
    now = int(time.time())
    issued = st.now()
    lifetime = st.knobs.token_lifetime_s
    claims = {
        "iss": issuer(),
        "aud": fhir_base(),
        "sub": context.get("user") or client.client_id,
        "client_id": client.client_id,
        "scope": " ".join(scope_list),
        "iat": now,
        "exp": now + lifetime,
        "jti": secrets.token_hex(16),
    }
    if context.get("patient"):
        claims["patient"] = context["patient"]
    if st.profile.opaque_tokens:
        access_token = secrets.token_urlsafe(48)
    else:
        access_token = jwt.encode(
            {"alg": "RS256", "kid": st.signing_key.kid}, claims, st.signing_key
        )
    body: dict[str, Any] = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": " ".join(scope_list),
    }
    wants_refresh = bool({"offline_access", "online_access"} & set(scope_list))
    if st.profile.hide_offline_scope:
        # Epic grants offline access but leaves it out of the scope it reports.
        body["scope"] = " ".join(
            s for s in scope_list if s not in ("offline_access", "online_access")
        )
    with st.lock:
        st.tokens[sha(access_token)] = {
            "grant_id": grant_id,
            "client_id": client.client_id,
            "scopes": scope_list,
            "context": context,
            "iat": issued,
            "exp": issued + lifetime,
            "revoked": False,
        }
        if (
            wants_refresh
            and new_refresh
            and not st.knobs.drop_refresh_tokens
            and not grant.get("backend")
        ):
            refresh_token = secrets.token_urlsafe(40)
            refresh_lifetime = st.knobs.refresh_token_lifetime_s
            st.refresh[sha(refresh_token)] = {
                "grant_id": grant_id,
                "client_id": client.client_id,
                "used": False,
                "revoked": False,
                "exp": issued + refresh_lifetime if refresh_lifetime else None,
            }
            body["refresh_token"] = refresh_token
    if not grant.get("backend"):
        for key in ("patient", "encounter"):
            if context.get(key):
                body[key] = context[key]
        body["need_patient_banner"] = bool(context.get("need_patient_banner", True))
        body["smart_style_url"] = f"{base_url()}/style/smart-style.json"
        if context.get("intent"):
            body["intent"] = context["intent"]
        id_mode = st.knobs.refresh_id_token if refresh else "normal"
        if (
            "openid" in scope_list
            and {"fhirUser", "profile"} & set(scope_list)
            and context.get("user")
            and id_mode != "omit"
        ):
            body["id_token"] = _id_token(
                st, client, context["user"], now, nonce, aud=id_mode != "no-aud"
            )
    st.save_grants()
    return body


def fhir_user_claim(st: SandboxState, user: str) -> str:
    """`Practitioner/<id>` as the knob says: relative, or absolute on the FHIR base."""
    return user if st.knobs.fhir_user_relative else f"{fhir_base()}/{user}"


def _id_token(
    st: SandboxState, client: Client, user: str, now: int, nonce: str | None, *, aud: bool = True
) -> str:
    claims: dict[str, Any] = {
        "iss": issuer(),
        "sub": user.split("/", 1)[-1],
        "iat": now,
        "exp": now + 3600,
        "fhirUser": fhir_user_claim(st, user),
    }
    if aud:
        # The SMART reference launcher's refreshed id_token has no aud (refresh_id_token
        # knob "no-aud"); OIDC says it must, so a strict client rejects it.
        claims["aud"] = client.client_id
    practitioner = st.store.get("Practitioner", user.split("/", 1)[-1])
    if practitioner is not None:
        claims["name"] = display_name(practitioner)
    if nonce:
        claims["nonce"] = nonce
    return jwt.encode({"alg": "RS256", "kid": st.signing_key.kid}, claims, st.signing_key)


# --- bearer tokens (used by the FHIR API) and introspection ------------------------


def lookup_token(st: SandboxState, access_token: str) -> dict[str, Any] | None:
    """The live token record for a bearer token, or None if unknown/expired/revoked."""
    with st.lock:
        entry = st.tokens.get(sha(access_token))
        if entry is None or entry["revoked"] or entry["exp"] <= st.now():
            return None
        grant = st.grants.get(entry.get("grant_id") or "")
        if grant is not None and grant.get("revoked"):
            return None
        return dict(entry)


@bp.post("/auth/introspect")
def introspect() -> Response:
    """RFC 7662 introspection, without client authentication (a loopback test tool)."""
    st = state()
    entry = lookup_token(st, request.form.get("token", ""))
    if entry is None:
        return jsonify({"active": False})
    body: dict[str, Any] = {
        "active": True,
        "scope": " ".join(entry["scopes"]),
        "client_id": entry["client_id"],
        # On the client's (wall) clock: a token the sandbox aged by moving its clock
        # looks that much older.
        "exp": int(entry["exp"] - st.clock_offset),
        "iat": int(entry["iat"] - st.clock_offset),
        "token_type": "Bearer",
        "iss": issuer(),
        "aud": fhir_base(),
    }
    context = entry["context"]
    if context.get("user"):
        body["sub"] = context["user"].split("/", 1)[-1]
        body["fhirUser"] = fhir_user_claim(st, context["user"])
    if context.get("patient"):
        body["patient"] = context["patient"]
    if context.get("encounter"):
        body["encounter"] = context["encounter"]
    return jsonify(body)
