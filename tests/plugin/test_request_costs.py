"""What one cached sidebar request costs in round trips to the store and to Redis, counted
(never timed): each cut of issue 16 §3 has a test here that fails if it is undone.

A real EHR launch against the sandbox; then the context API (and the sidebar page) asked
again while the EHR's reads are cached, each request counted on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import redis
import requests
from flask import Flask
from sqlalchemy import event

from helpdesk.db import get_store
from sandbox.testing import running_sandbox
from tests.ehr import connect
from tests.live import serve

CLIENT_ID = "caredesk-costs"


@dataclass
class Counts:
    sql: list[str] = field(default_factory=list)
    redis: list[str] = field(default_factory=list)


@dataclass
class Sidebar:
    app: Flask
    launch_id: str
    cookie: str

    def client(self) -> Any:
        client = self.app.test_client()
        client.set_cookie("caredesk_browser", self.cookie)
        return client


@pytest.fixture
def sidebar(make_app) -> Iterator[Sidebar]:  # type: ignore[no-untyped-def]
    app = make_app()
    with serve(app) as url, running_sandbox() as sb:
        connect(app, sb, url, client_id=CLIENT_ID)
        browser = requests.Session()
        page = browser.get(sb.launch(CLIENT_ID, patient="pat-001")["url"], timeout=30)
        assert page.status_code == 200
        found = re.search(r"/l/([^/]+)/", page.url)
        assert found
        cookie = browser.cookies.get("caredesk_browser")
        assert cookie
        yield Sidebar(app, found.group(1), cookie)
        browser.close()


@pytest.fixture
def counts(sidebar: Sidebar, monkeypatch: pytest.MonkeyPatch) -> Iterator[Counts]:
    """Every SQL statement the app's engine sends and every Redis command any client of
    this process sends (the rate limiter has its own)."""
    seen = Counts()
    engine = get_store(sidebar.app).engine

    def statement(conn, cursor, sql, params, context, executemany) -> None:  # type: ignore[no-untyped-def]
        table = re.search(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", sql)
        seen.sql.append(f"{sql.split()[0]} {table.group(1) if table else '?'}")

    real = redis.Redis.execute_command

    def command(self: redis.Redis, *args: Any, **kw: Any) -> Any:
        seen.redis.append(str(args[0]))
        return real(self, *args, **kw)

    monkeypatch.setattr(redis.Redis, "execute_command", command)
    event.listen(engine, "before_cursor_execute", statement)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", statement)


def _one(sidebar: Sidebar, counts: Counts, path: str) -> Counts:
    client = sidebar.client()
    assert client.get(path + "?refresh=1").status_code == 200  # the EHR's reads cached
    assert client.get(path).status_code == 200
    counts.sql.clear()
    counts.redis.clear()
    response = client.get(path)
    assert response.status_code == 200
    return Counts(list(counts.sql), list(counts.redis))


def test_a_request_reads_its_launch_row_once(sidebar: Sidebar, counts: Counts) -> None:
    """The rate limiter's key (the launch's EHR) and the authentication share one read."""
    got = _one(sidebar, counts, f"/api/l/{sidebar.launch_id}/context")
    launch_reads = [s for s in got.sql if s == "SELECT launch_session"]
    assert len(launch_reads) == 1, got.sql


def test_a_cached_context_reads_no_store_rows_and_writes_its_audit_row(
    sidebar: Sidebar, counts: Counts
) -> None:
    """The launch row and the audit row: the patient's tickets, tasks, calls, surveys,
    STOPs and replies come from the context built before, while their change stamp holds."""
    got = _one(sidebar, counts, f"/api/l/{sidebar.launch_id}/context")
    assert got.sql == ["SELECT launch_session", "INSERT audit_event"]


def test_a_cached_sidebar_page_reads_no_store_rows_and_writes_one_audit_row(
    sidebar: Sidebar, counts: Counts
) -> None:
    """The page's open tickets and the channels a STOP closed come from the cached context,
    as its tasks do: no count and page of the ticket list (with an audit row of its own)
    and no read of the STOPs; the page's one audit row names the tickets it listed."""
    got = _one(sidebar, counts, f"/l/{sidebar.launch_id}/")
    assert got.sql == ["SELECT launch_session", "INSERT audit_event"]


