"""One way of showing time (issue 13 §6): every page reads a moment in the viewer's zone,
named, through ``plugin.timewords.when_words`` (tickets, notes, the conversation, the
unmatched queue, tasks and visits alike). Time frozen at 22:13 in Chicago, when UTC is
already the next day."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine

from plugin.timewords import when_words

CHICAGO = ZoneInfo("America/Chicago")
LATE = datetime(2026, 11, 30, 22, 13, tzinfo=CHICAGO)  # Tue 04:13 UTC


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 12, 1, 4, 13, tzinfo=UTC), "today 10:13 PM CST"),  # a UTC row
        ("2026-12-01T04:13:00", "today 10:13 PM CST"),  # stored naive = UTC
        ("2026-12-01T15:00:00+00:00", "tomorrow 9:00 AM CST"),
        ("2026-11-30T08:00:00-05:00", "today 7:00 AM CST"),  # an EHR time, another offset
        ("2026-11-29T20:00:00-06:00", "yesterday 8:00 PM CST"),
        ("2026-12-03T14:00:00-06:00", "Thu Dec 3, 2:00 PM CST"),
        ("2027-01-05T09:30:00-06:00", "Tue Jan 5, 2027, 9:30 AM CST"),
        ("2026-07-04T12:00:00-05:00", "Sat Jul 4, 12:00 PM CDT"),
        (None, ""),
        ("not a time", ""),
    ],
)
def test_a_moment_reads_on_the_viewers_clock_with_its_zone(moment, expected) -> None:
    assert when_words(moment, now=LATE, tz=CHICAGO) == expected


def test_ticket_pages_and_the_sidebar_show_time_the_same_way(make_app) -> None:
    """The ticket pages' `when` filter is the sidebar's reading; the older 24-hour
    `local_time` filter ("Dec 1, 04:13 UTC"-style) is gone from every template."""
    app = make_app()
    moment = datetime(2026, 12, 1, 4, 13, tzinfo=UTC)
    with time_machine.travel(LATE, tick=False), app.test_request_context():
        assert app.jinja_env.filters["when"](moment) == "today 10:13 PM CST"
        assert "local_time" not in app.jinja_env.filters
        for name in app.jinja_env.list_templates(extensions=["html"]):
            source = app.jinja_loader.get_source(app.jinja_env, name)[0]  # type: ignore[union-attr]
            assert "local_time" not in source, name


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-30", "today"),  # a date is that day, not midnight UTC (Nov 29 in Chicago)
        ("2026-11-27", "Fri Nov 27"),
        ("2027-12-31", "Fri Dec 31, 2027"),
        ("2026-12-01T04:13:00+00:00", "today"),  # a moment: on the viewer's clock
        ("2026-13-01", ""),
        (None, ""),
    ],
)
def test_a_day_reads_as_its_calendar_day(value, expected) -> None:
    from plugin.timewords import date_words

    assert date_words(value, now=LATE, tz=CHICAGO) == expected
