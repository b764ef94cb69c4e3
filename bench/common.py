"""What every benchmark shares: result rows, statistics, a CareDesk app served on loopback,
registering that app with a sandbox, and a browser-like EHR launch.

Benchmarks are not tests: nothing here asserts a target. They measure, print and record.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import os
import re
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


@dataclass(frozen=True)
class Target:
    """One line of issue 16's table: the bound on a figure. ``on`` says what is bounded:
    the ratio to the floor, the measured value itself, or the excess over the floor
    (measured - floor, for "overhead beyond the round trips")."""

    figure: str
    on: str  # "ratio" | "measured" | "excess"
    op: str  # "<=" | ">="
    limit: float
    unit: str = ""  # of `limit`, when `on` is "measured" or "excess"

    def text(self) -> str:
        if self.on == "ratio":
            return f"ratio {self.op} {self.limit:g}"
        what = "excess over the floor" if self.on == "excess" else "measured"
        return f"{what} {self.op} {self.limit:g} {self.unit}".strip()

    def met(self, figure: Figure) -> bool | None:
        if self.on == "ratio":
            value = figure.ratio
        elif self.on == "excess":
            value = None if figure.floor is None else figure.measured - figure.floor
        else:
            value = figure.measured
        if value is None:
            return None
        return value <= self.limit if self.op == "<=" else value >= self.limit


# Issue 16's table, in its order. A suite reports a `Figure` under one of these keys;
# a key no suite reported (not run, or failed) is printed as "not measured" with why.
TARGETS: dict[str, Target] = {
    "jobs.writeback": Target("survey write-back jobs, 1 worker, L = 0", "ratio", ">=", 0.5),
    "jobs.overhead": Target(
        "write-back overhead beyond the EHR round trips, 1 worker, L = 20 ms",
        "excess",
        "<=",
        15,
        "ms",
    ),
    "mapping.tolerant": Target("tolerant mapping (time)", "ratio", "<=", 3.0),
    "mapping.warnings": Target("mapping with R4B warnings (rate)", "ratio", ">=", 1.5),
    "load.context": Target("cached context API, 16 sessions (rate)", "ratio", ">=", 0.5),
    "load.context_p95": Target("cached context API, 16 sessions (p95)", "measured", "<=", 60, "ms"),
    "load.sidebar": Target("cached sidebar page, 16 sessions (rate)", "ratio", ">=", 0.5),
    "launch.warm": Target("launch to sidebar, warm, L = 100 ms", "ratio", "<=", 1.15),
    "launch.cold": Target("launch to sidebar, cold, L = 100 ms", "ratio", "<=", 1.25),
    "board.latency": Target("board, 300 appointments, L = 50 ms", "ratio", "<=", 1.3),
    "board.server": Target(
        "board, 300 appointments, server time at L = 0", "measured", "<=", 250, "ms"
    ),
}
# Which section measures which targets (for "not run" lines).
TARGET_SECTIONS = {"jobs": "3", "mapping": "2", "load": "5", "launch": "1", "board": "8"}


@dataclass
class Figure:
    """Today's value of one target: the measured figure, its floor (and what the floor
    is), in one unit; the ratio is measured / floor."""

    target: str  # a key of TARGETS
    measured: float
    unit: str
    floor: float | None
    floor_what: str
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.measured / self.floor if self.floor else None

    def to_json(self) -> dict[str, Any]:
        goal = TARGETS[self.target]
        return {
            "target": self.target,
            "figure": goal.figure,
            "measured": self.measured,
            "unit": self.unit,
            "floor": self.floor,
            "floor_what": self.floor_what,
            "ratio": self.ratio,
            "bound": goal.text(),
            "met": goal.met(self),
            "note": self.note,
        }


@dataclass
class Outcome:
    """What one benchmark hands back: table rows plus every raw figure for results.json,
    and the figures of issue 16's targets it measured."""

    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)


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


_PART_URL = re.compile(r'data-(parts|identity)-url="([^"]+)"')


