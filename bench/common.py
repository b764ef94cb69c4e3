"""What every benchmark shares: result rows, statistics, a CareDesk app served on loopback,
registering that app with a sandbox, and a browser-like EHR launch.

Benchmarks are not tests: nothing here asserts a target. They measure, print and record.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests
from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

ROOT = Path(__file__).resolve().parent.parent
# A Redis database of the benchmarks' own: tests use 13; only this one is ever flushed.
REDIS_URL = os.environ.get("CAREDESK_BENCH_REDIS", "redis://127.0.0.1:6379/11")
PG_BASE = os.environ.get("CAREDESK_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SECRET = "bench-secret-key-" + "0123456789abcdef" * 2
CLIENT_ID = "caredesk-bench"
HTTP_TIMEOUT = 60


# --- results --------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the printed table. `measured` and `floor` carry their unit in `unit`."""

    section: str
    figure: str
    measured: float | None
    unit: str
    floor: float | None = None
    ratio: float | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "figure": self.figure,
            "measured": self.measured,
            "unit": self.unit,
            "floor": self.floor,
            "ratio": self.ratio,
            "note": self.note,
        }


@dataclass
class Outcome:
    """What one benchmark hands back: table rows plus every raw figure for results.json."""

    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def not_measured(section: str, why: str) -> Row:
    return Row(section, "not measured", None, "", note=why)


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of nothing")
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Iterable[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of nothing")
    pos = (len(ordered) - 1) * pct / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def git_revision() -> dict[str, Any]:
    git = shutil.which("git")
    if git is None:
        return {"commit": None, "dirty": None}
    rev = subprocess.run(  # noqa: S603 - fixed arguments, our own repository
        [git, "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    status = subprocess.run(  # noqa: S603 - fixed arguments, our own repository
        [git, "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return {"commit": rev.stdout.strip() or None, "dirty": bool(status.stdout.strip())}


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- Redis and the store -----------------------------------------------------------------


def flush_bench_redis() -> None:
    conn = redis.Redis.from_url(REDIS_URL)
    try:
        conn.flushdb()
    finally:
        conn.close()


@contextmanager
def sqlite_store() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="caredesk-bench-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'caredesk.db'}"


@contextmanager
def postgres_store() -> Iterator[str]:
    """A schema of its own in the local PostgreSQL, dropped afterwards."""
    from sqlalchemy import create_engine, text

    schema = "bench_" + secrets.token_hex(6)
    admin = create_engine(PG_BASE)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def new_app(database_url: str, **extra: Any) -> Flask:
    """A CareDesk app as production builds it."""
    from plugin import create_app

    app = create_app(
        {
            "ENV": "test",
            "SECRET_KEY": SECRET,
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_URL,
            "LOG_LEVEL": "WARNING",
            **extra,
        }
    )
    return app


def close_app(app: Flask) -> None:
    ehr = app.extensions.get("caredesk.ehr")
    if ehr is not None:
        ehr.close()
    app.extensions["caredesk.db"].engine.dispose()
    queue = app.extensions.get("caredesk.queue")
    if queue is not None and getattr(queue, "connection", None) is not None:
        queue.connection.close()


def register_public_client(app: Flask, sb: Any, base_url: str) -> None:
    """Register CareDesk with the sandbox (public client) and the sandbox with CareDesk."""
    from helpdesk import registry
    from helpdesk.crypto import get_vault
    from helpdesk.db import get_store

    with app.app_context(), get_store(app).session() as session:
        registry.upsert(
            session,
            get_vault(app),
            slug="sb",
            iss=sb.fhir_base,
            client_id=CLIENT_ID,
            frame_origins=[sb.base_url],
        )
    sb.register_client(
        {
            "client_id": CLIENT_ID,
            "type": "public",
            "redirect_uris": [f"{base_url}/callback"],
            "launch_url": f"{base_url}/launch",
            "scopes": registry.DEFAULT_SCOPES,
        }
    )


# --- serving CareDesk in this process --------------------------------------------------------


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


class SwappableApp:
    """A WSGI app whose target can be replaced between requests: a "cold" sample gets a
    brand-new CareDesk app (empty discovery cache) behind the same address, so the
    redirect_uri registered at the EHR stays valid."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self.app(environ, start_response)


@contextmanager
def serve(wsgi: Callable[..., Any]) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, wsgi, threaded=True, request_handler=_Quiet)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def browser_launch(sb: Any, patient: str = "pat-001") -> tuple[requests.Session, str, float]:
    """An EHR launch as a browser does it (following every redirect, keeping cookies).

    The admin call that mints the launch token is the EHR's business and is not timed;
    the clock runs from the EHR's launch request to the complete sidebar HTML.
    Returns the browser session (caller closes it), the sidebar URL and the seconds taken.
    """
    import time

    url = sb.launch(CLIENT_ID, patient=patient)["url"]
    browser = requests.Session()
    started = time.perf_counter()
    page = browser.get(url, timeout=HTTP_TIMEOUT)
    elapsed = time.perf_counter() - started
    if page.status_code != 200 or "/l/" not in page.url:
        browser.close()
        raise RuntimeError(f"launch ended at {page.status_code} (not the sidebar)")
    return browser, page.url, elapsed


def launch_id_of(sidebar_url: str) -> str:
    path = sidebar_url.split("/l/", 1)[1]
    return path.split("/", 1)[0]


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def table(rows: list[Row], meta: Mapping[str, Any]) -> str:
    header = ("section", "figure", "measured", "floor", "ratio", "note")
    body = [
        (
            r.section,
            r.figure,
            f"{fmt(r.measured)} {r.unit}".strip() if r.measured is not None else "-",
            f"{fmt(r.floor)} {r.unit}".strip() if r.floor is not None else "-",
            fmt(r.ratio) if r.ratio is not None else "-",
            r.note,
        )
        for r in rows
    ]
    lines = [
        f"CareDesk benchmarks ({meta['mode']}), {meta['generated_at']}, "
        f"commit {str(meta['git']['commit'])[:12]}{' (dirty)' if meta['git']['dirty'] else ''}, "
        f"{meta['cores']} cores, {meta['duration_s']:.0f} s",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)
