"""Due times as staff type them ("tomorrow morning", "in 2 days", "next monday at 10am"),
read in the viewer's time zone. Pure: the caller passes ``now``; nothing here reads the
clock or the request."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from helpdesk.errors import ConfigError

# Named parts of the day, as a front desk uses them. Morning starts when the phones open.
DAY_PARTS: Mapping[str, time] = {
    "morning": time(9, 0),
    "noon": time(12, 0),
    "midday": time(12, 0),
    "afternoon": time(14, 0),
    "evening": time(17, 0),
    "end of day": time(17, 0),
    "eod": time(17, 0),
}
DEFAULT_TIME = DAY_PARTS["morning"]
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}

_RELATIVE = re.compile(
    r"^in\s+(?P<n>\d{1,3}|a|an|one|two|three|four|five)\s+"
    r"(?P<unit>minute|hour|day|week)s?$"
)
_CLOCK = re.compile(r"(?:^|\s)(?P<at>at\s+)?(?P<h>\d{1,2})(?::(?P<m>\d{2}))?\s*(?P<ampm>am|pm)?$")


class DuePhraseError(ValueError):
    """The phrase is not understood, or names a time that has passed. Message is user-safe."""


def viewer_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"CAREDESK_VIEWER_TIMEZONE: unknown time zone {name!r}") from exc


def parse_due(phrase: str, *, now: datetime, tz: ZoneInfo) -> datetime:
    """An aware datetime for phrases like "in 2 days, morning", "tomorrow at 3pm",
    "next monday afternoon", "today 16:30", "in 3 hours". Calendar words are read in the
    viewer's time zone ``tz`` (so "tomorrow" is the viewer's tomorrow, across DST).
    A phrase without a time of day means the morning. The result is always in the future.
    """
    if now.tzinfo is None:
        raise ValueError("naive `now`")
    local_now = now.astimezone(tz)
    text = " ".join(phrase.strip().lower().replace(",", " ").split())
    if not text:
        raise DuePhraseError("Say when, e.g. “tomorrow morning” or “in 2 days”.")
    day: date | None = None
    exact: datetime | None = None
    clock: time | None = None
    rest = text
    # Time-of-day part first (it comes last in the phrase): "..., morning", "at 3pm".
    for name, value in sorted(DAY_PARTS.items(), key=lambda kv: -len(kv[0])):
        if rest == name or rest.endswith(" " + name):
            clock, rest = value, rest[: -len(name)].strip()
            break
    else:
        match = _CLOCK.search(rest)
        # A bare trailing number is not a time ("in 2"); it needs "at", minutes or am/pm.
        if match and (match["at"] or match["m"] or match["ampm"]):
            clock, rest = _clock(match), rest[: match.start()].strip()
    rest = rest.removesuffix(" at").removesuffix(" in the").strip()
    if rest in ("", "today"):
        day = local_now.date()
    elif rest == "tomorrow":
        day = local_now.date() + timedelta(days=1)
    elif rest in ("next week",):
        day = local_now.date() + timedelta(days=7 - local_now.weekday())
    elif (weekday := rest.removeprefix("next ").removeprefix("on ")) in WEEKDAYS:
        ahead = (WEEKDAYS.index(weekday) - local_now.weekday()) % 7 or 7
        day = local_now.date() + timedelta(days=ahead)
    elif match := _RELATIVE.match(rest):
        raw = match["n"]
        n = int(raw) if raw.isdigit() else _NUMBER_WORDS[raw]
        unit = match["unit"]
        if unit in ("minute", "hour"):
            if clock is not None:
                raise DuePhraseError(f"“{phrase}” gives both a delay and a time of day.")
            exact = now + (timedelta(hours=n) if unit == "hour" else timedelta(minutes=n))
        else:
            day = local_now.date() + timedelta(days=n * (7 if unit == "week" else 1))
    else:
        raise DuePhraseError(
            f"“{phrase}” is not understood. Try “tomorrow morning”, “in 2 days, afternoon”, "
            "“next monday at 10am” or “in 3 hours”."
        )
    if exact is None:
        assert day is not None
        if rest in ("", "today") and clock is None:
            raise DuePhraseError("Say what time today, e.g. “today 4pm” or “today, afternoon”.")
        exact = datetime.combine(day, clock or DEFAULT_TIME, tzinfo=tz)
    if exact <= now:
        raise DuePhraseError(f"“{phrase}” is already past.")
    return exact


def _clock(match: re.Match[str]) -> time:
    hour, minute = int(match["h"]), int(match["m"] or 0)
    ampm = match["ampm"]
    if ampm:
        if not 1 <= hour <= 12:
            raise DuePhraseError("Use an hour from 1 to 12 with am/pm.")
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    if hour > 23 or minute > 59:
        raise DuePhraseError("That is not a time of day.")
    return time(hour, minute)
