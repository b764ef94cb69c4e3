"""Due times as staff type them ("tomorrow morning", "in 2 days", "tmrw 9am", "12/3 2pm",
"asap"), read in the viewer's time zone, and the quick choices a form offers beside a
date-time control. Pure: the caller passes ``now``; nothing here reads the clock or the
request.

Dates written with a slash are month/day (``12/3`` is December 3rd), as US clinics write
them; a date without a year is the next one to come.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
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
_SLASH_DATE = re.compile(
    r"^(?:on\s+)?(?P<month>\d{1,2})/(?P<day>\d{1,2})(?:/(?P<year>\d{2}|\d{4}))?$"
)
# What a datetime-local control sends: wall-clock time in the viewer's zone.
_LOCAL_CONTROL = re.compile(r"^\d{4}-\d{2}-\d{2}[t ]\d{2}:\d{2}(?::\d{2})?$")
# "Now" means the call goes on the list at once (due now, so the task is queued, not
# scheduled); these are what staff type for it.
NOW_WORDS = frozenset({"now", "asap", "right away", "immediately", "straight away"})
# Shorthands typed in a hurry, read as the words they stand for.
_ABBREVIATIONS = {"tmrw": "tomorrow", "tmr": "tomorrow", "tomorow": "tomorrow", "tom": "tomorrow"}


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
    if text in NOW_WORDS:
        return now
    if _LOCAL_CONTROL.match(text):
        return _from_control(text, now=now, tz=tz, phrase=phrase)
    text = " ".join(_ABBREVIATIONS.get(word, word) for word in text.split())
    # "2pm tomorrow" is "tomorrow 2pm".
    lead = re.match(r"^(?:at\s+)?(\d{1,2}(?::\d{2})?\s*(?:am|pm))\s+(.+)$", text)
    if lead and not lead[2].startswith(("am", "pm")):
        text = f"{lead[2]} {lead[1]}"
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
    if rest in ("", "today", "this"):
        day = local_now.date()
    elif slash := _SLASH_DATE.match(rest):
        day = _calendar_day(slash, local_now.date(), phrase)
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
            f"“{phrase}” is not understood. Try “tmrw 9am”, “12/3 2pm”, “in 2 days”, "
            "“next monday afternoon” or “asap”."
        )
    if exact is None:
        assert day is not None
        if rest in ("", "today", "this") and clock is None:
            raise DuePhraseError("Say what time today, e.g. “today 4pm” or “today, afternoon”.")
        exact = datetime.combine(day, clock or DEFAULT_TIME, tzinfo=tz)
    if exact <= now:
        raise DuePhraseError(f"“{phrase}” is already past.")
    return exact


def _calendar_day(match: re.Match[str], today: date, phrase: str) -> date:
    month, day, year = int(match["month"]), int(match["day"]), match["year"]
    try:
        if year is not None:
            full = int(year) + (2000 if len(year) == 2 else 0)
            return date(full, month, day)
        found = date(today.year, month, day)
        # "12/3" typed in January means the coming December, not last year's.
        return found if found >= today else date(today.year + 1, month, day)
    except ValueError as exc:
        raise DuePhraseError(f"“{phrase}” is not a date (month/day, e.g. “12/3 2pm”).") from exc


def _from_control(text: str, *, now: datetime, tz: ZoneInfo, phrase: str) -> datetime:
    try:
        wall = datetime.fromisoformat(text.replace(" ", "T").upper())
    except ValueError as exc:
        raise DuePhraseError(f"“{phrase}” is not a date and time.") from exc
    # Wall-clock time in the viewer's zone; `fold=0` takes the first of a repeated hour.
    exact = wall.replace(tzinfo=tz)
    if exact <= now:
        raise DuePhraseError(f"“{phrase}” is already past.")
    return exact


@dataclass(frozen=True)
class QuickChoice:
    phrase: str  # what the form posts (read back by `parse_due`)
    label: str  # what the button says
    at: datetime  # when it means, in the viewer's zone


def quick_choices(*, now: datetime, tz: ZoneInfo) -> tuple[QuickChoice, ...]:
    """The choices a due-time field offers first: in an hour, this afternoon (while it is
    still ahead), tomorrow morning. Each phrase reads back to the same moment."""
    local_now = now.astimezone(tz)
    wanted = [("in 1 hour", "In an hour")]
    if local_now.time() < DAY_PARTS["afternoon"]:
        wanted.append(("this afternoon", "This afternoon"))
    elif local_now.time() < DAY_PARTS["evening"]:
        wanted.append(("this evening", "This evening"))
    wanted.append(("tomorrow morning", "Tomorrow morning"))
    return tuple(
        QuickChoice(phrase, label, parse_due(phrase, now=now, tz=tz).astimezone(tz))
        for phrase, label in wanted
    )


def resolve_due(
    *, phrase: str | None, at_local: str | None, choice: str | None, now: datetime, tz: ZoneInfo
) -> tuple[datetime, str]:
    """The due time a form gives, and the words it was given in: the typed phrase wins,
    then the date-time control, then the quick choice. Raises DuePhraseError."""
    for given in (phrase, at_local, choice):
        if given and given.strip():
            return parse_due(given, now=now, tz=tz), given.strip()
    raise DuePhraseError("Say when: pick a choice, a date and time, or type e.g. “tmrw 9am”.")


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
