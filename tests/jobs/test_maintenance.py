"""Unfinished launches are deleted after a day; active ones and ones a task needs stay."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from helpdesk import registry
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import CareTask, LaunchSession
from helpdesk.timeutil import utcnow
from jobs.maintenance import prune_launches


def test_prune_removes_only_old_unfinished_launches(job_app) -> None:
    old = utcnow() - timedelta(days=2)
    with job_app.app_context(), get_store(job_app).session() as session:
        reg = registry.upsert(
            session, get_vault(job_app), slug="p", iss="https://p/fhir", client_id="c"
        )
        rows = {
            "old-pending": ("pending", old),
            "old-failed": ("failed", old),
            "new-pending": ("pending", utcnow()),
            "old-active": ("active", old),
            "old-ended-with-task": ("ended", old),
        }
        for launch_id, (status, updated) in rows.items():
            session.add(
                LaunchSession(
                    id=launch_id,
                    registration_id=reg.id,
                    status=status,
                    updated_at=updated,
                    created_at=updated,
                )
            )
        session.flush()
        session.add(
            CareTask(
                registration_id=reg.id, kind="follow-up", launch_session_id="old-ended-with-task"
            )
        )
    # updated_at is refreshed by the ORM on insert; set it back explicitly.
    with get_store(job_app).session() as session:
        for launch in session.scalars(select(LaunchSession)):
            launch.updated_at = rows[launch.id][1]
    assert prune_launches(job_app) == 2
    with get_store(job_app).session() as session:
        left = set(session.scalars(select(LaunchSession.id)))
    assert left == {"new-pending", "old-active", "old-ended-with-task"}
