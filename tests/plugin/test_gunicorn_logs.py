"""The production web server's own log lines (gunicorn's access log, with the settings in
gunicorn.conf.py) carry no survey link token, no OAuth code or state, no launch value."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from helpdesk import migrate

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_gunicorn_access_log_hides_survey_tokens_codes_and_states(pg_url, redis_url) -> None:
    migrate.upgrade(pg_url)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    env.update(
        CAREDESK_ENV="production",
        CAREDESK_SECRET_KEY=secrets.token_urlsafe(48),
        CAREDESK_DATABASE_URL=pg_url,
        CAREDESK_REDIS_URL=redis_url,
        CAREDESK_BIND=f"127.0.0.1:{port}",
        CAREDESK_WEB_WORKERS="1",
        CAREDESK_WEB_THREADS="2",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    token, code, state, launch = (secrets.token_urlsafe(32) for _ in range(4))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                requests.get(f"{base}/healthz", timeout=10)
                break
            except requests.RequestException:
                assert server.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.2)
        assert requests.get(f"{base}/s/{token}", timeout=60).status_code == 404
        requests.post(f"{base}/s/{token}", data={"csrf": "x"}, timeout=60)
        requests.get(f"{base}/callback", params={"code": code, "state": state}, timeout=60)
        requests.get(f"{base}/launch", params={"iss": "http://x", "launch": launch}, timeout=60)
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert '"GET /s/[redacted]" 404' in output  # the access log is there, redacted
    assert '"GET /callback" 400' in output
    for value in (token, code, state, launch):
        assert value not in output


def test_a_worker_sets_its_start_up_objects_aside_from_full_collections() -> None:
    """gunicorn's post_worker_init hook freezes what the loaded app holds, so a full
    collection during a request does not walk ~150,000 start-up objects (issue 16)."""
    import gc
    import runpy

    conf = runpy.run_path(str(Path(__file__).resolve().parents[2] / "gunicorn.conf.py"))
    assert gc.get_freeze_count() == 0
    try:
        conf["post_worker_init"](object())
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
