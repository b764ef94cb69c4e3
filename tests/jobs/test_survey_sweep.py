"""The cron sweep that turns fulfilled visits into survey invitations, once each."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import requests
from sqlalchemy import select

from helpdesk.db import get_store
from helpdesk.models import CareTask
from helpdesk.timeutil import utcnow
from jobs.survey_sweep import sweep_registration
from tests.jobs.conftest import register_backend, sandbox_token


def _fulfilled_in_window(sb, now: datetime) -> set[str]:  # type: ignore[no-untyped-def]
    """What the sweep should find, asked of the sandbox independently."""
    token = sandbox_token(sb, "system/Appointment.rs")
    params = [
        ("status", "fulfilled"),
        ("date", "ge" + (now - timedelta(days=2)).isoformat()),
        ("date", "le" + now.isoformat()),
        ("_count", "500"),
    ]
    bundle = requests.get(
        f"{sb.fhir_base}/Appointment",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()
    return {f"Appointment/{e['resource']['id']}" for e in bundle.get("entry", [])}


def test_sweep_queues_one_invitation_per_fulfilled_visit_even_when_run_twice(
    job_app, sandbox
) -> None:
    reg_id = register_backend(job_app, sandbox)
    # Late afternoon in the clinic's zone, so today's fulfilled visits are in the window
    # whatever the wall clock says (a non-UTC offset on purpose).
    chicago = ZoneInfo("America/Chicago")
    now = datetime.combine(utcnow().astimezone(chicago).date(), time(18, 0), chicago)
    expected = _fulfilled_in_window(sandbox, now)
    assert expected, "the fixtures have visits fulfilled in the last two days"
    first = sweep_registration(job_app, reg_id, now=now)
    second = sweep_registration(job_app, reg_id, now=now)
    assert first.queued == len(expected)
    assert second.queued == 0
    with get_store(job_app).session() as session:
        tasks = session.scalars(select(CareTask).where(CareTask.kind == "survey-invite")).all()
    assert {t.payload["appointment_ref"] for t in tasks} == expected
    assert all(t.due_at and t.due_at >= now for t in tasks)  # never in the past
    assert all(t.job_id for t in tasks)  # dispatched
