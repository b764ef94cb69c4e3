"""Rate limits on the work anyone on the internet can cause, with Flask-Limiter.

Counted in Redis (``CAREDESK_REDIS_URL``), so every gunicorn worker and every machine
shares one count; the demo's in-process queue has no Redis, so it counts in memory.
Each limited route is counted twice: per client address (one browser or script) and per
EHR registration (a flood spread over many addresses still cannot make CareDesk hammer
one EHR). Redis unavailable: requests go through (a patient answering a survey or a
clinician launching matters more than the limiter), and the failure is logged.

What is limited, and why:

- ``/launch``, ``/start``, ``/callback``: each stores a pending launch or spends one, and
  fetches from the EHR; unauthenticated by nature.
- ``/inbound/sms/<slug>``: the messaging webhook stores a row and queues a job per call
  (after its signature is checked, but counted before).
- launch-id lookups (every ``/l/<id>/...``, ``/api/l/<id>/...`` and ``/reports?launch=``
  route): a request whose launch id is unknown, or not this browser's, counts against
  the address (guessing ids); all requests count against the launch's registration. A
  request that names a live launch this browser holds is no guess: the misses limit
  neither counts nor checks it, so a clinician's sidebar request costs one Redis round
  trip for its limits, not two (issue 16), while every guess is counted and refused as
  before.

Behind a reverse proxy every client has the proxy's address unless
``CAREDESK_PROXY_FIX`` says how many proxies to trust: then one patient's limit is the
whole clinic's. The first request that arrives with ``X-Forwarded-For`` while
``CAREDESK_PROXY_FIX`` is 0 logs a warning saying so (once per process): start-up cannot
know, but the first proxied request can.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import cast

from flask import Blueprint, Flask, Response, current_app, request
from flask_limiter import Limiter

from plugin.launch import (
    held_here,
    launch_by_state,
    launch_row,
    registration_by_iss,
    registration_by_key,
)

log = logging.getLogger("caredesk.ratelimit")
_proxy_warned = threading.Event()


def _address() -> str:
    """The client address as a hash (an address is personal data; keys live in Redis)."""
    return hashlib.sha256((request.remote_addr or "unknown").encode()).hexdigest()[:24]


def _per_minute(setting: str) -> Callable[[], str]:
    return lambda: f"{int(current_app.config[setting])}/minute"


# --- keys per registration -----------------------------------------------------------------


def _launch_registration() -> str:
    """The registration a ``/launch``, ``/start`` or ``/callback`` is for. Unknown ones
    share one bucket, so made-up values cannot buy fresh counts."""
    if request.endpoint == "launch.callback":
        state = request.args.get("state", "")
        launch = launch_by_state(state) if state and len(state) <= 512 else None
        return f"ehr:{launch.registration_id}" if launch is not None else "ehr:unknown"
    # The view reads the same row again from ``g``, not from the store.
    if request.endpoint == "launch.ehr_launch":
        row = registration_by_iss(request.args.get("iss", "")[:1024])
    elif request.endpoint == "launch.standalone_launch":
        row = registration_by_key(request.args.get("ehr", "")[:200])
    else:
        return _session_registration()
    return f"ehr:{row.id}" if row is not None else "ehr:unknown"


def launch_id_of_request() -> str | None:
    args = request.view_args or {}
    if "launch_id" in args:
        return str(args["launch_id"])
    if request.path.startswith("/reports/"):
        return request.args.get("launch") or None
    return None


def _session_registration() -> str:
    launch_id = launch_id_of_request()
    launch = launch_row(launch_id[:64]) if launch_id else None
    return f"ehr:{launch.registration_id}" if launch is not None else "ehr:unknown"


def _survey_token() -> str:
    return str((request.view_args or {}).get("token", ""))


def _survey_link() -> str:
    return "link:" + hashlib.sha256(_survey_token().encode()).hexdigest()[:32]


def _survey_registration() -> str:
    from plugin.survey import find_invite

    invite = find_invite(_survey_token())
    return f"ehr:{invite.registration_id}" if invite is not None else "ehr:unknown"


def _inbound_registration() -> str:
    slug = str((request.view_args or {}).get("slug", ""))[:64]
    return f"inbound:{hashlib.sha256(slug.encode()).hexdigest()[:24]}"


def _held_session() -> bool:
    """The request names a live launch of this browser's (the row the EHR limit's key
    reads too, once per request): not a guess at a launch id."""
    launch_id = launch_id_of_request()
    return held_here(launch_row(launch_id[:64]) if launch_id else None)


def _session_missed(response: Response) -> bool:
    """Deduct a launch-id lookup from the address only when it found no session of this
    browser: guesses are slowed, a clinician's busy sidebar is not."""
    return response.status_code == 401


