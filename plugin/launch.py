"""SMART App Launch, the web edge: /launch (EHR launch), /start (standalone), /callback.

State and the PKCE verifier live server-side in a ``LaunchSession`` row keyed by the
SHA-256 of the state; the browser holds only an opaque cookie. Each launch gets its own id
in the URL (``/l/<id>/``), so two tabs on two patients never mix; the cookie binds those
ids to this browser.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import delete, func, select, update
from werkzeug.wrappers import Response as BaseResponse

from helpdesk import ehr
from helpdesk.audit import record
from helpdesk.crypto import get_vault
from helpdesk.db import get_db
from helpdesk.errors import AppError
from helpdesk.models import EhrRegistration, LaunchSession, SigningKey
from helpdesk.registry import find, find_by_iss
from helpdesk.timeutil import utcnow
from plugin import context as ctx
from smart_launch.errors import BrowserMismatch, SmartError, StateError
from smart_launch.launch import (
    STATE_TTL,
    browser_key,
    build_authorization_request,
    exchange_code,
    new_browser_secret,
    new_pkce,
    new_state,
    parse_callback,
    scopes_for,
    state_key,
    warm_jwks,
)

_Row = TypeVar("_Row")
bp = Blueprint("launch", __name__)
log = logging.getLogger("caredesk.launch")

COOKIE = "caredesk_browser"
# Launches one browser keeps at once (tabs on several patients); the oldest drops out.
MAX_BOUND_LAUNCHES = 8
_SECRET_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")
# A launch left idle this long needs a new launch from the EHR (a shared workstation).
SESSION_IDLE = timedelta(hours=12)
# last_seen_at is written at most this often, not on every request.
SEEN_GRANULARITY = timedelta(minutes=5)


def _sha(value: str) -> str:
    return browser_key(value)


def _cookie_secrets() -> list[str]:
    """The browser-binding secrets this browser sent, most recent last. Only what the
    server issued ever binds a launch (each launch gets a fresh one, ``_begin``), so a
    value planted in the cookie binds nothing."""
    # Every cookie of that name: one planted with a narrower Path or another Domain is
    # sent too (and first), and must not hide the one the server issued.
    found: list[str] = []
    for raw in request.cookies.getlist(COOKIE):
        found += [s for s in raw.split(".") if _SECRET_SHAPE.fullmatch(s) and s not in found]
    return found[:32]


def _owns(browser_hash: str | None) -> bool:
    """Whether this browser holds the secret whose hash is ``browser_hash`` (constant
    time per secret; every secret is compared, so timing says nothing about which)."""
    found = False
    for secret in _cookie_secrets():
        found |= secrets.compare_digest(browser_hash or "", _sha(secret))
    return bool(browser_hash) and found


def _issue_secret() -> tuple[str, str]:
    """A fresh secret for a new launch, and the cookie value to send: the secrets of this
    browser's other live launches (two tabs on two patients keep working) plus the new
    one. Secrets that bind no live launch are dropped, planted ones included."""
    fresh = new_browser_secret()
    held = _cookie_secrets()
    live: set[str] = set()
    if held:
        hashes = {_sha(s): s for s in held}
        live = set(
            get_db().scalars(
                select(LaunchSession.browser_hash).where(
                    LaunchSession.browser_hash.in_(list(hashes)),
                    LaunchSession.status.in_(("pending", "exchanging", "active")),
                )
            )
        )
        held = [s for s in held if _sha(s) in live]
    kept = [*held, fresh][-MAX_BOUND_LAUNCHES:]
    return fresh, ".".join(kept)


def _set_browser_cookie(response: BaseResponse, value: str) -> None:
    if request.is_secure:
        # Inside an EHR iframe the cookie is third-party: it needs SameSite=None; Secure,
        # and Partitioned (CHIPS) so browsers that block third-party cookies keep it.
        response.set_cookie(
            COOKIE, value, secure=True, httponly=True, samesite="None", partitioned=True, path="/"
        )
    else:
        # Plain http is only for the demo on loopback, where app and EHR are same-site.
        response.set_cookie(COOKIE, value, httponly=True, samesite="Lax", path="/")


@bp.get("/launch")
def ehr_launch() -> BaseResponse:
    iss = request.args.get("iss", "")
    launch = request.args.get("launch", "")
    if not iss or not launch:
        raise AppError(
            "An EHR launch needs both `iss` and `launch`. Open CareDesk from the EHR.",
            code="missing_launch_parameters",
        )
    row = registration_by_iss(iss)
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
    row = registration_by_key(key) if key else None
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
    now = utcnow()
    _make_room(row.id, now)
    if "openid" in scope.split() and conf.jwks_uri:
        # While the user is at the EHR's authorize page, fetch the EHR's signing keys so
        # the callback can verify the id_token without another round trip. Through a
        # small bounded pool, never a thread per request: a flood of launches queues at
        # most one fetch per EHR (the keys are cached after it).
        _warmer().submit(conf.jwks_uri, warm_jwks, conf, http=ehr.clients().http(row.id))
    # A fresh secret at every launch: a cookie the browser brought (planted by someone
    # who hopes to learn the launch id) never binds the new launch.
    secret, cookie_value = _issue_secret()
    vault = get_vault()
    session = LaunchSession(
        id=secrets.token_urlsafe(24),
        registration_id=row.id,
        status="pending",
        state_hash=state_key(state),
        state_expires_at=now + STATE_TTL,
        code_verifier_enc=vault.encrypt(verifier),
        launch_param_enc=vault.encrypt_optional(launch),
        browser_hash=_sha(secret),
        scope_requested=scope,
    )
    db = get_db()
    db.add(session)
    db.commit()
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
    _set_browser_cookie(response, cookie_value)
    return response


class Warmer:
    """Background fetches that only save time later: at most ``workers`` threads and
    ``pending`` jobs at once, one per key; when full, a fetch is skipped (the callback
    then fetches the keys itself)."""

    def __init__(self, *, workers: int = 2, pending: int = 16) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="caredesk-warm")
        self._lock = threading.Lock()
        self._keys: set[str] = set()
        self._pending = pending

    def submit(self, key: str, fn: Callable[..., object], *args: Any, **kwargs: Any) -> bool:
        with self._lock:
            if key in self._keys or len(self._keys) >= self._pending:
                return False
            self._keys.add(key)

        def run() -> None:
            try:
                fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._keys.discard(key)

        self._pool.submit(run)
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _warmer() -> Warmer:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    with _WARMER_LOCK:
        warmer = app.extensions.get("caredesk.warmer")
        if warmer is None:
            warmer = app.extensions["caredesk.warmer"] = Warmer()
    return warmer  # type: ignore[no-any-return]


_WARMER_LOCK = threading.Lock()


def _pending_count(registration_id: int) -> int:
    query = select(func.count()).where(
        LaunchSession.registration_id == registration_id, LaunchSession.status == "pending"
    )
    return int(get_db().scalar(query) or 0)


def _make_room(registration_id: int, now: datetime) -> None:
    """Cap the sign-ins in progress per EHR (each row holds a PKCE verifier until its
    callback): past ``MAX_PENDING_LAUNCHES``, pending launches whose state has expired
    (useless: their callback is refused) are deleted; if that frees nothing, 503."""
    cap = int(current_app.config["MAX_PENDING_LAUNCHES"])
    if _pending_count(registration_id) < cap:
        return
    db = get_db()
    db.execute(
        delete(LaunchSession).where(
            LaunchSession.registration_id == registration_id,
            LaunchSession.status == "pending",
            LaunchSession.state_expires_at < now,
        )
    )
    db.commit()
    if _pending_count(registration_id) >= cap:
        log.warning("launch refused: %d sign-ins already in progress for this EHR", cap)
        raise AppError(
            "Too many sign-ins to this EHR are in progress. Try again in a few minutes.",
            status=503,
            code="too_many_pending_launches",
        )


def _standalone_scopes(scopes: str) -> str:
    # A standalone launch has no EHR context to attach: ask the server for a patient picker.
    parts = [s for s in scopes.split() if s != "launch"]
    if "launch/patient" not in parts:
        parts.append("launch/patient")
    return " ".join(parts)


@bp.get("/callback")
def callback() -> BaseResponse:
    """The EHR's redirect back. In this order, so that someone holding a victim's
    callback URL cannot burn its state from another browser: look the pending launch up
    by its state without using it up, check the browser binding, then the expiry, and
    only then use the state up (one atomic UPDATE) and exchange the code."""
    code, state = parse_callback(request.args)  # the EHR's error: AuthorizationDenied
    db = get_db()
    now = utcnow()
    pending = launch_by_state(state)
    if pending is None or pending.status != "pending":
        raise StateError("This sign-in link is unknown or was already used. Launch again.")
    if not _owns(pending.browser_hash):
        # Issued to another browser: a login-CSRF attempt, a replayed link, or blocked
        # cookies. The pending launch is left as it was for the browser that started it.
        raise BrowserMismatch(
            "This sign-in did not start in this browser (or the browser blocked CareDesk's "
            "cookie). Launch CareDesk again from the EHR."
        )
    if pending.state_expires_at is None or now >= pending.state_expires_at:
        _fail(pending)
        raise StateError("This sign-in took longer than 10 minutes. Launch again.")
    # Single use: only one request can move this row out of "pending".
    claimed = db.execute(
        update(LaunchSession)
        .where(
            LaunchSession.id == pending.id,
            LaunchSession.state_hash == state_key(state),
            LaunchSession.status == "pending",
        )
        .values(status="exchanging", state_hash=None)
        .returning(LaunchSession.id)
    ).scalar_one_or_none()
    db.commit()
    if claimed is None:
        raise StateError("This sign-in link is unknown or was already used. Launch again.")
    # The row read above, now ours alone: the claim changed only its status and state
    # (synchronised into it by the UPDATE), so it is not read again.
    launch = pending
    reg = ehr.to_registration(launch.registration, web=True)
    try:
        conf = ehr.configuration(reg)
        tokens = exchange_code(
            reg,
            conf,
            code=code,
            code_verifier=get_vault().decrypt(launch.code_verifier_enc or b""),
            http=ehr.clients().http(int(reg.id)),
            scope_requested=launch.scope_requested or scopes_for(reg, conf),
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
    # The audit row in the same commit as the launch it records (one commit, not two); it
    # says when the launch's patient is read from the EHR right away (below), so that
    # read is on record even if the browser never asks for the sidebar.
    prefetch = launch.patient_ref is not None
    record(
        db,
        "launch",
        launch=launch,
        entity=f"LaunchSession/{launch.id}",
        detail={"patient_reads": "started"} if prefetch else None,
    )
    db.commit()
    if prefetch:
        # The sidebar's first wave of reads (Patient, Appointments, Coverages) goes out now,
        # with the tokens just received and verified, while the browser follows the
        # redirect and the sidebar request checks its session: it takes these reads (keyed
        # by this launch's id and its patient) instead of starting them itself, which put
        # that work and a second request for the page's sections on a launch's critical
        # path (issue 16 §4). Started after the commit: a 401 on them refreshes from the
        # stored grant as any page's reads do; failed reads are asked again by the page.
        try:
            ctx.start_patient(launch, str(launch.patient_ref), token_set=tokens)
        except (SmartError, AppError) as exc:
            # An optimisation never fails a launch: the sidebar meets the same refusal
            # itself and says it in words.
            log.info("early patient reads not started: %s", type(exc).__name__)
    return redirect(url_for("sidebar.home", launch_id=launch.id), code=303)


def registration_by_iss(iss: str) -> EhrRegistration | None:
    """The registration of this ``iss``, read once per request: the rate limiter's key
    (``plugin.ratelimit``) and ``/launch`` both need it."""
    return _once("registration_by_iss", iss, lambda: find_by_iss(get_db(), iss))


def registration_by_key(key: str) -> EhrRegistration | None:
    """The registration ``/start?ehr=`` names (id, slug or iss), read once per request."""
    return _once("registration_by_key", key, lambda: find(get_db(), key))


def launch_by_state(state: str) -> LaunchSession | None:
    """The launch row that holds this state (whatever its status), read once per
    request: the rate limiter's key (its registration) and ``/callback`` both need it."""
    query = select(LaunchSession).where(LaunchSession.state_hash == state_key(state))
    return _once("launch_by_state", state, lambda: get_db().scalars(query).first())


