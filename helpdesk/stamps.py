"""Change stamps: a token per (EHR registration, patient) that changes whenever a
committed write touched that patient's help-desk rows (tickets, tasks, calls, survey
invitations and answers, STOPs, inbound messages), so a process that built a patient's
sidebar context can tell, with one Redis read, whether the store still says the same.

Every write path goes through a SQLAlchemy session of ``Store.sessions`` (the web, the
jobs, the CLI), so the stamps are kept by session events, not by each service: after a
flush the touched rows' patients are noted (both sides of a changed ``patient_ref``), and
after the commit their stamps get a fresh random token. A row that names no patient (a
call, a survey answer) moves the stamp of the patient its owner names (a call's task, an
answer's invitation) when the session holds that owner; otherwise, and after an ORM bulk
UPDATE/DELETE on those tables, the ``all`` stamp moves, which every context also checks.
A write made without the ORM (a Core statement) names what it changed with ``note``:
rows, tables, or the patients themselves. Tokens are random, not counters: after a Redis
flush a stamp never comes back to a value a cached context was built under. A process
that reads a stamp not set yet sets one (``SET NX``), so a cached context always names a
token that any later write replaces.

Redis down: reads answer ``None`` (the caller reads the store instead of its cache) and a
renewal is logged and skipped (as is one of a rolled-back write: a renewal too many
only costs a rebuild); the caches holding stamps live 30 seconds at most.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable
from typing import Any, cast

import redis
from flask import Flask
from sqlalchemy import Table, event, inspect
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.util import identity_key

from helpdesk.kv import EXTENSION as KV_EXTENSION
from helpdesk.models import (
    CallAttempt,
    CareTask,
    ContactOptOut,
    InboundMessage,
    SurveyInvite,
    SurveyResponse,
    Ticket,
)

log = logging.getLogger("caredesk.stamps")

PREFIX = "caredesk:stamp:"
ALL = PREFIX + "all"
# A stamp nobody renewed for a day expires; the next reader sets a fresh token.
TTL_SECONDS = 86_400
# Rows whose registration and patient say whose context they change.
BY_PATIENT = (Ticket, CareTask, SurveyInvite, ContactOptOut, InboundMessage)
# Rows that do not name the patient: any change renews the stamp of everyone.
ANONYMOUS = (CallAttempt, SurveyResponse)
TRACKED_TABLES = frozenset(m.__table__.name for m in (*BY_PATIENT, *ANONYMOUS))  # type: ignore[attr-defined]
_PENDING = "caredesk.stamps.pending"
# An execution option: the statement's caller notes what it changed (``note``), so the
# bulk statement does not move everyone's stamp.
NOTED = "caredesk_stamps_noted"


def key(registration_id: int | None, patient_ref: str) -> str:
    # Hashed: keys list patients nowhere in Redis, even by reference.
    digest = hashlib.sha256(f"{registration_id}|{patient_ref}".encode()).hexdigest()[:32]
    return PREFIX + digest


def read(
    conn: redis.Redis | None, registration_id: int, patient_ref: str
) -> tuple[str, str] | None:
    """The patient's stamp and the ``all`` stamp; None when Redis does not answer."""
    if conn is None:
        return None
    keys = [key(registration_id, patient_ref), ALL]
    try:
        values: list[Any] = list(cast(list[Any], conn.mget(keys)))
        if any(v is None for v in values):
            with conn.pipeline(transaction=False) as pipe:
                for k, v in zip(keys, values, strict=True):
                    if v is None:
                        pipe.set(k, secrets.token_hex(8), nx=True, ex=TTL_SECONDS)
                pipe.mget(keys)
                values = list(pipe.execute()[-1])
    except redis.RedisError:
        log.warning("change stamps unavailable; reading the store", exc_info=True)
        return None
    if any(v is None for v in values):
        return None
    return (_text(values[0]), _text(values[1]))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def renew(conn: redis.Redis, keys: Iterable[str]) -> None:
    wanted = sorted(set(keys))
    if not wanted:
        return
    try:
        with conn.pipeline(transaction=False) as pipe:
            for k in wanted:
                pipe.set(k, secrets.token_hex(8), ex=TTL_SECONDS)
            pipe.execute()
    except redis.RedisError:
        log.warning("change stamps not renewed (Redis unavailable)", exc_info=True)


# An anonymous row's column that names the row which names its patient.
_OWNER = {SurveyResponse: ("invite_id", SurveyInvite), CallAttempt: ("task_id", CareTask)}


