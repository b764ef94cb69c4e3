"""A call queued for "now" is due, not overdue: one grace period (fhir_mappers.flags.
CALL_GRACE) read by the sidebar's task sentence and its alert alike."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from fhir_mappers.flags import CALL_GRACE, call_overdue
from plugin.tasktext import task_sentence

CHICAGO = ZoneInfo("America/Chicago")
NOW = dt.datetime(2026, 11, 30, 15, 0, tzinfo=CHICAGO)


@pytest.mark.parametrize(
    ("minutes_ago", "late"),
    [(0, False), (5, False), (CALL_GRACE.total_seconds() / 60, False), (16, True), (120, True)],
)
def test_a_call_is_overdue_only_after_the_grace(minutes_ago: float, late: bool) -> None:
    due = NOW - dt.timedelta(minutes=minutes_ago)
    assert call_overdue(due, NOW) is late
    task = {"kind": "follow-up", "status": "queued", "channel": "phone", "due_at": due}
    sentence = task_sentence(task, now=NOW, tz=CHICAGO)
    assert sentence.startswith("Call overdue since" if late else "Call due")
    assert sentence.endswith("attempt 1 of 3")
