"""Per-EHR concurrency: a slow EHR's backlog does not hold up another EHR's jobs."""

from __future__ import annotations

from sandbox.testing import running_sandbox
from tests.ehr import connect_backend
from tests.jobs.conftest import BACKEND_SCOPES, load_task, new_task, run_burst


def _referral(app, reg_id: int, patient: str) -> int:  # type: ignore[no-untyped-def]
    return new_task(
        app,
        registration_id=reg_id,
        kind="referral",
        patient_ref=patient,
        payload={"reason": "review", "target": {"specialty": "Cardiology"}},
    )


def test_a_slow_ehrs_backlog_does_not_hold_up_another_ehr(job_app) -> None:
    job_app.config["EHR_CONCURRENCY"] = 1
    with running_sandbox(latency_ms=150) as slow, running_sandbox() as fast:
        slow_reg = connect_backend(
            job_app, slow, client_id="slow", scopes=BACKEND_SCOPES, slug="slow"
        )
        fast_reg = connect_backend(
            job_app, fast, client_id="fast", scopes=BACKEND_SCOPES, slug="fast"
        )
        slow_ids = [_referral(job_app, slow_reg, f"Patient/pat-00{n}") for n in (1, 2, 3)]
        fast_id = _referral(job_app, fast_reg, "Patient/pat-004")  # queued last
        result = run_burst(job_app)
        assert result.returncode == 0, result.stderr[-2000:]
        tasks = [load_task(job_app, i) for i in [*slow_ids, fast_id]]
    assert {t.status for t in tasks} == {"waiting"}, [t.last_error for t in tasks]
    started = {t.id: t.started_at for t in tasks}
    # One worker, the fast EHR's job queued after three slow ones: with at most one job
    # per EHR in the queue it ran second, not last.
    order = sorted(started, key=lambda i: started[i])
    assert order.index(fast_id) == 1, order
