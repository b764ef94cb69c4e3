"""Security headers and transport. The CSP's frame-ancestors lists the registered EHRs'
frame origins, so CareDesk renders in their iframes and in nobody else's.

Every response is ``Cache-Control: no-store`` unless its view said otherwise (static files,
the public JWKS, the EHR's style sheet): CareDesk's pages show patient data, and a page
kept by a browser or a shared proxy outlives the launch that was allowed to see it.

In production CareDesk serves nothing but ``/healthz`` over plain http outside loopback:
the launch carries an authorization code, the pages carry patient data, and inside the
EHR's iframe the session cookie only works as ``Secure; SameSite=None``. Behind a proxy
that terminates TLS, ``CAREDESK_PROXY_FIX`` says how many ``X-Forwarded-*`` hops to
believe; without it the request looks like plain http and is refused, with a page that
says what to set.
"""

from __future__ import annotations

import ipaddress
import time
from threading import Lock
from typing import NoReturn
from urllib.parse import urlsplit

from flask import Flask, Request, Response, current_app, g, request
from flask.sessions import NullSession, SessionInterface, SessionMixin
from sqlalchemy import select
from werkzeug.wrappers import Response as BaseResponse

from helpdesk.db import get_store
from helpdesk.models import EhrRegistration

_CACHE_SECONDS = 30.0


class FrameOrigins:
    """Registered frame origins, cached briefly: one query per 30 s, not per response."""

    def __init__(self) -> None:
        self._lock = Lock()
        self._value: tuple[str, ...] = ()
        self._loaded_at = float("-inf")

    def get(self, app: Flask) -> tuple[str, ...]:
        now = time.monotonic()
        if now - self._loaded_at < _CACHE_SECONDS:
            return self._value
        with self._lock:
            if now - self._loaded_at >= _CACHE_SECONDS:
                self._value = _load_origins(app)
                self._loaded_at = now
        return self._value

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")


def _load_origins(app: Flask) -> tuple[str, ...]:
    origins: set[str] = set()
    try:
        with get_store(app).session() as session:
            for frame_origins in session.scalars(select(EhrRegistration.frame_origins)):
                origins.update(o for o in frame_origins or () if _is_origin(o))
    except Exception:  # noqa: BLE001 - no schema yet (before `db upgrade`): frame nobody
        current_app.logger.warning("frame origins unavailable; framing restricted to self")
    return tuple(sorted(origins))


def _is_origin(value: str) -> bool:
    # Only scheme://host[:port]; anything else could smuggle directives into the header.
    return (
        value.startswith(("https://", "http://"))
        and all(c not in value for c in " ;,'\"")
        and value.count("/") == 2
    )


def content_security_policy(
    frame_ancestors: tuple[str, ...], form_targets: tuple[str, ...] = ()
) -> str:
    """The policy for every page. ``form_targets`` widens ``form-action`` for the one page
    that posts to an EHR (SMART ``authorize-post``)."""
    ancestors = " ".join(("'self'", *frame_ancestors))
    forms = " ".join(("'self'", *(t for t in form_targets if _is_origin(t))))
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            f"form-action {forms}",
            f"frame-ancestors {ancestors}",
        ]
    )


# Answered over plain http even in production: load balancers probe inside the network.
PLAIN_HTTP_PATHS = ("/healthz",)
HSTS = "max-age=31536000; includeSubDomains"


def _is_loopback(value: str | None) -> bool:
    if not value:
        return False
    if value == "localhost":
        return True
    try:
        return ipaddress.ip_address(value).is_loopback
    except ValueError:
        return False


def plain_http_refused() -> bool:
    """Production, plain http, and not a loopback request (both the address asked for and
    the client: the Host header alone is the client's word)."""
    if current_app.config.get("ENV") != "production" or request.is_secure:
        return False
    if request.path in PLAIN_HTTP_PATHS:
        return False
    host = urlsplit(f"//{request.host}").hostname
    return not (_is_loopback(host) and _is_loopback(request.remote_addr))


def _refuse_plain_http() -> BaseResponse:
    from plugin.errors import error_response

    current_app.logger.warning("plain http refused in production (%s)", request.path)
    return error_response(
        403,
        "https_required",
        "CareDesk only works over HTTPS here: the launch carries a sign-in code and the "
        "pages carry patient data. Open CareDesk at its https:// address. Administrators: "
        "when a reverse proxy terminates TLS, set CAREDESK_PROXY_FIX to the number of "
        "proxies so CareDesk believes their X-Forwarded-Proto header.",
        title="CareDesk needs a secure connection",
    )


class _NoSession(NullSession):
    def _fail(self, *args: object, **kwargs: object) -> NoReturn:
        raise RuntimeError(
            "CareDesk keeps nothing in Flask's cookie session (plugin.security.NoCookieSession): "
            "keep it on a server-side row and name it by the browser cookie or the launch id."
        )

    __setitem__ = __delitem__ = clear = pop = popitem = update = setdefault = _fail


class NoCookieSession(SessionInterface):
    """Flask's signed-cookie session is not opened. CareDesk keeps no state in it: the
    browser binding is its own cookie (``plugin.launch``), OAuth state and tokens are rows
    on the server (a signed cookie is readable by the browser). Opening it built a signing
    serializer on every request for nothing; writing to ``flask.session`` now fails
    loudly instead of putting data in a cookie."""

    null_session_class = _NoSession

    def open_session(self, app: Flask, request: Request) -> None:
        return None  # Flask then uses null_session_class

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        return None


def init_app(app: Flask) -> None:
    app.session_interface = NoCookieSession()
    origins = FrameOrigins()
    app.extensions["caredesk.frame_origins"] = origins

    @app.before_request
    def _transport() -> BaseResponse | None:
        return _refuse_plain_http() if plain_http_refused() else None

    @app.after_request
    def _headers(response: Response) -> Response:
        form_targets = tuple(g.get("csp_form_targets", ()))
        response.headers.setdefault(
            "Content-Security-Policy", content_security_policy(origins.get(app), form_targets)
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.is_secure:
            response.headers["Strict-Transport-Security"] = HSTS
        if not request.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response
