"""Automation rules from configuration: routing by keyword and category, the after-hours
acknowledgement, escalation of an overdue ticket (each run recorded on the ticket, once);
the read-only rules page; and the insurance outreach sweep (once per coverage period, the
reply landing on an insurance ticket)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from helpdesk import automation
from helpdesk.db import get_store
from helpdesk.models import RuleRun, Ticket
from helpdesk.tickets import open_ticket
from jobs.inbound import escalate_overdue
from jobs.outreach import sweep_registration
from tests.ehr import connect_backend
from tests.live import serve
from tests.messaging.conftest import (
    CONFIG,
    SCOPES,
    browser,
    decrypt,
    drain,
    inbound,
    outbound,
    post_sms,
    registration_id,
    rows,
    sms_form,
    tasks,
    tickets,
)

MARGARET = "+1 312-555-0104"
ROUTING = {
    "clinic_hours": "Mon-Sun 00:00-23:59",
    "rules": [
        {
            "name": "insurance-words",
            "when": {"keywords": ["insurance", "seguro"]},
            "route": {"category": "insurance", "assignee": "front-desk"},
        },
        {"name": "billing-office", "when": {"category": "billing"}, "route": {"assignee": "biz"}},
        {"name": "after-hours", "acknowledge": "outside-hours"},
        {"name": "overdue", "escalate": {"overdue_minutes": 0}},
    ],
}


def _app(make_app, sandbox, rules: dict) -> object:
    app = make_app(**{**CONFIG, "AUTOMATION_RULES": json.dumps(rules)})
    connect_backend(app, sandbox, client_id="caredesk-rules", scopes=SCOPES, slug="clinic")
    return app


def test_routing_by_keyword_is_applied_and_recorded_on_the_ticket(make_app, sandbox) -> None:
    app = _app(make_app, sandbox, ROUTING)
    with serve(app) as url:
        post_sms(url, sms_form(MARGARET, "My insurance changed in January"))
        drain(app)
    [ticket] = tickets(app)
    assert (ticket.category, ticket.assignee) == ("insurance", "front-desk")
    [run] = rows(app, RuleRun)
    assert (run.ticket_id, run.rule, run.action) == (ticket.id, "insurance-words", "route")
    assert "category clinical-question → insurance" in run.outcome
    assert "assigned to front-desk" in run.outcome
    # Inside clinic hours: no acknowledgement.
    assert outbound(app, "auto-acknowledge") == []


def test_outside_clinic_hours_a_new_conversation_is_acknowledged_once(make_app, sandbox) -> None:
    closed = {**ROUTING, "clinic_hours": "Mon-Mon 00:00-00:00"}  # never open
    app = _app(make_app, sandbox, closed)
    with serve(app) as url:
        post_sms(url, sms_form(MARGARET, "Is the clinic open Saturday?"))
        drain(app)
        post_sms(url, sms_form(MARGARET, "Never mind, found it."))
        drain(app)
    [ack] = outbound(app, "auto-acknowledge")
    assert ack.channel == "sms" and decrypt(app, ack.to_enc) == "+13125550104"
    assert "outside our hours (Mon-Mon 00:00-00:00)" in decrypt(app, ack.body_enc)
    [ticket] = tickets(app)
    assert ack.thread_id is not None
    runs = rows(app, RuleRun, RuleRun.action == "acknowledge")
    assert [(r.ticket_id, r.outcome) for r in runs] == [
        (ticket.id, "acknowledged by sms (outside clinic hours)")
    ]


def test_an_overdue_ticket_is_escalated_once_onto_its_assignees_work_list(
    make_app, sandbox
) -> None:
    app = _app(make_app, sandbox, ROUTING)
    reg = registration_id(app)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    with app.app_context(), get_store(app).session() as session:
        late = open_ticket(
            session,
            registration_id=reg,
            patient_ref="Patient/pat-001",
            subject="Refill request",
            category="clinical-question",
            assignee="Practitioner/prac-clinician-lee",
            now=long_ago,
        )
        open_ticket(
            session,
            registration_id=reg,
            patient_ref="Patient/pat-002",
            subject="Fresh",
            category="billing",
        )
        late_id = late.id
    assert escalate_overdue(app) == 1
    assert escalate_overdue(app) == 0  # once per ticket and rule
    [ticket] = rows(app, Ticket, Ticket.id == late_id)
    assert ticket.priority == "high"
    [item] = tasks(app, "follow-up")
    assert item.status == "waiting" and item.assignee == "Practitioner/prac-clinician-lee"
    assert item.payload["ticket_id"] == late_id
    [run] = rows(app, RuleRun)
    assert run.outcome == ("priority normal → high; on Practitioner/prac-clinician-lee's work list")


def test_the_rules_page_shows_the_configured_rules_read_only(make_app, sandbox) -> None:
    app = _app(make_app, sandbox, ROUTING)
    with serve(app) as url:
        desk = browser(app, url)
        page = desk.page("/automation")
        assert page.status_code == 200
        for name in ("insurance-words", "billing-office", "after-hours", "overdue"):
            assert name in page.text
        assert "Mon-Sun 00:00-23:59" in page.text
        assert desk.form("/automation", {}).status_code == 405


def test_the_shipped_rules_load_and_bad_rules_name_the_setting() -> None:
    shipped = automation.load_rules({})
    assert {r.action for r in shipped.rules} == {"route", "acknowledge", "escalate"}
    assert shipped.hours is not None and shipped.hours.text == "Mon-Fri 08:00-17:00"
    bad = {"rules": [{"name": "x", "when": {"category": "nope"}, "route": {}}]}
    with pytest.raises(Exception, match="CAREDESK_AUTOMATION_RULES"):
        automation.load_rules({"AUTOMATION_RULES": json.dumps(bad)})


def test_clinic_hours_are_read_in_the_clinic_zone() -> None:
    from zoneinfo import ZoneInfo

    hours = automation.parse_hours("Mon-Fri 08:00-17:00; Sat 09:00-12:00")
    chicago = ZoneInfo("America/Chicago")
    friday_4pm = dt.datetime(2026, 12, 4, 16, 0, tzinfo=chicago)
    friday_6pm = dt.datetime(2026, 12, 4, 18, 0, tzinfo=chicago)
    saturday_10 = dt.datetime(2026, 12, 5, 10, 0, tzinfo=chicago)
    sunday_10 = dt.datetime(2026, 12, 6, 10, 0, tzinfo=chicago)
    assert hours.open_at(friday_4pm.astimezone(dt.UTC), chicago)
    assert not hours.open_at(friday_6pm.astimezone(dt.UTC), chicago)
    assert hours.open_at(saturday_10, chicago)
    assert not hours.open_at(sunday_10, chicago)


def test_insurance_outreach_once_per_coverage_period_and_the_reply_lands_on_a_ticket(
    msg_app, base_url, sandbox
) -> None:
    today = (
        dt.datetime.now(dt.UTC)
        .astimezone(__import__("zoneinfo").ZoneInfo("America/Chicago"))
        .date()
    )
    sandbox.put_resource(
        {
            "resourceType": "Coverage",
            "id": "cov-ending",
            "status": "active",
            "beneficiary": {"reference": "Patient/pat-002"},
            "payor": [{"display": "Blue Prairie Health"}],
            "period": {
                "start": (today - dt.timedelta(days=300)).isoformat(),
                "end": (today + dt.timedelta(days=10)).isoformat(),
            },
        }
    )
    reg = registration_id(msg_app)
    sweep_registration(msg_app, reg)
    mine = [
        t
        for t in tasks(msg_app, "insurance-outreach")
        if t.payload["coverage_ref"] == "Coverage/cov-ending"
    ]
    assert len(mine) == 1
    again = sweep_registration(msg_app, reg)
    assert again.queued == 0  # the same period: nothing new
    drain(msg_app)
    sent = [m for m in outbound(msg_app, "insurance-outreach") if m.task_id == mine[0].id]
    assert len(sent) == 1 and sent[0].language == "es"
    assert "su seguro médico termina el" in decrypt(msg_app, sent[0].body_enc)
    # A renewal (a new period end) is a new period: one more message.
    sandbox.put_resource(
        {
            "resourceType": "Coverage",
            "id": "cov-ending",
            "status": "active",
            "beneficiary": {"reference": "Patient/pat-002"},
            "payor": [{"display": "Blue Prairie Health"}],
            "period": {"end": (today + dt.timedelta(days=20)).isoformat()},
        }
    )
    assert sweep_registration(msg_app, reg).queued == 1
    # The patient answers the outreach text: an insurance ticket with both in its thread.
    post_sms(base_url, sms_form("+1 312-555-0120", "Tengo tarjeta nueva de Aetna"))
    drain(msg_app)
    [ticket] = tickets(msg_app)
    assert ticket.category == "insurance" and ticket.patient_ref == "Patient/pat-002"
    assert "reply to insurance outreach" in ticket.subject
    [message] = inbound(msg_app)
    answered = [m for m in outbound(msg_app, "insurance-outreach") if m.thread_id]
    assert [m.thread_id for m in answered] == [message.thread_id]
