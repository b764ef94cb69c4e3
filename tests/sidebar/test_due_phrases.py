"""The due-time phrases staff type in the sidebar and on the call list (helpdesk.duephrase),
read in the viewer's zone at a non-UTC moment: 22:13 in Chicago is already tomorrow in UTC,
which is exactly where a UTC reading goes wrong."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine

from helpdesk.duephrase import DuePhraseError, parse_due, quick_choices, resolve_due
from helpdesk.timeutil import utcnow

CHICAGO = ZoneInfo("America/Chicago")
# Monday 30 November 2026, 22:13 CST = Tuesday 04:13 UTC.
LATE = datetime(2026, 11, 30, 22, 13, tzinfo=CHICAGO)
# Monday 30 November 2026, 09:40 CST.
MORNING = datetime(2026, 11, 30, 9, 40, tzinfo=CHICAGO)


@pytest.mark.parametrize(
    ("phrase", "now", "expected"),
    [
        ("now", LATE, "2026-11-30T22:13:00-06:00"),
        ("ASAP", LATE, "2026-11-30T22:13:00-06:00"),
        ("right away", MORNING, "2026-11-30T09:40:00-06:00"),
        ("tmrw 9am", LATE, "2026-12-01T09:00:00-06:00"),
        ("tmrw", LATE, "2026-12-01T09:00:00-06:00"),
        ("2pm tomorrow", LATE, "2026-12-01T14:00:00-06:00"),
        ("12/3 2pm", LATE, "2026-12-03T14:00:00-06:00"),
        ("12/3", LATE, "2026-12-03T09:00:00-06:00"),
        ("12/3/2026 8:15am", LATE, "2026-12-03T08:15:00-06:00"),
        ("1/5 9:30am", LATE, "2027-01-05T09:30:00-06:00"),  # the coming January
        ("in 2 days", LATE, "2026-12-02T09:00:00-06:00"),
        ("in 2 days, afternoon", LATE, "2026-12-02T14:00:00-06:00"),
        ("this afternoon", MORNING, "2026-11-30T14:00:00-06:00"),
        ("today 4pm", MORNING, "2026-11-30T16:00:00-06:00"),
        ("2026-12-01T10:30", LATE, "2026-12-01T10:30:00-06:00"),  # a datetime-local value
    ],
)
def test_staff_phrases_are_read_in_the_viewer_zone(phrase: str, now: datetime, expected: str):
    due = parse_due(phrase, now=now, tz=CHICAGO)
    assert due == datetime.fromisoformat(expected)
    assert due.utcoffset() is not None


@pytest.mark.parametrize(
    ("phrase", "now", "message"),
    [
        ("this afternoon", LATE, "already past"),
        ("2026-11-30T08:00", MORNING, "already past"),
        ("13/40", LATE, "not a date"),
        ("whenever", LATE, "not understood"),
        ("", LATE, "Say when"),
    ],
)
def test_unreadable_or_past_phrases_say_why(phrase: str, now: datetime, message: str) -> None:
    with pytest.raises(DuePhraseError, match=message):
        parse_due(phrase, now=now, tz=CHICAGO)


def test_quick_choices_offer_only_what_is_still_ahead_and_read_back_the_same() -> None:
    morning = quick_choices(now=MORNING, tz=CHICAGO)
    assert [c.label for c in morning] == ["In an hour", "This afternoon", "Tomorrow morning"]
    late = quick_choices(now=LATE, tz=CHICAGO)
    assert [c.label for c in late] == ["In an hour", "Tomorrow morning"]
    for choice in (*morning, *late):
        now = MORNING if choice in morning else LATE
        assert parse_due(choice.phrase, now=now, tz=CHICAGO) == choice.at
        assert choice.at > now


def test_typed_phrase_wins_over_the_control_and_the_quick_choice() -> None:
    with time_machine.travel(LATE, tick=False):
        now = utcnow()
        due, words = resolve_due(
            phrase="tmrw 9am", at_local="2026-12-05T10:00", choice="in 1 hour", now=now, tz=CHICAGO
        )
        assert (due, words) == (datetime(2026, 12, 1, 9, tzinfo=CHICAGO), "tmrw 9am")
        due, _ = resolve_due(
            phrase=" ", at_local="2026-12-05T10:00", choice="in 1 hour", now=now, tz=CHICAGO
        )
        assert due == datetime(2026, 12, 5, 10, tzinfo=CHICAGO)
        due, _ = resolve_due(phrase=None, at_local="", choice="in 1 hour", now=now, tz=CHICAGO)
        assert due == datetime(2026, 11, 30, 23, 13, tzinfo=CHICAGO)
        with pytest.raises(DuePhraseError, match="Say when"):
            resolve_due(phrase="", at_local="", choice=None, now=now, tz=CHICAGO)
