"""Rate limits on unauthenticated work (plugin.ratelimit): per client address and per EHR
registration, counted in Redis so every process shares them; pending launches capped;
no thread per request."""

from __future__ import annotations

import logging
import threading

import requests
from sqlalchemy import func, select

from helpdesk.db import get_store
from helpdesk.models import LaunchSession
from sandbox.testing import running_sandbox
from tests.ehr import connect
from tests.live import serve

CLIENT_ID = "caredesk-limits"


def _pending(app) -> int:  # type: ignore[no-untyped-def]
    with get_store(app).session() as db:
        return int(db.scalar(select(func.count()).select_from(LaunchSession)) or 0)


def test_the_61st_launch_in_a_minute_from_one_address_is_429_and_stores_nothing(
    make_app, monkeypatch
) -> None:
    started: list[str] = []
    real_start = threading.Thread.start

    def spy(self: threading.Thread) -> None:
        target = getattr(self, "_target", None)
        name = getattr(target, "__name__", "")
        if name != "process_request_thread":  # the test server's own thread per request
            started.append(name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", spy)
    app = make_app()
    with serve(app) as url, running_sandbox() as sb:
        connect(app, sb, url, client_id=CLIENT_ID)
        http = requests.Session()
        launch_url = sb.launch(CLIENT_ID, patient="pat-001")["url"]
        started.clear()
        codes = [
            http.get(launch_url, allow_redirects=False, timeout=30).status_code for _ in range(60)
        ]
        assert codes == [302] * 60
        assert _pending(app) == 60
        # No thread per request: JWKS warming goes through one small bounded pool.
        assert len(started) <= 2, started
        refused = http.get(launch_url, allow_redirects=False, timeout=30)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) > 0
        assert "Too many requests" in refused.text
        assert _pending(app) == 60
        # Forged callbacks and launch-id guesses from that address meet their own limits.
        guesses = [http.get(f"{url}/l/guess-{i}/", timeout=30).status_code for i in range(31)]
        assert guesses[:30] == [401] * 30 and guesses[30] == 429
        forged = [
            http.get(f"{url}/callback", params={"code": "c", "state": f"s{i}"}, timeout=30)
            for i in range(61)
        ]
        assert [r.status_code for r in forged] == [400] * 60 + [429]


def test_limits_are_shared_by_every_process_through_redis(make_app) -> None:
    """Two app processes (two gunicorn workers, two machines) count together."""
    first, second = make_app(RATE_LAUNCH_PER_ADDRESS=5), make_app(RATE_LAUNCH_PER_ADDRESS=5)
    codes = []
    for app in (first, second, first, second, first, second):
        client = app.test_client()
        codes.append(client.get("/start?ehr=nobody").status_code)
    assert codes == [404] * 5 + [429]


def test_an_ehrs_launches_are_limited_across_addresses(make_app) -> None:
    app = make_app(RATE_LAUNCH_PER_EHR=3)
    codes = [
        app.test_client()
        .get("/start?ehr=nobody", environ_base={"REMOTE_ADDR": f"10.0.0.{i}"})
        .status_code
        for i in range(4)
    ]
    assert codes == [404, 404, 404, 429]


def test_pending_launches_are_capped_per_ehr_and_expired_ones_make_room(make_app) -> None:
    app = make_app(MAX_PENDING_LAUNCHES=3)
    with serve(app) as url, running_sandbox() as sb:
        connect(app, sb, url, client_id=CLIENT_ID)
        launch_url = sb.launch(CLIENT_ID, patient="pat-001")["url"]
        codes = [requests.get(launch_url, allow_redirects=False, timeout=30).status_code]
        codes += [requests.get(launch_url, allow_redirects=False, timeout=30).status_code]
        codes += [requests.get(launch_url, allow_redirects=False, timeout=30).status_code]
        busy = requests.get(launch_url, allow_redirects=False, timeout=30)
        assert codes == [302, 302, 302] and busy.status_code == 503
        assert _pending(app) == 3
        # Ten minutes on, those states have expired: they are dropped to make room.
        from datetime import timedelta

        from helpdesk.timeutil import utcnow

        with get_store(app).session() as db:
            for row in db.scalars(select(LaunchSession)):
                row.state_expires_at = utcnow() - timedelta(seconds=1)
        again = requests.get(launch_url, allow_redirects=False, timeout=30)
        assert again.status_code == 302
        assert _pending(app) == 1


def test_a_proxy_without_proxy_fix_is_named_in_the_log(make_app, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="caredesk.ratelimit")
    from plugin import ratelimit

    ratelimit._proxy_warned.clear()
    app = make_app()
    client = app.test_client()
    client.get("/healthz")
    assert "CAREDESK_PROXY_FIX" not in caplog.text
    client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.7"})
    client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.8"})
    assert caplog.text.count("CAREDESK_PROXY_FIX is 0") == 1
