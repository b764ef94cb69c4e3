"""Pure parts of the store: the "due" phrase reader (helpdesk.duephrase) and the SLA table."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from helpdesk.duephrase import DuePhraseError, parse_due
from helpdesk.errors import ConfigError
from helpdesk.tickets import DEFAULT_SLA_HOURS, TRANSITIONS, sla_hours

CHICAGO = ZoneInfo("America/Chicago")
# Friday 6 March 2026, 15:00 in Chicago (21:00 UTC); US DST starts Sunday 8 March.
NOW = datetime(2026, 3, 6, 15, 0, tzinfo=CHICAGO)


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("in 2 days, morning", "2026-03-08T09:00:00-05:00"),
        ("in 2 days", "2026-03-08T09:00:00-05:00"),
        ("tomorrow", "2026-03-07T09:00:00-06:00"),
        ("Tomorrow at 3pm", "2026-03-07T15:00:00-06:00"),
        ("tomorrow 9:30am", "2026-03-07T09:30:00-06:00"),
        ("tomorrow in the afternoon", "2026-03-07T14:00:00-06:00"),
        ("today 16:30", "2026-03-06T16:30:00-06:00"),
        ("today, evening", "2026-03-06T17:00:00-06:00"),
        ("in 3 hours", "2026-03-06T18:00:00-06:00"),
        ("in an hour", "2026-03-06T16:00:00-06:00"),
        ("in 45 minutes", "2026-03-06T15:45:00-06:00"),
        ("next monday afternoon", "2026-03-09T14:00:00-05:00"),
        ("friday", "2026-03-13T09:00:00-05:00"),  # today is Friday: the next one
        ("in a week", "2026-03-13T09:00:00-05:00"),
        ("next week", "2026-03-09T09:00:00-05:00"),
        ("in 2 days at 12:15", "2026-03-08T12:15:00-05:00"),
    ],
)
def test_due_phrases_read_in_the_viewer_zone(phrase: str, expected: str) -> None:
    due = parse_due(phrase, now=NOW, tz=CHICAGO)
    assert due == datetime.fromisoformat(expected)
    assert due.tzinfo is not None


def test_calendar_words_follow_the_viewer_zone_not_utc() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")  # already Saturday 02:30 there
    assert parse_due("tomorrow", now=NOW, tz=kolkata) == datetime(2026, 3, 8, 9, tzinfo=kolkata)


@pytest.mark.parametrize(
    ("phrase", "message"),
    [
        ("", "Say when"),
        ("today", "what time today"),
        ("today 9am", "already past"),
        ("yesterday", "not understood"),
        ("in 2", "not understood"),
        ("in 2 hours, morning", "both a delay and a time"),
        ("tomorrow 25:00", "not a time"),
        ("tomorrow 13pm", "1 to 12"),
    ],
)
def test_unreadable_or_past_phrases_are_refused(phrase: str, message: str) -> None:
    with pytest.raises(DuePhraseError, match=message):
        parse_due(phrase, now=NOW, tz=CHICAGO)


def test_naive_now_is_a_bug() -> None:
    with pytest.raises(ValueError, match="naive"):
        parse_due("tomorrow", now=datetime(2026, 3, 6, 15), tz=CHICAGO)


def test_sla_overrides_merge_over_defaults() -> None:
    assert sla_hours({}) == dict(DEFAULT_SLA_HOURS)
    merged = sla_hours({"TICKET_SLA_HOURS": '{"billing": 2, "feedback": 0.5}'})
    assert merged["billing"] == 2 and merged["feedback"] == 0.5
    assert merged["clinical-question"] == DEFAULT_SLA_HOURS["clinical-question"]
    assert sla_hours({"TICKET_SLA_HOURS": {"insurance": 1}})["insurance"] == 1


@pytest.mark.parametrize(
    "raw",
    ["{", "[1]", '{"astrology": 3}', '{"billing": -1}', '{"billing": "soon"}', '{"billing": true}'],
)
def test_bad_sla_override_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="CAREDESK_TICKET_SLA_HOURS"):
        sla_hours({"TICKET_SLA_HOURS": raw})


def test_closed_is_final_and_every_status_has_a_rule() -> None:
    assert TRANSITIONS["closed"] == ()
    assert set(TRANSITIONS) == {"open", "pending", "resolved", "closed"}
    for targets in TRANSITIONS.values():
        assert set(targets) <= set(TRANSITIONS)
