"""SMART App Launch, the web edge: /launch (EHR launch), /start (standalone), /callback.

State and the PKCE verifier live server-side in a ``LaunchSession`` row keyed by the
SHA-256 of the state; the browser holds only an opaque cookie. Each launch gets its own id
in the URL (``/l/<id>/``), so two tabs on two patients never mix; the cookie binds those
ids to this browser.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from datetime import timedelta
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    g,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select, update
from werkzeug.wrappers import Response as BaseResponse

from helpdesk import ehr
from helpdesk.audit import audit
from helpdesk.crypto import get_vault
from helpdesk.db import get_db
from helpdesk.errors import AppError
from helpdesk.models import EhrRegistration, LaunchSession, SigningKey
from helpdesk.registry import find, find_by_iss
from helpdesk.timeutil import utcnow
from smart_launch.errors import (
    AuthorizationDenied,
    SmartError,
)
from smart_launch.launch import (
    STATE_TTL,
    build_authorization_request,
    exchange_code,
    new_pkce,
    new_state,
    parse_callback,
    scopes_for,
    warm_jwks,
)

bp = Blueprint("launch", __name__)
log = logging.getLogger("caredesk.launch")

COOKIE = "caredesk_browser"
# A launch left idle this long needs a new launch from the EHR (a shared workstation).
SESSION_IDLE = timedelta(hours=12)
# last_seen_at is written at most this often, not on every request.
SEEN_GRANULARITY = timedelta(minutes=5)


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _browser_secret() -> tuple[str, bool]:
    """This browser's cookie secret, and whether it is new (then it must be set)."""
    existing = request.cookies.get(COOKIE, "")
    if len(existing) >= 32:
        return existing, False
    return secrets.token_urlsafe(32), True


def _set_browser_cookie(response: BaseResponse, secret: str) -> None:
    if request.is_secure:
        # Inside an EHR iframe the cookie is third-party: it needs SameSite=None; Secure,
        # and Partitioned (CHIPS) so browsers that block third-party cookies keep it.
        response.set_cookie(
            COOKIE, secret, secure=True, httponly=True, samesite="None", partitioned=True, path="/"
        )
    else:
        # Plain http is only for the demo on loopback, where app and EHR are same-site.
        response.set_cookie(COOKIE, secret, httponly=True, samesite="Lax", path="/")


@bp.get("/launch")
def ehr_launch() -> BaseResponse:
    iss = request.args.get("iss", "")
    launch = request.args.get("launch", "")
    if not iss or not launch:
        raise AppError(
            "An EHR launch needs both `iss` and `launch`. Open CareDesk from the EHR.",
            code="missing_launch_parameters",
        )
    row = find_by_iss(get_db(), iss)
    if row is None:
        # Never fetched, never redirected to: an unregistered iss could be anyone's server.
        log.warning("launch refused: unregistered iss")
        raise AppError(
            "This EHR is not registered with CareDesk, so CareDesk will not connect to it. "
            "Ask your integration team to register it (`caredesk ehr add`).",
            status=400,
            code="unknown_issuer",
        )
    return _begin(row, launch=launch)


@bp.get("/start")
def standalone_launch() -> BaseResponse:
    key = request.args.get("ehr", "")
    row = find(get_db(), key) if key else None
    if row is None:
        raise AppError(
            "Unknown EHR. Choose a registered EHR to sign in to.", status=404, code="unknown_ehr"
        )
    return _begin(row, launch=None)


def _begin(row: EhrRegistration, *, launch: str | None) -> BaseResponse:
    reg = ehr.to_registration(row, web=True)
    conf = ehr.configuration(reg)
    scope = scopes_for(reg, conf, _standalone_scopes(reg.scopes) if launch is None else None)
    state = new_state()
    verifier, _ = new_pkce()
    secret, new_cookie = _browser_secret()
    now = utcnow()
    vault = get_vault()
    session = LaunchSession(
        id=secrets.token_urlsafe(24),
        registration_id=row.id,
        status="pending",
        state_hash=_sha(state),
        state_expires_at=now + STATE_TTL,
        code_verifier_enc=vault.encrypt(verifier),
        launch_param_enc=vault.encrypt_optional(launch),
        browser_hash=_sha(secret),
        scope_requested=scope,
    )
    db = get_db()
    db.add(session)
    db.commit()
    if "openid" in scope.split():
        # While the user is at the EHR's authorize page, fetch the EHR's signing keys so
        # the callback can verify the id_token without another round trip.
        threading.Thread(
            target=warm_jwks,
            args=(conf,),
            kwargs={"http": ehr.clients().http(row.id)},
            daemon=True,
        ).start()
    auth = build_authorization_request(
        reg, conf, state=state, code_verifier=verifier, launch=launch, scope=scope
    )
    response: BaseResponse
    if auth.method == "POST":
        # The page posts to the EHR's authorize endpoint: CSP form-action must allow it.
        target = urlsplit(auth.url)
        g.csp_form_targets = (f"{target.scheme}://{target.netloc}",)
        response = make_response(
            render_template("autopost.html", action=auth.url, params=auth.params)
        )
    else:
        response = redirect(auth.url, code=302)
    if new_cookie:
        _set_browser_cookie(response, secret)
    return response


def _standalone_scopes(scopes: str) -> str:
    # A standalone launch has no EHR context to attach: ask the server for a patient picker.
    parts = [s for s in scopes.split() if s != "launch"]
    if "launch/patient" not in parts:
        parts.append("launch/patient")
    return " ".join(parts)