def test_the_sidebar_pages_one_audit_row_names_the_tickets_it_listed(sidebar: Sidebar) -> None:
    """What the ticket list's own audit row said (which tickets were shown) is on the
    page's row, so "who saw ticket 7" is still answered; no separate ticket.list row."""
    from sqlalchemy import select

    from helpdesk.models import AuditEvent, EhrRegistration, Ticket
    from helpdesk.timeutil import utcnow

    with get_store(sidebar.app).session() as session:
        registration = session.scalars(select(EhrRegistration)).one()
        ticket = Ticket(
            registration_id=registration.id,
            patient_ref="Patient/pat-001",
            subject="Billing question",
            category="billing",
            due_at=utcnow() - timedelta(hours=1),
        )
        session.add(ticket)
        session.commit()
        ticket_id = ticket.id
    page = sidebar.client().get(f"/l/{sidebar.launch_id}/")
    assert page.status_code == 200 and f"#{ticket_id} Billing question" in page.text
    assert "overdue since" in page.text  # its due time read back from the context's row
    with get_store(sidebar.app).session() as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert rows[-1].action == "read" and rows[-1].detail["tickets"] == [ticket_id]
    assert not [r for r in rows if r.action == "ticket.list"]


def test_the_sidebar_lists_open_tickets_in_the_ticket_lists_order(sidebar: Sidebar) -> None:
    """The page's tickets come from the context's rows, which the store reads in the ticket
    list's order (``helpdesk.tickets.MOST_URGENT_FIRST``): due soonest, undated last,
    newest first among equals; closed ones are not listed."""
    from sqlalchemy import select

    from helpdesk.models import EhrRegistration, Ticket
    from helpdesk.timeutil import utcnow

    now = utcnow()
    dues = [None, now + timedelta(days=2), now + timedelta(hours=1), None, now + timedelta(days=2)]
    with get_store(sidebar.app).session() as session:
        registration = session.scalars(select(EhrRegistration)).one()
        tickets = [
            Ticket(
                registration_id=registration.id,
                patient_ref="Patient/pat-001",
                subject=f"Question {i}",
                category="billing",
                due_at=due,
            )
            for i, due in enumerate(dues)
        ]
        closed = Ticket(
            registration_id=registration.id,
            patient_ref="Patient/pat-001",
            subject="Closed one",
            category="billing",
            status="closed",
        )
        session.add_all([*tickets, closed])
        session.commit()
        ids = [t.id for t in tickets]
    page = sidebar.client().get(f"/l/{sidebar.launch_id}/").text
    shown = [int(i) for i in re.findall(r">#(\d+) Question", page)]
    assert shown == [ids[2], ids[4], ids[1], ids[3], ids[0]]
    assert "Closed one" not in page