def _once(kind: str, key: str, read: Callable[[], _Row]) -> _Row:
    """A row (or None) read once per request, kept on ``g``: the session's identity map
    holds rows only weakly, and a query by anything but the primary key is a query again."""
    rows: dict[tuple[str, str], Any] = g.setdefault("rows_by_key", {})
    if (kind, key) not in rows:
        rows[(kind, key)] = read()
    found: _Row = rows[(kind, key)]
    return found


def _fail(launch: LaunchSession) -> None:
    launch.status = "failed"
    launch.code_verifier_enc = None
    get_db().commit()


def launch_row(launch_id: str) -> LaunchSession | None:
    """The launch row with this id, read once per request: the rate limiter's key (its
    registration) and ``current_launch`` both need it, and the row is kept on ``g``
    because the session's identity map holds rows only weakly (a second ``get`` was a
    second query)."""
    return _once("launch_row", launch_id, lambda: get_db().get(LaunchSession, launch_id))


def held_here(launch: LaunchSession | None) -> bool:
    """Whether ``launch`` is active and this browser holds it (its cookie's secret)."""
    return launch is not None and launch.status == "active" and _owns(launch.browser_hash)


def current_launch(launch_id: str) -> LaunchSession:
    """The active launch named in the URL, if this browser owns it; else 401."""
    launch = launch_row(launch_id)
    if launch is None or not held_here(launch):
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
