"""SQLAlchemy engine and sessions, flaskr-style: one session per request on ``g``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from flask import Flask, current_app, g
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

EXTENSION = "caredesk.db"
# SQLSTATE 42P01: PostgreSQL's undefined table (SQLite says "no such table" in words).
_NO_TABLE = "42P01"
_CANNOT_CONNECT = ("connection refused", "could not connect", "connection failed", "unable to open")


class StoreProblem(NamedTuple):
    """A store that is not ready, as the operator must hear it: ``not_migrated`` (no
    CareDesk tables, or an older schema: ``caredesk db upgrade``) or ``unreachable``;
    ``detail`` is the database's own first line (never the URL, which may hold a
    password)."""

    kind: str
    detail: str


def store_problem(exc: BaseException) -> StoreProblem | None:
    """What is wrong with the store, when ``exc`` says it is not ready; None for any other
    error (a bug keeps its traceback)."""
    if not isinstance(exc, DBAPIError):
        return None
    orig = exc.orig
    words = str(orig).strip()
    detail = words.splitlines()[0] if words else type(orig).__name__
    if getattr(orig, "sqlstate", None) == _NO_TABLE or "no such table" in detail:
        return StoreProblem("not_migrated", detail)
    lowered = detail.lower()
    if exc.connection_invalidated or any(w in lowered for w in _CANNOT_CONNECT):
        return StoreProblem("unreachable", detail)
    return None


class Store:
    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: a database error's message (and so a logged traceback) must not
        # carry row values such as a ticket's free text, which may hold patient details.
        self.engine: Engine = create_engine(url, hide_parameters=True)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            # Instead of pool_pre_ping, which pinged at every checkout (one round trip
            # per request, a fifth of a cached sidebar request's): a connection is
            # pinged when it sat idle in the pool, as HikariCP's aliveBypassWindow does.
            event.listen(self.engine, "checkin", _note_checkin)
            event.listen(self.engine, "checkout", _ping_if_idle)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def revision(self) -> str | None:
        """The schema revision Alembic recorded in the store; None when it has no
        CareDesk tables (never migrated)."""
        try:
            with self.engine.connect() as conn:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError as exc:
            problem = store_problem(exc)
            if problem is not None and problem.kind == "not_migrated":
                return None
            raise

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session for work outside a request (jobs, CLI): commit on success."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


# A connection returned to the pool less than this long ago is used without a ping: it
# answered a moment ago. One idle longer (a database restart, a proxy's idle timeout) is
# pinged, and replaced if the ping fails.
PING_AFTER_IDLE_SECONDS = 2.0


def _note_checkin(_dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
    if record is not None:
        record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection, record, _proxy) -> None:  # type: ignore[no-untyped-def]
    returned = record.info.get("checked_in_at")
    if returned is not None and time.monotonic() - returned < PING_AFTER_IDLE_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        # The ping's transaction ends here: the connection is handed out idle, as an
        # unpinged one is (a job's claim switches it to autocommit, which psycopg refuses
        # inside a transaction).
        dbapi_connection.rollback()
    except Exception as exc:  # noqa: BLE001 - any failure: the pool makes a new connection
        raise DisconnectionError("the pooled connection did not answer a ping") from exc


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    # WAL lets the web process read while a worker writes; foreign keys are off by default.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION] = Store(app.config["DATABASE_URL"])
    app.teardown_appcontext(close_db)


def get_store(app: Flask | None = None) -> Store:
    store: Store = (app or current_app).extensions[EXTENSION]
    return store


def get_db() -> Session:
    if "db" not in g:
        g.db = get_store().sessions()
    session: Session = g.db
    return session


def close_db(_exc: BaseException | None = None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()
