"""The test harness itself: what keeps ~2,200 tests inside `make test`'s time."""

from __future__ import annotations

import os
import time

import pytest
from flask import Flask

from tests.conftest import RedisInUse, claim_redis_database, redis_lock_path
from tests.live import serve


def test_a_served_app_stops_within_a_poll_interval_not_half_a_second() -> None:
    """socketserver's default poll (0.5 s) made every test that serves an app wait up to
    half a second at its end; the best of three exits is well under that."""
    took = []
    for _ in range(3):
        with serve(Flask(__name__)):
            started = time.perf_counter()
        took.append(time.perf_counter() - started)
    assert min(took) < 0.25, took


def test_make_app_starts_from_the_migrated_template_without_migrating(
    make_app, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Each test's SQLite store is a copy of one migrated once per test process (Alembic
    on SQLite waits 0.3-0.7 s for the disk per store), and it is at the newest revision."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from helpdesk import migrate
    from helpdesk.db import get_store

    def no_migration(*args: object, **kwargs: object) -> None:
        raise AssertionError("make_app ran a migration for the test's SQLite store")

    monkeypatch.setattr(command, "upgrade", no_migration)
    app = make_app()
    url = app.config["DATABASE_URL"]
    with get_store(app).engine.connect() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    head = ScriptDirectory.from_config(migrate.alembic_config(url)).get_current_head()
    assert revision == head


def test_in_process_sandboxes_share_a_few_signing_keys_made_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An RSA-2048 key is 0.05-0.3 s of CPU, half of a sandbox's start: the tests' sandboxes
    take turns with KEY_POOL keys made once per process, and two running side by side
    publish different keys."""
    import requests
    from joserfc import jwk

    from sandbox import testing

    made = []
    generate = jwk.RSAKey.generate_key

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(1)
        return generate(*args, **kwargs)

    monkeypatch.setattr(jwk.RSAKey, "generate_key", counted)
    kids = []
    for _ in range(testing.KEY_POOL + 2):
        with testing.running_sandbox() as one, testing.running_sandbox() as two:
            pair = [
                requests.get(f"{sb.base_url}/auth/jwks", timeout=10).json()["keys"][0]["kid"]
                for sb in (one, two)
            ]
        assert pair[0] != pair[1]
        kids.extend(pair)
    assert len(made) <= testing.KEY_POOL
    assert len(set(kids)) == testing.KEY_POOL


def test_make_app_keeps_a_store_the_test_already_made(make_app, migrated_sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """Only a store that does not exist yet starts as the template: one a command has
    written to is migrated (a no-op) and kept."""
    from sqlalchemy import create_engine, text

    from helpdesk.db import get_store

    engine = create_engine(migrated_sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE written_by_a_command (note TEXT)"))
        conn.execute(text("INSERT INTO written_by_a_command VALUES ('kept')"))
    engine.dispose()
    app = make_app()
    assert app.config["DATABASE_URL"] == migrated_sqlite_url
    with get_store(app).engine.connect() as conn:
        notes = conn.execute(text("SELECT note FROM written_by_a_command")).scalars().all()
    assert notes == ["kept"]


def test_a_redis_database_held_by_a_test_session_cannot_be_taken_by_another() -> None:
    """Two test sessions on one machine would flush each other's Redis databases (the
    same ones, by xdist worker number): the second is stopped at its start, named why.
    flock locks belong to an open file, so a second open in this process stands in for
    another session's process."""
    url = f"redis://127.0.0.1:6379/harness-{os.getpid()}-{time.monotonic_ns()}"
    first = claim_redis_database(url)
    try:
        with pytest.raises(RedisInUse, match=rf"in use by another test session .*{os.getpid()}"):
            claim_redis_database(url)
    finally:
        first.close()
    # Released with its file (as when a session's process ends): the next session may.
    claim_redis_database(url).close()
    redis_lock_path(url).unlink()