# --- set-up --------------------------------------------------------------------------------


def _blueprint(app: Flask, name: str) -> Blueprint:
    return cast(Blueprint, app.blueprints[name])


def init_app(app: Flask) -> None:
    """One limiter per app (tests build many apps), bound to the registered blueprints:
    call after they are registered."""
    redis_url = app.config.get("REDIS_URL")
    # Shared through Redis; the demo's in-process stand-in has no server: memory.
    app.config.setdefault("RATELIMIT_STORAGE_URI", str(redis_url) if redis_url else "memory://")
    limiter = Limiter(
        key_func=_address,
        key_prefix="caredesk:rl",
        strategy="moving-window",
        # No X-RateLimit-* headers: they cost every limited request one more Redis round
        # trip (the window's state, read after the view), and a patient's phone or an EHR
        # has no use for them. A refusal still says when to come back (``_retry_after``).
        headers_enabled=False,
        swallow_errors=True,
    )
    limiter.init_app(app)
    app.extensions["caredesk.limiter"] = limiter

    @app.after_request
    def _retry_after(response: Response) -> Response:
        # Only on a refusal: the breached limit's reset, read from Redis then.
        limit = limiter.current_limit
        if response.status_code == 429 and limit is not None and limit.breached:
            try:
                wait = int(limit.reset_at - time.time())
            except Exception:  # noqa: BLE001 - Redis gone: a refusal without the hint
                log.warning("rate limit reset unavailable for Retry-After")
            else:
                response.headers["Retry-After"] = str(max(wait, 1))
        return response

    launch_bp = _blueprint(app, "launch")
    limiter.limit(_per_minute("RATE_LAUNCH_PER_ADDRESS"))(launch_bp)
    limiter.limit(_per_minute("RATE_LAUNCH_PER_EHR"), key_func=_launch_registration)(launch_bp)

    misses = limiter.shared_limit(
        _per_minute("RATE_SESSION_MISSES_PER_ADDRESS"),
        scope="session-miss",
        deduct_when=_session_missed,
        exempt_when=_held_session,
    )
    per_ehr = limiter.shared_limit(
        _per_minute("RATE_SESSION_PER_EHR"), scope="session-ehr", key_func=_session_registration
    )
    # Every blueprint with a route that names a launch (a new one is covered without a
    # change here), and the reports, which take the launch as ?launch=.
    sessions = {
        rule.endpoint.split(".", 1)[0]
        for rule in app.url_map.iter_rules()
        if "launch_id" in rule.arguments and "." in rule.endpoint
    }
    for name in sorted((sessions | {"reports"}) - {"launch"}):
        misses(_blueprint(app, name))
        per_ehr(_blueprint(app, name))

    survey_bp = _blueprint(app, "survey")
    limiter.shared_limit(_per_minute("SURVEY_RATE_PER_IP"), scope="survey-addr")(survey_bp)
    limiter.shared_limit(
        _per_minute("SURVEY_RATE_PER_TOKEN"), scope="survey-link", key_func=_survey_link
    )(survey_bp)
    limiter.shared_limit(
        _per_minute("SURVEY_RATE_PER_EHR"), scope="survey-ehr", key_func=_survey_registration
    )(survey_bp)

    # The messaging webhook: anyone can call it (the signature is checked after the
    # count), so per address, and per registration for a flood spread over addresses.
    inbound_bp = _blueprint(app, "inbound")
    limiter.limit(_per_minute("INBOUND_RATE_PER_MINUTE"))(inbound_bp)
    limiter.limit(_per_minute("INBOUND_RATE_PER_EHR"), key_func=_inbound_registration)(inbound_bp)

    @app.before_request
    def _warn_about_a_proxy() -> None:
        if (
            not _proxy_warned.is_set()
            and not app.config.get("PROXY_FIX")
            and request.headers.get("X-Forwarded-For")
        ):
            _proxy_warned.set()
            log.warning(
                "requests arrive through a proxy (X-Forwarded-For) but CAREDESK_PROXY_FIX "
                "is 0: every client has the proxy's address, so per-address rate limits "
                "are shared by all of them. Set CAREDESK_PROXY_FIX to the number of proxies."
            )