def test_a_cached_context_writes_its_audit_row_without_the_orms_unit_of_work(
    sidebar: Sidebar, counts: Counts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit row of every read is one INSERT, committed before the answer, without an
    ORM object and a flush of the session (helpdesk.audit.audit)."""
    from sqlalchemy.orm import Session

    flushes: list[int] = []
    real_flush = Session.flush

    def flush(self: Session, objects: Any = None) -> None:
        if self.new or self.dirty or self.deleted:
            flushes.append(len(self.new))
        real_flush(self, objects)

    monkeypatch.setattr(Session, "flush", flush)
    got = _one(sidebar, counts, f"/api/l/{sidebar.launch_id}/context")
    assert got.sql == ["SELECT launch_session", "INSERT audit_event"]
    assert flushes == []


def test_rate_limit_headers_cost_no_redis_read_on_a_request_that_passes(
    sidebar: Sidebar, counts: Counts
) -> None:
    """Two limits per launch route (misses per address; requests per EHR), one Redis call
    each at most (no X-RateLimit headers: their read is made for a 429's Retry-After
    only). A request of a session this browser holds is no guess, so only the EHR's is
    counted; the other call is the patient's change stamps (one MGET)."""
    got = _one(sidebar, counts, f"/api/l/{sidebar.launch_id}/context")
    assert got.redis == ["EVALSHA", "MGET"], got.redis


def test_a_held_session_keeps_working_from_an_address_out_of_guesses(sidebar: Sidebar) -> None:
    """The misses limit slows guessing at launch ids; a clinician's own live session is no
    guess, so it is neither counted nor refused when the address (a clinic's one NAT) has
    used up its guesses, while the guesses themselves are refused as before."""
    sidebar.app.config["RATE_SESSION_MISSES_PER_ADDRESS"] = 2
    client = sidebar.client()
    assert client.get(f"/api/l/{sidebar.launch_id}/context").status_code == 200
    guesses = [client.get("/api/l/nobody/context").status_code for _ in range(3)]
    assert guesses == [401, 401, 429]
    assert client.get(f"/api/l/{sidebar.launch_id}/context").status_code == 200
    assert client.get(f"/l/{sidebar.launch_id}/").status_code == 200


@pytest.mark.parametrize("cookie", [None, "not-this-browsers-secret"])
def test_a_launch_id_without_its_browsers_cookie_is_still_a_guess(
    sidebar: Sidebar, cookie: str | None
) -> None:
    """Only the browser holding the launch is exempt: the real id from another browser (no
    cookie, or someone else's) is counted as a miss and refused after the limit."""
    sidebar.app.config["RATE_SESSION_MISSES_PER_ADDRESS"] = 2
    stranger = sidebar.app.test_client()
    if cookie is not None:
        stranger.set_cookie("caredesk_browser", cookie)
    codes = [stranger.get(f"/api/l/{sidebar.launch_id}/context").status_code for _ in range(3)]
    assert codes == [401, 401, 429]


def test_a_refused_request_still_says_when_to_retry(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(RATE_SESSION_MISSES_PER_ADDRESS=2)
    client = app.test_client()
    codes = [client.get("/api/l/nobody/context").status_code for _ in range(3)]
    assert codes == [401, 401, 429]
    refused = client.get("/api/l/nobody/context")
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0


def _subjects(client: Any, launch_id: str) -> list[str]:
    body = client.get(f"/api/l/{launch_id}/context").get_json()
    return [t["subject"] for t in body["tickets"]]


def test_a_write_from_another_process_shows_in_the_next_cached_context(
    sidebar: Sidebar, make_app
) -> None:  # type: ignore[no-untyped-def]
    """Another app on the same store and Redis (a second gunicorn worker, a job worker)
    writes; this process's cached context is not served again, for a row that names the
    patient (a ticket), a row that does not (a call on a task) and a bulk UPDATE."""
    from sqlalchemy import select, update

    from helpdesk.models import CallAttempt, CareTask, LaunchSession, Ticket

    client = sidebar.client()
    assert client.get(f"/api/l/{sidebar.launch_id}/context?refresh=1").status_code == 200
    assert _subjects(client, sidebar.launch_id) == []
    other = make_app(DATABASE_URL=sidebar.app.config["DATABASE_URL"])
    with get_store(other).session() as db:
        launch = db.get(LaunchSession, sidebar.launch_id)
        assert launch is not None
        db.add(
            Ticket(
                registration_id=launch.registration_id,
                patient_ref=launch.patient_ref,
                subject="Written elsewhere",
                status="open",
                priority="normal",
                category="general",
            )
        )
        task = CareTask(
            registration_id=launch.registration_id,
            patient_ref=launch.patient_ref,
            kind="follow-up",
            status="queued",
            payload={"reason": "call back"},
        )
        db.add(task)
    assert _subjects(client, sidebar.launch_id) == ["Written elsewhere"]
    body = client.get(f"/api/l/{sidebar.launch_id}/context").get_json()
    [row] = body["tasks"]
    assert (row["status"], row["calls"]) == ("queued", 0)
    with get_store(other).session() as db:
        task_id = db.scalars(select(CareTask.id)).one()
        db.add(CallAttempt(task_id=task_id, attempt=1, outcome="no-answer"))
    body = client.get(f"/api/l/{sidebar.launch_id}/context").get_json()
    assert body["tasks"][0]["calls"] == 1
    with get_store(other).session() as db:
        db.execute(update(CareTask).where(CareTask.id == task_id).values(status="running"))
    body = client.get(f"/api/l/{sidebar.launch_id}/context").get_json()
    assert body["tasks"][0]["status"] == "running"


def test_a_board_maps_each_appointment_and_patient_once_and_loads_its_token_once(
    make_app, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The filters' choices and the rows share one mapping of each appointment, the rows'
    names and the MRN and phone beside them one mapping of each patient, and the board's
    searches (pages, patients, coverages) share one read of the stored grant."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    from fhir_mappers import board as board_mapper
    from helpdesk import ehr
    from plugin import board_data

    mapped: list[object] = []
    loads: list[str] = []
    real_visits, real_visit = board_data.to_visits, board_mapper.to_visit
    real_load = ehr.DbTokenStore.load
    contacts: list[object] = []
    real_contact = board_data.to_contact

    def to_contact(patient: Any, **kw: Any) -> Any:
        contacts.append(patient.get("id"))
        return real_contact(patient, **kw)

    def to_visits(appointments: Any, **kw: Any) -> Any:
        mapped.extend(appointment.get("id") for appointment in appointments)
        return real_visits(appointments, **kw)

    def to_visit(appointment: Any, **kw: Any) -> Any:
        mapped.append(appointment.get("id"))
        return real_visit(appointment, **kw)

    def load(self: Any, grant_id: str) -> Any:
        loads.append(grant_id)
        return real_load(self, grant_id)

    monkeypatch.setattr(board_data, "to_visits", to_visits)
    monkeypatch.setattr(board_mapper, "to_visit", to_visit)
    monkeypatch.setattr(board_data, "to_contact", to_contact)
    monkeypatch.setattr(board_mapper, "to_contact", to_contact)
    monkeypatch.setattr(ehr.DbTokenStore, "load", load)
    app = make_app()
    day = dt.datetime.now(ZoneInfo("America/Chicago")).date().isoformat()
    with serve(app) as url, running_sandbox() as sb:
        connect(app, sb, url, client_id=CLIENT_ID)
        sb.generate_appointments(day, 120)
        browser = requests.Session()
        launch = sb.launch(CLIENT_ID, user="Practitioner/prac-scheduler-ortiz")
        page = browser.get(launch["url"], timeout=30)
        assert page.status_code == 200 and "/board" in page.url
        mapped.clear()
        loads.clear()
        contacts.clear()
        sb.clear_requests()
        board = browser.get(page.url.split("?")[0], params={"date": day}, timeout=60)
        assert board.status_code == 200
        fhir = [r for r in sb.requests() if r["path"].startswith("/fhir/")]
        browser.close()
    assert len(mapped) == len(set(mapped)) >= 120
    assert len(contacts) == len(set(contacts)) >= 10
    assert len(fhir) >= 3 and len(loads) == 1


def test_a_new_app_loads_the_templates_an_earlier_app_compiled(make_app, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A brand-new app (a cold launch) renders without compiling its templates again."""
    from flask import render_template
    from jinja2 import Environment

    compiled: list[str | None] = []
    real = Environment.compile

    def compile(self: Environment, source: Any, name: str | None = None, *a: Any, **kw: Any) -> Any:
        compiled.append(name)
        return real(self, source, name, *a, **kw)

    monkeypatch.setattr(Environment, "compile", compile)
    first, second = make_app(), make_app()
    with first.test_request_context():
        page = render_template("error.html", status=404, code="x", title="t", message="m")
    compiled.clear()  # (the first app compiled it, or an app built earlier in this process)
    with second.test_request_context():
        assert render_template("error.html", status=404, code="x", title="t", message="m") == page
    assert compiled == []


def test_a_callback_commits_the_claim_then_the_launch_with_its_audit_row(
    make_app, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Two commits: the state used up (before the code exchange, so it is single use),
    then the active launch together with its audit row."""
    from sqlalchemy import select

    from helpdesk.models import AuditEvent

    app = make_app()
    engine = get_store(app).engine
    commits: list[str] = []
    with serve(app) as url, running_sandbox() as sb:
        connect(app, sb, url, client_id=CLIENT_ID)
        browser = requests.Session()
        to_ehr = browser.get(
            sb.launch(CLIENT_ID, patient="pat-001")["url"], allow_redirects=False, timeout=30
        )
        callback = sb.approve(to_ehr.headers["Location"])

        def commit(conn: Any) -> None:
            commits.append("commit")

        event.listen(engine, "commit", commit)
        try:
            done = browser.get(callback, allow_redirects=False, timeout=30)
        finally:
            event.remove(engine, "commit", commit)
        browser.close()
    assert done.status_code == 303
    assert len(commits) == 2
    with get_store(app).session() as db:
        assert db.scalars(select(AuditEvent.action)).all() == ["launch"]


def test_the_identity_part_reads_no_rows_it_does_not_show(sidebar: Sidebar, counts: Counts) -> None:
    """The identity part (name, date of birth, MRN: what a page sent before the EHR
    answered fetches first) shows no tickets, tasks or channels: it reads none of them,
    and its audit row names no ticket it did not list."""
    from sqlalchemy import select

    from helpdesk.models import AuditEvent, EhrRegistration, Ticket

    with get_store(sidebar.app).session() as session:
        registration = session.scalars(select(EhrRegistration)).one()
        session.add(
            Ticket(
                registration_id=registration.id,
                patient_ref="Patient/pat-001",
                subject="Billing question",
                category="billing",
            )
        )
        session.commit()
    got = _one(sidebar, counts, f"/l/{sidebar.launch_id}/part/identity")
    assert got.sql == ["SELECT launch_session", "INSERT audit_event"]
    with get_store(sidebar.app).session() as session:
        row = session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1)).one()
    assert row.detail == {"view": "sidebar", "part": "identity", "tickets": []}
