"""5. Sidebar under load: gunicorn with 2 workers, N launched sessions hitting it at once.

CareDesk runs as in production (``gunicorn -w 2``, the repository's gunicorn.conf.py,
PostgreSQL store, Redis), the sandbox as its own process at L = 0, and N real EHR
launches (one browser session each, different patients) are made first. Then N threads
of this process, one per session, request as fast as they are answered for a fixed time:

- ``/api/l/<id>/context`` (cached: the 30 s per-process context cache; each session is
  warmed on both workers first, and an entry older than 30 s is fetched again);
- ``/l/<id>/`` the sidebar page (cached), and ``/l/<id>/?refresh=1`` (uncached: three
  FHIR reads per request). The JSON API has no cache bypass, so the uncached figure is
  the sidebar page's.

All on loopback; the load generator shares the machine's cores with gunicorn, the sandbox,
Redis and PostgreSQL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    REDIS_URL,
    ROOT,
    SECRET,
    Outcome,
    Row,
    browser_launch,
    close_app,
    launch_id_of,
    median,
    new_app,
    percentile,
    postgres_store,
    register_public_client,
)

WORKERS = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        try:
            with requests.get(f"{base}/healthz", timeout=2) as resp:
                if resp.status_code == 200:
                    return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError("gunicorn did not answer /healthz")


def _hammer(
    sessions: list[tuple[requests.Session, str]], seconds: float
) -> tuple[list[float], int, float]:
    """Each session in its own thread, back to back for `seconds`.
    Returns (latencies of 200s, non-200 count, wall seconds)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start_gate = threading.Event()
    deadline = [0.0]

    def loop(http: requests.Session, url: str) -> None:
        mine: list[float] = []
        bad = 0
        start_gate.wait()
        while time.perf_counter() < deadline[0]:
            t0 = time.perf_counter()
            with http.get(url, timeout=30) as resp:
                ok = resp.status_code == 200
                _ = resp.content
            if ok:
                mine.append(time.perf_counter() - t0)
            else:
                bad += 1
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=loop, args=s, daemon=True) for s in sessions]
    for t in threads:
        t.start()
    began = time.perf_counter()
    deadline[0] = began + seconds
    start_gate.set()
    for t in threads:
        t.join(timeout=seconds + 60)
    return latencies, errors[0], time.perf_counter() - began


def run(*, quick: bool) -> Outcome:
    from helpdesk import migrate
    from sandbox.testing import running_sandbox

    n_sessions = 8 if quick else 16
    seconds = 4.0 if quick else 10.0
    out = Outcome()
    data: dict[str, Any] = {
        "gunicorn_workers": WORKERS,
        "gunicorn_threads": int(os.environ.get("CAREDESK_WEB_THREADS", "4")),
        "sessions": n_sessions,
        "seconds_per_mode": seconds,
        "sandbox_latency_ms": 0,
        "modes": {},
    }
    out.data = data
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with (
        postgres_store() as db_url,
        running_sandbox(in_process=False) as sb,
        tempfile.TemporaryDirectory(prefix="bench-gunicorn-") as tmp,
    ):
        migrate.upgrade(db_url)
        app = new_app(db_url)
        try:
            register_public_client(app, sb, base)
        finally:
            close_app(app)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
        env.update(
            CAREDESK_ENV="test",
            CAREDESK_SECRET_KEY=SECRET,
            CAREDESK_DATABASE_URL=db_url,
            CAREDESK_REDIS_URL=REDIS_URL,
            CAREDESK_LOG_LEVEL="WARNING",
            CAREDESK_WEB_THREADS=str(data["gunicorn_threads"]),
        )
        log_path = Path(tmp) / "gunicorn.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(  # noqa: S603 - gunicorn from our venv, fixed arguments
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "-w",
                    str(WORKERS),
                    "-b",
                    f"127.0.0.1:{port}",
                    "wsgi:app",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            sessions: list[requests.Session] = []
            try:
                _wait_ready(base, proc)
                launches = []
                for i in range(n_sessions):
                    browser, url, _ = browser_launch(sb, patient=f"pat-{(i % 8) + 1:03d}")
                    sessions.append(browser)
                    launches.append((browser, launch_id_of(url)))
                modes = {
                    "api_context_cached": "{base}/api/l/{lid}/context",
                    "sidebar_cached": "{base}/l/{lid}/",
                    "sidebar_uncached": "{base}/l/{lid}/?refresh=1",
                }
                for mode, pattern in modes.items():
                    targets = [(b, pattern.format(base=base, lid=lid)) for b, lid in launches]
                    if "uncached" not in mode:
                        for b, url in targets:  # fill both workers' caches
                            for _ in range(4):
                                b.get(url, timeout=30).close()
                    before = sb.stats()["fhir_requests"]
                    lat, errors, wall = _hammer(targets, seconds)
                    fhir = sb.stats()["fhir_requests"] - before
                    if not lat:
                        data["modes"][mode] = {"errors": errors, "ok": 0}
                        continue
                    data["modes"][mode] = {
                        "ok": len(lat),
                        "errors": errors,
                        "wall_s": wall,
                        "requests_per_s": len(lat) / wall,
                        "p50_ms": percentile(lat, 50) * 1000,
                        "p95_ms": percentile(lat, 95) * 1000,
                        "p99_ms": percentile(lat, 99) * 1000,
                        "median_ms": median(lat) * 1000,
                        "ehr_fhir_requests": fhir,
                        "ehr_fhir_requests_per_request": fhir / len(lat),
                    }
            finally:
                for s in sessions:
                    s.close()
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    labels = {
        "api_context_cached": "GET /api/l/<id>/context, cached",
        "sidebar_cached": "GET /l/<id>/ sidebar, cached",
        "sidebar_uncached": "GET /l/<id>/?refresh=1 sidebar, uncached",
    }
    for mode, label in labels.items():
        m = data["modes"].get(mode, {})
        figure = f"{label}, {n_sessions} sessions"
        if not m.get("ok"):
            out.rows.append(
                Row(
                    "5 load",
                    figure,
                    None,
                    "req/s",
                    note=f"not measured: {m.get('errors', '?')} errors",
                )
            )
            continue
        out.rows.append(
            Row(
                "5 load",
                figure,
                m["requests_per_s"],
                "req/s",
                note=(
                    f"p50 {m['p50_ms']:.0f} / p95 {m['p95_ms']:.0f} / p99 {m['p99_ms']:.0f} ms; "
                    f"{m['ok']:,} ok, {m['errors']} errors in {m['wall_s']:.0f} s; "
                    f"{m['ehr_fhir_requests_per_request']:.2f} FHIR requests per request"
                ),
            )
        )
    return out
