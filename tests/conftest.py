"""Shared fixtures: the real PostgreSQL and Redis, and per-test apps (flaskr style).

PostgreSQL isolation: each test gets its own schema (search_path), dropped afterwards.
Redis isolation: tests use database 13 and flush it before and after each test that asks;
each pytest-xdist process its own pair of databases, all of them locked by the session
for as long as it runs, so a second test session on the same machine stops at once
instead of flushing this one's jobs.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import redis
from flask import Flask
from sqlalchemy import create_engine, text

# The mappers run as Python in the suite, and in every process it starts: coverage and the
# call-count tests see their lines and calls. tests/mappers/test_native.py starts the
# native build (scripts/build_native.py) on purpose and compares the two.
# `CAREDESK_NATIVE_MAPPERS=1 pytest tests/plugin tests/browser ...` runs the app's tests
# on the build instead (the call-count tests of tests/mappers then fail: they count
# Python calls).
os.environ.setdefault("CAREDESK_NATIVE_MAPPERS", "0")

PG_BASE = os.environ.get("CAREDESK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _redis_for_worker(url: str, worker: str) -> str:
    """pytest-xdist runs `make test` in several processes: each gets its own pair of
    Redis databases (the test's and, one below it, the survey tests'), counting down from
    the configured one (13/12 for gw0, 10/9 for gw1, 7/6 for gw2, ...; the bench keeps 11),
    so one flushdb never hits another's keys."""
    if not worker.startswith("gw"):
        return url
    base, db = url.rsplit("/", 1)
    index = int(db) - 3 * int(worker[2:])
    if index < 1:
        raise RuntimeError(f"too many xdist workers for Redis databases below {url}")
    return f"{base}/{index}"


def _survey_url(url: str) -> str:
    """The survey tests' database: the one below the test's."""
    base, db = url.rsplit("/", 1)
    return f"{base}/{int(db) - 1}"


# The configured database (gw0's); the other processes' count down from it.
TEST_REDIS = os.environ.get("CAREDESK_TEST_REDIS", "redis://127.0.0.1:6379/13")
REDIS_URL = _redis_for_worker(TEST_REDIS, os.environ.get("PYTEST_XDIST_WORKER", ""))
SURVEY_REDIS_URL = _survey_url(REDIS_URL)


class RedisInUse(RuntimeError):
    """Another test session on this machine holds one of this session's Redis databases."""


def redis_lock_path(url: str) -> Path:
    """The lock file of the Redis database at ``url`` (one per database and machine)."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", url.split("://", 1)[-1])
    return Path(tempfile.gettempdir()) / f"caredesk-tests-redis-{name}.lock"


def claim_redis_database(url: str) -> IO[str]:
    """Lock the Redis database at ``url`` for this process, for as long as it runs (the
    returned file must stay open). Two `make test` sessions on one machine pick the same
    databases (by xdist worker number) and flush them around their tests, so each would
    wipe the other's jobs, and tests fail far from the cause (a sweeper "timing out" on a
    job whose keys were flushed). With the lock, the second session stops at once and says
    why. An advisory ``flock``: the kernel drops it when the process ends, however it ends.
    """
    handle = redis_lock_path(url).open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RedisInUse(
            f"Redis database {url} is in use by another test session on this machine "
            f"(process {holder}). Run one test session at a time, or point this one at "
            "other databases with CAREDESK_TEST_REDIS (its number and the ones below it)."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


# The lock files a session holds (``pytest_configure``), closed at its end.
_HELD_REDIS = pytest.StashKey[list[IO[str]]]()


def pytest_configure(config: pytest.Config) -> None:
    """The session's Redis databases are its own while it runs: the process that starts
    the session (xdist's controller, or the only process) locks every database its test
    processes will use, so a second session on this machine stops before any test, with
    the reason, instead of flushing this one's jobs."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a test process of a session whose controller holds its databases
    processes = int(getattr(config.option, "numprocesses", None) or 0)
    urls = []
    for worker in [f"gw{i}" for i in range(processes)] or [""]:
        test_url = _redis_for_worker(TEST_REDIS, worker)
        urls += [test_url, _survey_url(test_url)]
    try:
        held = [claim_redis_database(url) for url in urls]
    except RedisInUse as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_HELD_REDIS] = held


def pytest_unconfigure(config: pytest.Config) -> None:
    for handle in config.stash.get(_HELD_REDIS, []):
        handle.close()


STORE_BACKENDS: set[str] = set()
STORE_ID = re.compile(r"[\[-](sqlite|postgresql)(?=[\]-])")


