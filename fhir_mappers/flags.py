"""One vocabulary of flags for the sidebar and the board: a code, plain words, and whether
the flag means somebody should phone the patient.

"Needs a call" is written here once, so the board's count, the board's filter and the
sidebar's alerts cannot disagree: unconfirmed, coverage expired / expiring / unknown,
unreachable, no-show to rebook, reminder failed. A cancelled (or entered-in-error) visit
never needs a call and carries no coverage flag. When the Coverage search was refused or
failed, coverage is *unknown* — never "no coverage on file", which would send staff to
ask a covered patient for an insurance card.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from fhir_mappers.records import quick_init

DECEASED = "deceased"
NO_SHOW = "no-show"
UNCONFIRMED = "unconfirmed"
REMINDER_FAILED = "reminder-failed"
COVERAGE_EXPIRED = "coverage-expired"
COVERAGE_UNKNOWN = "coverage-unknown"
COVERAGE_EXPIRING = "coverage-expiring"
UNREACHABLE = "unreachable"
OVERDUE_CALL = "overdue-call"
HIGH_PRIORITY_TICKET = "open-high-priority-ticket"
# A call is overdue once it has waited this long past its due time: a call queued for
# "now" is due, not already late, while the caller reaches for the phone.
CALL_GRACE = dt.timedelta(minutes=15)
COVERAGE_CANCELLED = "coverage-cancelled"
NO_COVERAGE = "no-coverage"
DO_NOT_TEXT = "do-not-text"
INTERPRETER_NEEDED = "interpreter-needed"
OPEN_TICKET = "open-ticket"
VISIT_TODAY = "visit-today"


@quick_init
@dataclass(frozen=True)
class Flag:
    code: str
    text: str  # plain words for staff, the same on every page
    needs_call: bool

    def to_json(self) -> dict[str, str | bool]:
        return {"code": self.code, "text": self.text, "needs_call": self.needs_call}


# In order of urgency: "problems first" sorts by the first flag's place here.
FLAGS: tuple[Flag, ...] = (
    Flag(DECEASED, "Deceased", False),
    Flag(NO_SHOW, "No-show: rebook", True),
    Flag(UNCONFIRMED, "Not confirmed", True),
    Flag(REMINDER_FAILED, "Reminder failed", True),
    Flag(COVERAGE_EXPIRED, "Coverage expired", True),
    Flag(COVERAGE_UNKNOWN, "Coverage unknown", True),
    Flag(COVERAGE_EXPIRING, "Coverage expiring soon", True),
    Flag(UNREACHABLE, "No reachable phone", True),
    Flag(OVERDUE_CALL, "Overdue call", False),
    Flag(HIGH_PRIORITY_TICKET, "Open high-priority ticket", False),
    Flag(COVERAGE_CANCELLED, "Coverage cancelled", False),
    Flag(NO_COVERAGE, "No coverage on file", False),
    Flag(DO_NOT_TEXT, "Do not text", False),
    Flag(INTERPRETER_NEEDED, "Interpreter needed", False),
    Flag(OPEN_TICKET, "Open ticket", False),
    Flag(VISIT_TODAY, "Visit today", False),
)
BY_CODE = {f.code: f for f in FLAGS}
ORDER = tuple(f.code for f in FLAGS)
RANK = {code: i for i, code in enumerate(ORDER)}
NEEDS_CALL = frozenset(f.code for f in FLAGS if f.needs_call)

# Insurance.state -> flag; `active` has none.
_COVERAGE = {
    "none": NO_COVERAGE,
    "expired": COVERAGE_EXPIRED,
    "expiring": COVERAGE_EXPIRING,
    "cancelled": COVERAGE_CANCELLED,
    "unknown": COVERAGE_UNKNOWN,
}
# Visit statuses that take a visit off every call list.
NOT_A_VISIT = frozenset({"cancelled", "entered-in-error"})
# Store ticket priorities that make a ticket high-priority; statuses that close one.
HIGH_PRIORITIES = frozenset({"high", "urgent"})
CLOSED_TICKET = frozenset({"closed", "resolved", "cancelled", "done"})


def flag(code: str) -> Flag:
    """The Flag for a code (KeyError for a code outside the vocabulary)."""
    return BY_CODE[code]


def coverage_flag(state: str | None) -> str | None:
    """The flag for an `Insurance.state` (None for `active`)."""
    return _COVERAGE.get(state or "unknown")


def ordered(codes: Iterable[str]) -> tuple[str, ...]:
    """Codes once each, most urgent first; codes outside the vocabulary are dropped.

    The vocabulary in its order, kept where present: a patient has a handful of flags,
    and a walk of sixteen set lookups is cheaper than a sort by rank (every context and
    every board row orders its flags, some twice)."""
    present = set(codes)
    return tuple([code for code in ORDER if code in present]) if present else ()


def needs_call(codes: Iterable[str]) -> bool:
    """Does any of these flags mean somebody should phone the patient?"""
    return not NEEDS_CALL.isdisjoint(codes)


def describe(codes: Iterable[str]) -> tuple[Flag, ...]:
    return tuple([BY_CODE[code] for code in ordered(codes)])


def call_overdue(due_at: dt.datetime | None, now: dt.datetime) -> bool:
    """A call (an open follow-up) due at ``due_at`` is overdue at ``now``: the one reading
    the sidebar's alert, its task sentence and the board's flag share. The grace comes off
    ``now``, not onto ``due_at``: a due time near year 9999 is later than any now, not an
    OverflowError."""
    return due_at is not None and due_at < now - CALL_GRACE
