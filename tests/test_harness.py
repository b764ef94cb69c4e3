"""The test harness itself: what keeps ~2,200 tests inside `make test`'s time."""

from __future__ import annotations

import time

from flask import Flask

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
