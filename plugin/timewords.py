"""Times as a person at the desk reads them, always in the viewer's zone and naming it:
"today 3:00 PM CST", "tomorrow 9:00 AM CST", "Thu Dec 3, 2:00 PM CST".

Store times are UTC and EHR times carry their own offset; both are shown on the viewer's
clock (``CAREDESK_VIEWER_TIMEZONE``) so a ticket's due time, a call's next attempt and a
visit read alike on one screen.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from fhir_mappers.fhirutil import parse_datetime


def _moment(value: dt.datetime | str | None) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        # Store rows without an offset are UTC (helpdesk.models.UTCDateTime).
        return parse_datetime(value, dt.UTC)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def clock(moment: dt.datetime) -> str:
    """`3:00 PM CST` (the zone's abbreviation where it has one)."""
    text = moment.strftime("%-I:%M %p")
    abbr = moment.tzname() or ""
    return f"{text} {abbr}" if abbr and not abbr.startswith(("+", "-")) else text


def day_words(moment: dt.datetime, today: dt.date) -> str:
    day = moment.date()
    if day == today:
        return "today"
    if day == today + dt.timedelta(days=1):
        return "tomorrow"
    if day == today - dt.timedelta(days=1):
        return "yesterday"
    if day.year != today.year:
        return moment.strftime("%a %b %-d, %Y")
    return moment.strftime("%a %b %-d")


def when_words(value: dt.datetime | str | None, *, now: dt.datetime, tz: ZoneInfo) -> str:
    """A moment in words on the viewer's clock; "" for None or an unreadable value."""
    moment = _moment(value)
    if moment is None:
        return ""
    local = moment.astimezone(tz)
    day = day_words(local, now.astimezone(tz).date())
    sep = " " if day in ("today", "tomorrow", "yesterday") else ", "
    return f"{day}{sep}{clock(local)}"


def date_words(value: dt.date | dt.datetime | str | None, *, now: dt.datetime, tz: ZoneInfo) -> str:
    """The day only: "today", "Thu Nov 5", "Mon Jan 5, 2027". A date without a time (a
    coverage period's end, `2026-11-27`) is that calendar day wherever the viewer is: it
    is not midnight UTC, which Chicago would read as the day before."""
    today = now.astimezone(tz).date()
    day: dt.date | None = None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        day = value
    elif isinstance(value, str) and len(value) == 10:
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            return ""
    if day is not None:
        return day_words(dt.datetime.combine(day, dt.time(12), tz), today)
    moment = _moment(value) if isinstance(value, dt.datetime | str) else None
    if moment is None:
        return ""
    return day_words(moment.astimezone(tz), today)
