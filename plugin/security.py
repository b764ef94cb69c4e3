"""Security headers. The CSP's frame-ancestors lists the registered EHRs' frame origins,
so CareDesk renders in their iframes and in nobody else's."""

from __future__ import annotations

import time
from threading import Lock

from flask import Flask, Response, current_app, g, request
from sqlalchemy import select

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


def init_app(app: Flask) -> None:
    origins = FrameOrigins()
    app.extensions["caredesk.frame_origins"] = origins

    @app.after_request
    def _headers(response: Response) -> Response:
        form_targets = tuple(g.get("csp_form_targets", ()))
        response.headers.setdefault(
            "Content-Security-Policy", content_security_policy(origins.get(app), form_targets)
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.is_secure:
            response.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        if request.path.startswith(("/api/", "/launch", "/callback", "/s/")):
            response.headers.setdefault("Cache-Control", "no-store")
        return response
