"""The store's connection pool on PostgreSQL: a connection back from a request a moment
ago is used without a ping (a round trip per request otherwise), one that sat idle is
pinged first, and one whose server side died is replaced before anyone uses it."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text

from helpdesk import db
from helpdesk.db import Store


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = psycopg.Cursor.execute

    def execute(self: Any, query: Any, *args: Any, **kw: Any) -> Any:
        if query == "SELECT 1":
            seen.append(query)
        return real(self, query, *args, **kw)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return seen


def _backend_pid(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_back_a_moment_ago_is_not_pinged(
    pg_url: str, pings: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(pg_url)
    try:
        first = _backend_pid(store)  # a new connection: pinged once
        assert [_backend_pid(store) for _ in range(3)] == [first] * 3
        assert len(pings) == 1
        monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
        assert _backend_pid(store) == first
        assert len(pings) == 2
    finally:
        store.engine.dispose()


def test_an_idle_connection_whose_server_died_is_replaced_before_use(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(pg_url)
    admin = create_engine(pg_url)
    try:
        dead = _backend_pid(store)
        with admin.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dead})
        monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
        assert _backend_pid(store) != dead
    finally:
        store.engine.dispose()
        admin.dispose()