def complete_page(browser: requests.Session, page: requests.Response) -> list[str]:
    """The rest of the sidebar as the clinician's browser gets it: a page sent before the
    EHR answered (``data-loading="1"``) is completed by its script, which fetches the
    identity (while it is still loading) and the sections at once (plugin/static/
    sidebar.js). Returns the paths fetched; raises when a part is not a 200."""
    text = page.text
    if 'data-loading="1"' not in text:
        return []
    urls = {kind: html.unescape(url) for kind, url in _PART_URL.findall(text)}
    wanted = [urls["parts"]]
    if "cd-id-loading" in text and "identity" in urls:
        wanted.insert(0, urls["identity"])
    base = page.url.split("/l/", 1)[0]
    failures: list[str] = []

    def fetch(path: str) -> None:
        with browser.get(base + path, timeout=HTTP_TIMEOUT) as part:
            _ = part.content
            if part.status_code != 200:
                failures.append(f"{path.split('?', 1)[0]}: {part.status_code}")

    threads = [threading.Thread(target=fetch, args=(path,)) for path in wanted[1:]]
    for t in threads:
        t.start()
    fetch(wanted[0])
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError("sidebar part failed: " + ", ".join(failures))
    return wanted


def browser_launch(sb: Any, patient: str = "pat-001") -> tuple[requests.Session, str, float]:
    """An EHR launch as a browser does it (following every redirect, keeping cookies),
    up to the complete sidebar: the page and, when it was sent before the EHR answered,
    the parts its script fetches (``complete_page``).

    The admin call that mints the launch token is the EHR's business and is not timed;
    the clock runs from the EHR's launch request to the last byte of the sidebar.
    Returns the browser session (caller closes it), the sidebar URL and the seconds taken.
    """
    import time

    url = sb.launch(CLIENT_ID, patient=patient)["url"]
    browser = requests.Session()
    started = time.perf_counter()
    page = browser.get(url, timeout=HTTP_TIMEOUT)
    if page.status_code != 200 or "/l/" not in page.url:
        browser.close()
        raise RuntimeError(f"launch ended at {page.status_code} (not the sidebar)")
    try:
        complete_page(browser, page)
    except RuntimeError:
        browser.close()
        raise
    elapsed = time.perf_counter() - started
    return browser, page.url, elapsed


def launch_id_of(sidebar_url: str) -> str:
    path = sidebar_url.split("/l/", 1)[1]
    return path.split("/", 1)[0]


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):  # a count (cases, exceptions, lost jobs)
        return f"{value:,}"
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
        f"{meta['cores']} cores, {meta['duration_s']:.0f} s{_load_text(meta)}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _load_text(meta: Mapping[str, Any]) -> str:
    load = meta.get("load_average")
    if not load:
        return ""
    before, after = load["before"], load["after"]
    return f", load average {before[0]:.1f} before / {after[0]:.1f} after (1 min)"


def targets_table(figures: list[Figure], why_missing: Mapping[str, str]) -> str:
    """Issue 16's table: every target, today's figure beside its floor, the ratio, the
    bound and whether it is met. ``why_missing`` says, per section number, why a target
    of that section has no figure (not run, or the error)."""
    header = ("figure", "measured", "floor", "ratio", "target", "verdict")
    by_key = {f.target: f for f in figures}
    lines = [
        "Targets (issue 16): ratio = measured / floor",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for key, goal in TARGETS.items():
        fig = by_key.get(key)
        if fig is None:
            section = TARGET_SECTIONS[key.split(".", 1)[0]]
            why = why_missing.get(section, "no figure reported")
            cells = (goal.figure, "not measured", "-", "-", goal.text(), why)
        else:
            met = goal.met(fig)
            verdict = "-" if met is None else ("met" if met else "MISSED")
            floor = (
                f"{fmt(fig.floor)} {fig.unit} ({fig.floor_what})"
                if fig.floor is not None
                else f"- ({fig.floor_what})"
            )
            cells = (
                goal.figure,
                f"{fmt(fig.measured)} {fig.unit}",
                floor,
                fmt(fig.ratio) if fig.ratio is not None else "-",
                goal.text(),
                verdict + (f"; {fig.note}" if fig.note else ""),
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
