"""CareDesk's own data follows the launch's patient (helpdesk.access), through every route.

Two clinicians launch CareDesk from two charts of one EHR whose grant is `patient/` only:
A from pat-001's chart, B from pat-002's. Whatever A's browser asks for, B's tickets,
notes, tasks, survey answers and messages are not found by id, absent from every list
and not changeable, and nothing A posts about pat-002 is created or sent.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import (
    CareTask,
    EhrRegistration,
    LaunchSession,
    OutboundMessage,
    SurveyInvite,
    SurveyResponse,
    Ticket,
    TicketNote,
)
from helpdesk.timeutil import utcnow
from sandbox.testing import running_sandbox
from tests.ehr import connect
from tests.live import serve

CLIENT_ID = "caredesk-lock"
# What a chart launch is granted by an EHR that gives patient-level access only.
PATIENT_ONLY = (
    "launch launch/patient openid fhirUser "
    "patient/Patient.rs patient/Appointment.rs patient/Coverage.rs"
)
A, B = "Patient/pat-001", "Patient/pat-002"


@dataclass
class Tab:
    """One browser tab on one launch."""

    base: str
    launch_id: str
    http: requests.Session
    csrf: str

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"X-CSRF-Token": self.csrf, **kw.pop("headers", {})}
        url = f"{self.base}/api/l/{self.launch_id}{path}"
        return self.http.request(method, url, headers=headers, timeout=30, **kw)

    def page(self, path: str, **kw: Any) -> requests.Response:
        url = f"{self.base}/l/{self.launch_id}{path}"
        return self.http.get(url, timeout=30, allow_redirects=False, **kw)

    def form(self, path: str, data: dict[str, str]) -> requests.Response:
        url = f"{self.base}/l/{self.launch_id}{path}"
        body = {"csrf_token": self.csrf, **data}
        return self.http.post(url, data=body, timeout=30, allow_redirects=False)


def _chart_launch(sb: Any, base: str, patient: str) -> Tab:
    http = requests.Session()
    page = http.get(sb.launch(CLIENT_ID, patient=patient)["url"], timeout=30)
    assert page.status_code == 200, page.text[:500]
    launch_id = re.search(r"/l/([^/]+)/", page.url).group(1)  # type: ignore[union-attr]
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    return Tab(base, launch_id, http, csrf)


def _row_launch(app: Any, base: str, *, scope: str) -> Tab:
    """A launch without patient context, stored as after a callback with ``scope``."""
    from plugin.csrf import csrf_token

    secret, launch_id = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    with app.app_context(), get_store(app).session() as db:
        reg_id = db.scalars(select(EhrRegistration.id)).one()
        row = LaunchSession(
            id=launch_id,
            registration_id=reg_id,
            status="active",
            browser_hash=hashlib.sha256(secret.encode()).hexdigest(),
            fhir_user="Practitioner/prac-scheduler-ortiz",
            scope_granted=scope,
            context={},
        )
        db.add(row)
        db.flush()
        token = csrf_token(row)
    http = requests.Session()
    http.headers["Cookie"] = f"caredesk_browser={secret}"
    return Tab(base, launch_id, http, token)


@dataclass
class World:
    app: Any
    base: str
    a: Tab
    b: Tab
    b_ticket: int
    b_task: int
    b_subject: str
    b_invite: str


def _survey_rows(app: Any, reg_id: int, patient: str, comment: str) -> str:
    invite_id = uuid.uuid4().hex
    now = utcnow()
    with get_store(app).session() as db:
        db.add(
            SurveyInvite(
                id=invite_id,
                registration_id=reg_id,
                patient_ref=patient,
                status="answered",
                sent_at=now,
                visit_at=now,
                expires_at=now,
                answered_at=now,
                clinic_name="Main St Clinic",
            )
        )
        db.flush()
        db.add(
            SurveyResponse(
                invite_id=invite_id,
                answers={"csat": "2"},
                csat=2,
                comment=comment,
                writeback_status="not-supported",
            )
        )
        vault = get_vault(app)
        db.add(
            OutboundMessage(
                registration_id=reg_id,
                patient_ref=patient,
                channel="sms",
                adapter="outbox",
                template="survey-invite",
                language="en",
                to_enc=vault.encrypt(f"+1555010{patient[-1]}"),
                body_enc=vault.encrypt(f"Message for {patient}"),
            )
        )
    return invite_id


def _counts(app: Any) -> tuple[int, ...]:
    with get_store(app).session() as db:
        return tuple(
            int(db.scalar(select(func.count()).select_from(model)) or 0)
            for model in (Ticket, TicketNote, CareTask, SurveyInvite, OutboundMessage)
        )


@pytest.fixture
def world(make_app: Any) -> Iterator[World]:
    app = make_app()
    with serve(app) as base, running_sandbox() as sb:
        connect(app, sb, base, client_id=CLIENT_ID, scopes=PATIENT_ONLY)
        a = _chart_launch(sb, base, "pat-001")
        b = _chart_launch(sb, base, "pat-002")
        subject = "Pat-002 billing question " + secrets.token_hex(4)
        ticket = b.api("POST", "/tickets", json={"subject": subject, "category": "billing"})
        assert ticket.status_code == 201, ticket.text
        assert b.api("POST", f"/tickets/{ticket.json()['id']}/notes", json={"body": "n"}).ok
        task = b.api("POST", "/tasks", json={"kind": "follow-up", "reason": "Call back"})
        assert task.status_code == 201, task.text
        with get_store(app).session() as db:
            reg_id = db.scalars(select(EhrRegistration.id)).one()
        _survey_rows(app, reg_id, A, "pat-001 comment")
        invite_b = _survey_rows(app, reg_id, B, "pat-002 comment")
        yield World(app, base, a, b, ticket.json()["id"], task.json()["id"], subject, invite_b)


def test_another_patients_rows_are_not_found_by_id_and_not_changeable(world: World) -> None:
    a, tid, task = world.a, world.b_ticket, world.b_task
    assert a.api("GET", f"/tickets/{tid}").status_code == 404
    assert a.api("PATCH", f"/tickets/{tid}", json={"status": "closed"}).status_code == 404
    assert a.api("POST", f"/tickets/{tid}/notes", json={"body": "x"}).status_code == 404
    assert a.page(f"/tickets/{tid}").status_code == 404
    assert a.form(f"/tickets/{tid}", {"status": "closed"}).status_code == 404
    assert a.form(f"/tickets/{tid}/notes", {"body": "x"}).status_code == 404
    assert a.form(f"/tasks/{task}/retry", {}).status_code == 404
    assert a.form(f"/tasks/{task}/complete", {"note": "done"}).status_code == 404
    # B's own launch still reads and changes them: the rows are there, only out of A's reach.
    assert world.b.api("GET", f"/tickets/{tid}").json()["status"] == "open"
    assert world.b.api("GET", f"/tickets/{tid}").json()["notes"][0]["body"] == "n"


def test_another_patients_rows_are_absent_from_every_list(world: World) -> None:
    a, subject = world.a, world.b_subject
    assert a.api("GET", "/tickets").json()["total"] == 0
    assert subject not in a.page("/tickets").text
    assert a.api("GET", "/tasks").json()["items"] == []
    assert a.page("/worklist", params={"assignee": ""}).json()["tasks"] == []
    status = a.page("/jobs/status").json()
    assert status["by_state"] == {} and status["failures"] == [] and status["rq"] == {}
    assert "There are no tasks." in a.page("/jobs").text
    outbox = a.page("/jobs/outbox").text
    assert "Message for Patient/pat-001" in outbox and "pat-002" not in outbox
    responses = world.a.http.get(
        f"{world.base}/reports/csat/responses.csv",
        params={"launch": a.launch_id, "status": "not-supported"},
        timeout=30,
    ).text
    assert "pat-001 comment" in responses
    assert "pat-002" not in responses and world.b_invite not in responses
    report = world.a.http.get(
        f"{world.base}/reports/csat.csv", params={"launch": a.launch_id}, timeout=30
    ).text
    assert report.splitlines()[1].split(",")[3:5] == ["1", "1"]  # A's one invitation only
    sidebar = a.page("/").text
    assert subject not in sidebar and "pat-002 comment" not in sidebar


def test_naming_another_patient_is_forbidden_and_creates_nothing(world: World) -> None:
    a, app = world.a, world.app
    before = _counts(app)
    # Lists filtered by another patient: 403, not an empty list that hides the refusal.
    assert a.api("GET", "/tickets", params={"patient": B}).status_code == 403
    assert a.api("GET", "/tasks", params={"patient": B}).status_code == 403
    # B's page and the board (which lists other patients) are closed to a chart launch.
    assert a.page(f"/patient/{B}").status_code == 403
    assert a.page("/board").status_code == 403
    assert a.api("GET", "/board").status_code == 403
    ticket = {"subject": "For B", "category": "billing", "patient": B}
    assert a.api("POST", "/tickets", json=ticket).status_code == 403
    assert a.form("/tickets", ticket).status_code == 403
    follow_up = {"kind": "follow-up", "reason": "Call", "patient": B}
    assert a.api("POST", "/tasks", json=follow_up).status_code == 403
    assert a.form("/actions/task", follow_up).status_code == 403
    referral = {"kind": "referral", "reason": "Knee", "specialty": "ortho", "patient": B}
    assert a.api("POST", "/tasks", json=referral).status_code == 403
    assert a.form("/actions/task", referral).status_code == 403
    # A survey for B: named outright, or B's visit under A's own patient.
    b_visit = "Appointment/appt-pat-002-past"
    assert a.form("/actions/survey", {"appointment": b_visit, "patient": B}).status_code == 403
    # B's visit under A's own patient: not one of A's visits, so refused at the field.
    assert a.form("/actions/survey", {"appointment": b_visit}).status_code == 422
    assert _counts(app) == before
    # The patient's own visit still goes through.
    own = a.form("/actions/survey", {"appointment": "Appointment/appt-pat-001-past"})
    assert own.status_code == 303
    with get_store(app).session() as db:
        invites = db.scalars(select(CareTask).where(CareTask.kind == "survey-invite")).all()
        assert [(t.patient_ref, t.payload["appointment_ref"]) for t in invites] == [
            (A, "Appointment/appt-pat-001-past")
        ]


def test_the_sidebar_of_a_chart_launch_links_to_no_other_patient(world: World) -> None:
    html = world.a.page("/").text
    hrefs = re.findall(r'href="([^"]+)"', html)
    assert not [h for h in hrefs if "/board" in h or "/patient/" in h]
    assert not [p for p in re.findall(r"Patient/[\w.-]+", html) if p != A]


def test_a_launch_without_patient_sees_what_its_grant_allows(world: World) -> None:
    patient_only = _row_launch(world.app, world.base, scope="openid fhirUser patient/*.rs")
    assert patient_only.api("GET", "/tickets").json()["total"] == 0
    assert patient_only.api("GET", f"/tickets/{world.b_ticket}").status_code == 404
    assert patient_only.api("GET", "/tickets", params={"patient": B}).status_code == 403
    named = {"subject": "x", "category": "billing", "patient": B}
    assert patient_only.api("POST", "/tickets", json=named).status_code == 403
    assert patient_only.page(f"/patient/{B}").status_code == 403
    everyone = _row_launch(world.app, world.base, scope="openid fhirUser user/Patient.rs")
    listed = everyone.api("GET", "/tickets").json()
    assert [t["patient_ref"] for t in listed["items"]] == [B]
    assert everyone.api("GET", f"/tickets/{world.b_ticket}").status_code == 200