@pytest.fixture
def pg_url() -> Iterator[str]:
    schema = "t_" + secrets.token_hex(6)
    admin = create_engine(PG_BASE)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'caredesk.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Runs a store test once on SQLite and once on the real PostgreSQL."""
    STORE_BACKENDS.add(request.param)
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def redis_url() -> Iterator[str]:
    conn = redis.Redis.from_url(REDIS_URL)
    conn.flushdb()
    try:
        yield REDIS_URL
    finally:
        conn.flushdb()
        conn.close()


def dispose(app: Flask) -> None:
    """Close what an app holds open: pooled HTTP sessions, database pool, Redis sockets."""
    app.extensions["caredesk.ehr"].close()
    warmer = app.extensions.get("caredesk.warmer")
    if warmer is not None:
        warmer.close()
    app.extensions["caredesk.db"].engine.dispose()
    kv = app.extensions.get("caredesk.redis")
    if kv is not None:
        kv.connection.close()


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store migrated to the newest schema once per test process.

    Alembic on SQLite commits (and syncs to disk) statement by statement: 0.3-0.7 s of
    waiting per store, on ~430 tests; a copy of the file is the same store in 0.2 ms.
    tests/plugin/test_store.py still migrates fresh stores up and down on both backends
    and checks the migrations against the models.
    """
    from helpdesk import migrate

    path = tmp_path_factory.mktemp("store-template") / "caredesk.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def copy_store(template: Path, sqlite_url: str) -> str:
    """``sqlite_url``'s file made a copy of the migrated ``template``; the url."""
    shutil.copyfile(template, sqlite_url.removeprefix("sqlite:///"))
    return sqlite_url


@pytest.fixture
def migrated_sqlite_url(sqlite_url: str, store_template: Path) -> str:
    """The test's SQLite store at the newest schema (for a command run against it)."""
    return copy_store(store_template, sqlite_url)


@pytest.fixture
def make_app(
    sqlite_url: str, redis_url: str, store_template: Path
) -> Iterator[Callable[..., Flask]]:
    """The one app factory of the tests (flaskr's ``app`` fixture with arguments).

    ``make_app(**config)`` is ``create_app`` in the test environment on a migrated store
    (SQLite unless ``DATABASE_URL`` is given) and the test Redis; every app made is
    disposed after the test. The test's SQLite store, if nothing has made it yet, starts as
    a copy of ``store_template``; any other store is migrated.
    """
    from helpdesk import migrate
    from plugin import create_app

    made: list[Flask] = []
    migrated: set[str] = set()

    def make(**config: Any) -> Flask:
        settings: dict[str, Any] = {
            "ENV": "test",
            "DATABASE_URL": sqlite_url,
            "REDIS_URL": redis_url,
            "VIEWER_TIMEZONE": "America/Chicago",
        }
        settings.update(config)
        url = settings["DATABASE_URL"]
        fresh = url == sqlite_url and not Path(url.removeprefix("sqlite:///")).exists()
        if fresh:
            copy_store(store_template, url)
        app = create_app(settings)
        if not fresh and url not in migrated:
            migrate.upgrade(url)
        migrated.add(url)
        made.append(app)
        return app

    yield make
    for app in made:
        dispose(app)


@pytest.fixture
def connected_ehr(make_app: Callable[..., Flask]) -> Iterator[Callable[..., tuple[Flask, Any]]]:
    """``connected_ehr(client_id, app=None, **connect_options)``: the app (``make_app()``
    unless given) served over real HTTP on loopback, an in-process sandbox EHR, each
    registered with the other (``tests.ehr.connect``); returns ``(app, sandbox)``. Both
    stop when the test ends."""
    from contextlib import ExitStack

    from sandbox.testing import running_sandbox
    from tests.ehr import connect
    from tests.live import serve

    with ExitStack() as stack:

        def start(client_id: str, *, app: Flask | None = None, **options: Any) -> tuple[Flask, Any]:
            app = app if app is not None else make_app()
            url = stack.enter_context(serve(app))
            sb = stack.enter_context(running_sandbox())
            connect(app, sb, url, client_id=client_id, **options)
            return app, sb

        yield start


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """Debian's Chromium through Playwright, one per test run (never `playwright install`:
    there is nothing to download here, and the sync API allows one driver at a time)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError("Debian's Chromium is missing: `make browser` installs it")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    # Read from the passed tests' ids ([sqlite] / [postgresql]): under pytest-xdist the
    # fixtures ran in the worker processes, not in this one.
    ran = set(STORE_BACKENDS)
    for report in terminalreporter.stats.get("passed", []):
        ran.update(STORE_ID.findall(getattr(report, "nodeid", "")))
    if ran:
        terminalreporter.write_line("store tests ran on: " + ", ".join(sorted(ran)), bold=True)
