"""Every admin/status view is scoped to the launch's EHR registration (issue 12 §5)."""

from __future__ import annotations


def test_jobs_status_of_ehr_b_excludes_ehr_a(env, a, b) -> None:
    made = a.post("/tasks", {"kind": "follow-up", "reason": "Call about the bill"})
    assert made.status_code == 201, made.text
    mine = a.page("/jobs/status").json()
    assert sum(mine["by_state"].values()) == 1 and mine["by_kind"] == {
        "follow-up": {"scheduled": 1}
    }
    other = b.page("/jobs/status").json()
    assert other["by_state"] == {} and other["by_kind"] == {} and other["failures"] == []
    assert other["oldest_waiting"] is None
    # RQ's queues are shared by every EHR, so a launch's view leaves their figures out.
    assert other["rq"] == {} and mine["rq"] == {}
    assert "no tasks" in b.page("/jobs").text
    # A launch of EHR B without a patient, whose grant reaches every patient, still sees
    # only EHR B's tasks.
    staff_b = env.launch("B", patient=None)
    assert staff_b.page("/jobs/status").json()["by_state"] == {}
    assert b.form(f"/tasks/{made.json()['id']}/retry", {}).status_code == 404
