"""Cron sweeps over every registered EHR: a registration without a backend-services
client is one INFO line and no failure (a sweep has no user's launch to act on), while
the EHR that has one is swept; a backend client the EHR refuses is one line saying whose
fault, and the sweep fails so RQ shows it. No traceback for either."""

from __future__ import annotations

import logging
from datetime import datetime, time
from zoneinfo import ZoneInfo

import pytest

from helpdesk import registry
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import EhrRegistration
from helpdesk.timeutil import utcnow
from jobs import outreach, reminders, survey_sweep
from smart_launch.features import FEATURES, scopes_for_features
from tests.ehr import connect_backend

SWEEPS = {
    "reminder sweep": reminders.sweep_all,
    "survey sweep": survey_sweep.sweep_all,
    "insurance outreach": outreach.sweep_all,
}


def _with_backend(app, sb) -> int:  # type: ignore[no-untyped-def]
    """The scopes every feature lists at backend level (Coverage included: the outreach
    sweep searches it)."""
    scopes = scopes_for_features(FEATURES, "backend")
    return connect_backend(app, sb, client_id="caredesk-jobs", scopes=scopes)


def _launch_only(app, iss: str) -> int:  # type: ignore[no-untyped-def]
    """An EHR registered for launches only: no backend client, no key."""
    with app.app_context(), get_store(app).session() as session:
        reg = registry.upsert(
            session, get_vault(app), slug="launch-only", iss=iss, client_id="caredesk"
        )
        session.flush()
        return int(reg.id)


def _now() -> datetime:
    chicago = ZoneInfo("America/Chicago")
    return datetime.combine(utcnow().astimezone(chicago).date(), time(18, 0), chicago)


@pytest.mark.parametrize("what", list(SWEEPS))
def test_a_registration_without_backend_client_is_a_one_line_skip(
    job_app, sandbox, caplog, what: str
) -> None:
    swept = _with_backend(job_app, sandbox)
    skipped = _launch_only(job_app, "https://launch-only.example/fhir")
    caplog.set_level(logging.INFO)
    results = SWEEPS[what](job_app, now=_now())
    assert len(results) == 1  # the EHR with a backend client was swept, without failing
    mine = [r for r in caplog.records if f"registration {skipped}" in r.getMessage()]
    assert [(r.levelname, r.getMessage()) for r in mine] == [
        ("INFO", f"{what} of registration {skipped} skipped: no backend-services client")
    ]
    assert not any(r.exc_info for r in caplog.records)
    assert f"registration {swept}" not in " ".join(
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    )


def test_a_backend_client_the_ehr_refuses_is_one_line_and_fails_the_sweep(
    job_app, sandbox, caplog
) -> None:
    reg_id = _with_backend(job_app, sandbox)
    with get_store(job_app).session() as session:
        row = session.get(EhrRegistration, reg_id)
        assert row is not None
        row.backend_client_id = "caredesk-jobs-typo"
    caplog.set_level(logging.INFO)
    failed = rf"reminder sweep failed for registrations \[{reg_id}\]"
    with pytest.raises(RuntimeError, match=failed):
        reminders.sweep_all(job_app, now=_now())
    [line] = [r for r in caplog.records if r.name == "caredesk.jobs.sweeps"]
    assert line.levelname == "ERROR" and line.exc_info is None
    assert line.getMessage().startswith(
        f"reminder sweep of registration {reg_id} failed (caredesk): "
    )
    assert "unknown asymmetric client" in line.getMessage()