@bp.get("/callback")
def callback() -> BaseResponse:
    try:
        code, state = parse_callback(request.args)
    except AuthorizationDenied as exc:
        log.info("authorization denied by the EHR: %s", exc.error)
        raise AppError(
            f"The EHR did not authorize CareDesk ({exc.error}). "
            + (exc.error_description or "Launch CareDesk again, or ask your EHR administrator."),
            status=403,
            code=exc.error,
        ) from exc
    db = get_db()
    now = utcnow()
    # Single use: only one request can move this row out of "pending".
    claimed = db.execute(
        update(LaunchSession)
        .where(LaunchSession.state_hash == _sha(state), LaunchSession.status == "pending")
        .values(status="exchanging", state_hash=None)
        .returning(LaunchSession.id)
    ).scalar_one_or_none()
    db.commit()
    if claimed is None:
        raise AppError(
            "This sign-in link is unknown or was already used. Launch again.", code="invalid_state"
        )
    launch = db.get(LaunchSession, claimed)
    assert launch is not None
    if launch.state_expires_at is None or now >= launch.state_expires_at:
        _fail(launch)
        raise AppError(
            "This sign-in took longer than 10 minutes. Launch again.", code="expired_state"
        )
    if launch.browser_hash != _sha(request.cookies.get(COOKIE, "")):
        # The state was issued to another browser: a login-CSRF attempt, or cookies blocked.
        _fail(launch)
        raise AppError(
            "This sign-in did not start in this browser (or the browser blocked CareDesk's "
            "cookie). Launch CareDesk again from the EHR.",
            code="browser_mismatch",
        )
    reg = ehr.to_registration(launch.registration, web=True)
    try:
        conf = ehr.configuration(reg)
        tokens = exchange_code(
            reg,
            conf,
            code=code,
            code_verifier=get_vault().decrypt(launch.code_verifier_enc or b""),
            http=ehr.clients().http(int(reg.id)),
            scope_requested=launch.scope_requested,
        )
    except SmartError:
        _fail(launch)
        raise
    launch.status = "active"
    launch.code_verifier_enc = None
    launch.token_set_enc = get_vault().encrypt(tokens.to_json())
    launch.scope_granted = tokens.scope_granted
    launch.access_expires_at = tokens.expires_at
    launch.has_refresh_token = tokens.refresh_token is not None
    launch.patient_ref = f"Patient/{tokens.patient}" if tokens.patient else None
    launch.encounter_ref = f"Encounter/{tokens.encounter}" if tokens.encounter else None
    launch.fhir_user = tokens.fhir_user
    launch.context = {
        "need_patient_banner": tokens.need_patient_banner,
        "smart_style_url": tokens.smart_style_url,
        "intent": tokens.intent,
        "tenant": tokens.tenant,
        "fhir_context": list(tokens.fhir_context),
        "missing_scopes": tokens.missing_scopes(),
    }
    launch.last_seen_at = now
    db.commit()
    audit("launch", launch=launch, entity=f"LaunchSession/{launch.id}")
    return redirect(url_for("sidebar.home", launch_id=launch.id), code=303)


def _fail(launch: LaunchSession) -> None:
    launch.status = "failed"
    launch.code_verifier_enc = None
    get_db().commit()


def current_launch(launch_id: str) -> LaunchSession:
    """The active launch named in the URL, if this browser owns it; else 401."""
    launch = get_db().get(LaunchSession, launch_id)
    cookie = request.cookies.get(COOKIE, "")
    if (
        launch is None
        or launch.status != "active"
        or not cookie
        or not secrets.compare_digest(launch.browser_hash or "", _sha(cookie))
    ):
        raise AppError(
            "This CareDesk session has ended or belongs to another browser. "
            "Launch CareDesk again from the EHR.",
            status=401,
            code="no_session",
        )
    now = utcnow()
    seen = launch.last_seen_at or launch.created_at
    if now - seen > SESSION_IDLE:
        # The browser's session ends; the token set stays for jobs this launch queued
        # (they refresh with it after the user has left).
        launch.status = "ended"
        get_db().commit()
        raise AppError(
            "This CareDesk session ended after 12 hours without use. "
            "Launch CareDesk again from the EHR.",
            status=401,
            code="session_expired",
        )
    if now - seen > SEEN_GRANULARITY:
        launch.last_seen_at = now
        get_db().commit()
    g.launch = launch
    return launch


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    """Public keys for private_key_jwt, every registration's, retired ones included until
    removed (an EHR may still verify an assertion signed just before a rotation)."""
    keys = get_db().scalars(select(SigningKey).order_by(SigningKey.id)).all()
    response = make_response(ehr.public_jwks(list(keys)))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.post("/l/<launch_id>/end")
def end(launch_id: str) -> Response:
    """Sign out of this launch: the token set is deleted, not just hidden."""
    from plugin.csrf import check_csrf

    launch = current_launch(launch_id)
    check_csrf(launch)
    launch.status = "ended"
    launch.token_set_enc = None
    get_db().commit()
    return make_response(
        render_template(
            "error.html",
            status=200,
            code="ended",
            title="Signed out",
            message="This CareDesk session has ended. Launch again from the EHR.",
            request_id=g.get("request_id", "-"),
        )
    )