_OWNED = "caredesk.stamps.owned"


def owned(session: Session, row: object, registration_id: int, patient_ref: str | None) -> None:
    """Say which patient's rows ``row`` (one that names no patient) belongs to, for the
    session's flushes from now on: a handler that changes an answer whose invitation it
    read (the session holds an unchanged row only weakly: by the flush it may be gone)."""
    if patient_ref:
        found: dict[int, tuple[object, str]] = session.info.setdefault(_OWNED, {})
        found[id(row)] = (row, key(registration_id, patient_ref))


def _owner_keys(session: Session, obj: CallAttempt | SurveyResponse) -> list[str] | None:
    """The stamp of the patient an anonymous row is about: as ``owned`` said, or when the
    session holds the row that names them (loaded, so nothing is read in a flush); None
    otherwise."""
    said = session.info.get(_OWNED, {}).get(id(obj))
    if said is not None and said[0] is obj:
        return [said[1]]
    column, owner_model = _OWNER[type(obj)]
    loaded = instance_state(obj).dict
    if column not in loaded:
        return None
    owner = session.identity_map.get(identity_key(owner_model, loaded[column]))
    owner_loaded = instance_state(owner).dict if owner is not None else {}
    if "registration_id" not in owner_loaded or not owner_loaded.get("patient_ref"):
        return None
    return [key(owner_loaded["registration_id"], owner_loaded["patient_ref"])]


def _touched(obj: object, session: Session | None = None) -> list[str]:
    if isinstance(obj, ANONYMOUS):
        found = _owner_keys(session, obj) if session is not None else None
        return found if found is not None else [ALL]
    if not isinstance(obj, BY_PATIENT):
        return []
    state: Any = inspect(obj)
    refs: set[str | None] = set()
    regs: set[int | None] = set()
    for name, into in (("patient_ref", refs), ("registration_id", regs)):
        history = state.attrs[name].history
        into.update(history.added or ())
        into.update(history.deleted or ())
        into.update(history.unchanged or ())
        if not history.has_changes() and not history.unchanged:
            into.add(getattr(obj, name, None))
    return [key(reg, ref) for reg in regs for ref in refs if ref]


def note(
    session: Session,
    *rows: object,
    tables: Iterable[Table] = (),
    patients: Iterable[tuple[int, str | None]] = (),
) -> None:
    """What a flush of ``rows`` (and a bulk statement on ``tables``) would have noted, for
    a write made without one (a Core statement for rows the session holds, as
    ``jobs.tasks`` writes a job's claim and outcome): the stamps move after the commit.
    ``patients``: the (registration, patient) pairs a Core statement changed rows of, when
    the caller knows them (an answer's invitation): their stamps move, not everyone's."""
    pending: set[str] = session.info.setdefault(_PENDING, set())
    for row in rows:
        pending.update(_touched(row, session))
    if any(table.name in TRACKED_TABLES for table in tables):
        pending.add(ALL)
    pending.update(key(reg, ref) for reg, ref in patients if ref)


def install(sessions: sessionmaker[Session], conn: redis.Redis) -> None:
    """Keep the stamps for every session ``sessions`` makes."""

    @event.listens_for(sessions, "before_flush")
    def _note(session: Session, _context: Any, _instances: Any) -> None:
        pending: set[str] = session.info.setdefault(_PENDING, set())
        for obj in (*session.new, *session.dirty, *session.deleted):
            pending.update(_touched(obj, session))

    @event.listens_for(sessions, "do_orm_execute")
    def _bulk(state: ORMExecuteState) -> None:
        if not (state.is_update or state.is_delete or state.is_insert):
            return
        if state.execution_options.get(NOTED):
            return  # the caller notes the rows it changed (``note``)
        table = getattr(state.statement, "table", None)
        if getattr(table, "name", None) in TRACKED_TABLES:
            state.session.info.setdefault(_PENDING, set()).add(ALL)

    @event.listens_for(sessions, "after_commit")
    def _renew(session: Session) -> None:
        pending = session.info.pop(_PENDING, None)
        if pending:
            renew(conn, pending)


def init_app(app: Flask) -> None:
    """Stamps for the app's store, kept in the app's Redis (none without one: a one-shot
    command run without Redis leaves the caches to their 30-second lifetime)."""
    from helpdesk.db import get_store

    kv = app.extensions.get(KV_EXTENSION)
    if kv is not None:
        install(get_store(app).sessions, kv.connection)
