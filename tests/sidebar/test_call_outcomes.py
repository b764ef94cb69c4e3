"""The rules on task rows behind My calls and "change channel" (helpdesk.tasks), and the
one failure ticket per follow-up (jobs.followup), on the store itself (SQLite and the
real PostgreSQL), with time frozen at a non-UTC offset."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from helpdesk import registry
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import AuditEvent, CallAttempt, CareTask, LaunchSession, Ticket
from helpdesk.tasks import (
    CallRefused,
    ChannelRefused,
    change_channel,
    channel_options,
    finish_call,
    log_call,
    open_calls,
    survey_route,
)
from helpdesk.timeutil import utcnow
from jobs.followup import open_failure_ticket

CHICAGO = ZoneInfo("America/Chicago")
NOW = datetime(2026, 11, 30, 22, 13, tzinfo=CHICAGO)  # already Dec 1st in UTC


def _patient(**extra) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return {
        "resourceType": "Patient",
        "id": "p1",
        "telecom": [
            {"system": "phone", "use": "mobile", "value": "+1 (312) 555-0113", "rank": 1},
            {"system": "email", "value": "pat@example.com"},
        ],
        **extra,
    }


def _restricted(*codes: str) -> dict:  # type: ignore[type-arg]
    url = "https://caredesk.example/fhir/StructureDefinition/contact-restriction"
    return _patient(extension=[{"url": url, "valueCode": code} for code in codes])


@pytest.fixture
def store(make_app, store_url):  # type: ignore[no-untyped-def]
    app = make_app(DATABASE_URL=store_url)
    with app.app_context(), get_store(app).session() as db:
        reg = registry.upsert(
            db,
            get_vault(app),
            slug="ehr",
            iss="https://ehr.example/fhir",
            client_id="c",
            client_type="public",
            scopes="launch openid",
        )
        db.flush()
        for lid, patient in (("chart-a", "Patient/p1"), ("chart-b", "Patient/p2"), ("desk", None)):
            db.add(
                LaunchSession(
                    id=lid,
                    registration_id=reg.id,
                    status="active",
                    patient_ref=patient,
                    fhir_user="Practitioner/me",
                    # As a callback stores it: the desk's grant reaches every patient.
                    scope_granted="launch openid user/*.rs" if patient is None else None,
                    context={},
                )
            )
        db.commit()
    with app.app_context():
        yield app


def _follow_up(app, patient: str = "Patient/p1", channel: str = "phone") -> int:  # type: ignore[no-untyped-def]
    with get_store(app).session() as db:
        reg = db.scalar(select(LaunchSession.registration_id).where(LaunchSession.id == "desk"))
        task = CareTask(
            registration_id=reg,
            kind="follow-up",
            patient_ref=patient,
            status="waiting",
            payload={"reason": "Check the inhaler", "channel": channel},
            due_at=utcnow(),
            assignee="Practitioner/me",
        )
        db.add(task)
        db.flush()
        return int(task.id)


def _launch(db, lid: str) -> LaunchSession:  # type: ignore[no-untyped-def]
    launch = db.get(LaunchSession, lid)
    assert launch is not None
    return launch


@pytest.mark.parametrize(
    ("outcomes", "status", "note"),
    [
        (["reached"], "done", "Reached the patient."),
        (["wrong-number"], "done", "Wrong number: correct the patient's phone in the EHR."),
        (["no-answer", "voicemail"], "waiting", "Left voicemail on call 2 of 3."),
        (["no-answer", "voicemail", "no-answer"], "done", "Not reached after 3 calls."),
        (["no-answer", "reached"], "done", "Reached the patient."),
    ],
)
def test_call_outcomes_end_or_reschedule_the_follow_up(store, outcomes, status, note) -> None:
    task_id = _follow_up(store)
    with time_machine.travel(NOW, tick=False):
        next_due = NOW + timedelta(hours=11)
        for outcome in outcomes:
            with get_store(store).session() as db:
                log_call(db, _launch(db, "chart-a"), task_id, outcome=outcome, next_due=next_due)
        with get_store(store).session() as db:
            task = db.get(CareTask, task_id)
            assert (task.status, task.status_note) == (status, note)
            calls = db.scalars(select(CallAttempt).where(CallAttempt.task_id == task_id)).all()
            assert [c.attempt for c in calls] == list(range(1, len(outcomes) + 1))
            if status == "waiting":
                assert task.due_at == next_due
                assert calls[-1].next_due_at == next_due
            else:
                assert task.finished_at is not None and calls[-1].next_due_at is None


def test_a_logged_call_commits_once_with_its_audit_row(store) -> None:
    """The change and its audit row are one transaction in the caller's session, so a
    change is never stored without its audit row (it was two commits, the audit row's in
    the request's session even when the caller had its own)."""
    task_id = _follow_up(store)
    commits: list[Session] = []

    def count(session: Session) -> None:
        commits.append(session)

    event.listen(Session, "after_commit", count)
    try:
        with get_store(store).session() as db:
            log_call(db, _launch(db, "chart-a"), task_id, outcome="reached")
            assert commits == [db]
    finally:
        event.remove(Session, "after_commit", count)
    with get_store(store).session() as db:
        row = db.scalars(select(AuditEvent).where(AuditEvent.action == "call.log")).one()
        assert (row.entity, row.patient_ref, row.actor, row.detail) == (
            f"CareTask/{task_id}",
            "Patient/p1",
            "Practitioner/me",
            {"outcome": "reached", "attempt": 1},
        )


def test_an_unanswered_call_needs_a_next_attempt_in_the_future(store) -> None:
    task_id = _follow_up(store)
    with time_machine.travel(NOW, tick=False), get_store(store).session() as db:
        launch = _launch(db, "chart-a")
        with pytest.raises(CallRefused, match="Say when") as missing:
            log_call(db, launch, task_id, outcome="no-answer")
        assert missing.value.field == "next_due"
        with pytest.raises(CallRefused, match="future"):
            log_call(db, launch, task_id, outcome="voicemail", next_due=NOW - timedelta(hours=1))
        with pytest.raises(CallRefused, match="how the call went"):
            log_call(db, launch, task_id, outcome="busy")


def test_calls_of_another_patient_are_invisible_to_a_chart_launch(store) -> None:
    task_id = _follow_up(store, patient="Patient/p2")
    with get_store(store).session() as db:
        assert [t.id for t in open_calls(db, _launch(db, "chart-a"))] == []
        assert [t.id for t in open_calls(db, _launch(db, "chart-b"))] == [task_id]
        assert [t.id for t in open_calls(db, _launch(db, "desk"))] == [task_id]
        with pytest.raises(Exception, match="No such task"):
            log_call(db, _launch(db, "chart-a"), task_id, outcome="reached")
        finish_call(db, _launch(db, "chart-b"), task_id)
        assert db.get(CareTask, task_id).status == "done"
        with pytest.raises(CallRefused, match="finished already"):
            finish_call(db, _launch(db, "chart-b"), task_id)


@pytest.mark.parametrize(
    ("patient", "closed"),
    [
        (_patient(), {}),
        (_restricted("no-sms"), {"sms": "asked not to be texted"}),
        (_restricted("no-contact"), {"phone": "called", "sms": "texted", "email": "emailed"}),
        (
            {
                "resourceType": "Patient",
                "telecom": [{"system": "phone", "use": "home", "value": "1"}],
            },
            {"sms": "No mobile number", "email": "No email address"},
        ),
        (
            {"resourceType": "Patient"},
            {"phone": "No phone number", "sms": "No mobile", "email": "No email"},
        ),
        (
            _patient(deceasedBoolean=True),
            {"phone": "deceased", "sms": "deceased", "email": "deceased"},
        ),
        (None, {}),  # not read (EHR down): nothing ruled out; the job checks when it sends
    ],
)
def test_channel_options_follow_the_patient(patient, closed) -> None:  # type: ignore[no-untyped-def]
    options = {o.channel: o for o in channel_options(patient, now=NOW)}
    assert set(options) == {"phone", "sms", "email"}
    for channel, option in options.items():
        assert option.allowed == (channel not in closed), (channel, option)
        if channel in closed:
            assert closed[channel] in (option.reason or "")


def test_survey_route_names_the_channel_or_why_not() -> None:
    route = survey_route(_patient(), now=NOW)
    assert (route.channel, route.to) == ("sms", "···0113")
    assert survey_route(_restricted("no-sms"), now=NOW).to == "p···@example.com"
    none = survey_route({"resourceType": "Patient"}, now=NOW)
    assert none.channel is None and none.refusal == "Not sent: no mobile number or email on file."
    assert "asked not to get surveys" in (
        survey_route(_restricted("no-survey"), now=NOW).refusal or ""
    )


def test_change_channel_only_for_a_lasting_failure_and_a_receivable_channel(store) -> None:
    task_id = _follow_up(store, channel="sms")
    with get_store(store).session() as db:
        task = db.get(CareTask, task_id)
        task.status, task.last_error = "failed", "gave up after 5 attempts: provider down"
    with get_store(store).session() as db:
        with pytest.raises(ChannelRefused, match="could not be sent"):
            change_channel(db, _launch(db, "chart-a"), task_id, channel="email", patient=_patient())
        db.get(CareTask, task_id).last_error = "the number cannot receive texts"
        db.flush()
        with pytest.raises(ChannelRefused, match="asked not to be emailed"):
            change_channel(
                db,
                _launch(db, "chart-a"),
                task_id,
                channel="email",
                patient=_restricted("no-email"),
            )
        task = change_channel(
            db, _launch(db, "chart-a"), task_id, channel="email", patient=_patient()
        )
        assert (task.status, task.payload["channel"], task.last_error) == ("queued", "email", None)


def test_a_follow_up_that_fails_again_opens_no_second_ticket(store) -> None:
    task_id = _follow_up(store, channel="sms")
    for _ in range(3):
        with get_store(store).session() as db:
            task = db.get(CareTask, task_id)
            task.status, task.last_error = "failed", "no reachable channel"
            open_failure_ticket(db, store, task)
    with get_store(store).session() as db:
        tickets = db.scalars(select(Ticket)).all()
        assert len(tickets) == 1 and tickets[0].priority == "high"
        tickets[0].status = "resolved"
    with get_store(store).session() as db:
        open_failure_ticket(db, store, db.get(CareTask, task_id))
    with get_store(store).session() as db:
        assert len(db.scalars(select(Ticket)).all()) == 2  # the first one was resolved


def test_a_logged_call_moves_its_patients_change_stamp_not_everyones(store, monkeypatch) -> None:
    """A call's row names no patient, but its task, which the session holds, does: the
    commit moves that patient's stamp only, so every other patient's cached sidebar stays
    valid (it moved the stamp of everyone, issue 16 §3)."""
    from helpdesk import stamps

    task_id = _follow_up(store)
    renewed: list[set[str]] = []
    monkeypatch.setattr(stamps, "renew", lambda _conn, keys: renewed.append(set(keys)))
    with get_store(store).session() as db:
        launch = _launch(db, "chart-a")
        log_call(db, launch, task_id, outcome="no-answer", next_due=utcnow() + timedelta(hours=3))
        patient = stamps.key(launch.registration_id, "Patient/p1")
    assert renewed == [{patient}]
