"""When and to whom a survey invitation goes: quiet hours, sampling, fatigue, and whether
the EHR can take the answer back. Pure functions and read-only queries on the store."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.models import EhrRegistration, SurveyInvite

# Restriction codes that mean "no surveys": an explicit survey opt-out, or no contact at all.
SURVEY_OPT_OUT_CODES = frozenset({"no-survey", "no-contact"})
# An invitation whose send time is this close is sent now rather than rescheduled.
SEND_SLACK = dt.timedelta(minutes=1)
# The invitation was sent (or could have been answered): these count against fatigue.
_SENT_STATUSES = ("sent", "answered", "expired")
WRITE_BACK_FEATURE = "survey write-back"


def parse_quiet_hours(spec: str | None) -> tuple[dt.time, dt.time] | None:
    """``"21:00-08:00"`` -> (21:00, 08:00); empty -> None. Raises ValueError on garbage."""
    if not spec or not str(spec).strip():
        return None
    start_text, sep, end_text = str(spec).partition("-")
    if not sep:
        raise ValueError(f"quiet hours must look like 21:00-08:00, not {spec!r}")
    start, end = dt.time.fromisoformat(start_text.strip()), dt.time.fromisoformat(end_text.strip())
    return (start, end) if start != end else None


def _is_quiet(local: dt.datetime, quiet: tuple[dt.time, dt.time]) -> bool:
    start, end = quiet
    t = local.timetz().replace(tzinfo=None)
    if start < end:
        return start <= t < end
    return t >= start or t < end  # the window spans midnight


def send_time(
    earliest: dt.datetime, tz: dt.tzinfo, quiet: tuple[dt.time, dt.time] | None
) -> dt.datetime:
    """The first moment at or after ``earliest`` outside quiet hours in ``tz`` (aware UTC).

    Computed on the local wall clock, so a quiet window ending at 08:00 ends at 08:00 on
    both sides of a daylight-saving change.
    """
    if earliest.tzinfo is None:
        raise ValueError("earliest must be aware")
    local = earliest.astimezone(tz)
    if quiet is None or not _is_quiet(local, quiet):
        return earliest.astimezone(dt.UTC)
    end = quiet[1]
    candidate = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    if candidate <= local:
        candidate = candidate + dt.timedelta(days=1)
        candidate = candidate.replace(tzinfo=None).replace(tzinfo=tz)  # same wall clock
    return candidate.astimezone(dt.UTC)


def in_sample(appointment_ref: str, percent: int) -> bool:
    """Stable sampling: the same visit is always in or always out, across retries."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    digest = hashlib.sha256(appointment_ref.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 10_000 < percent * 100


def fatigued(
    session: Session,
    *,
    registration_id: int,
    patient_ref: str,
    now: dt.datetime,
    days: int,
    exclude_id: str | None = None,
) -> bool:
    """True when the patient was already invited within the fatigue window."""
    query = select(SurveyInvite.id).where(
        SurveyInvite.registration_id == registration_id,
        SurveyInvite.patient_ref == patient_ref,
        SurveyInvite.status.in_(_SENT_STATUSES),
        SurveyInvite.sent_at >= now - dt.timedelta(days=days),
    )
    if exclude_id:
        query = query.where(SurveyInvite.id != exclude_id)
    return session.scalars(query.limit(1)).first() is not None


def writeback_blocker(reg: EhrRegistration) -> str | None:
    """Why this EHR cannot take QuestionnaireResponse writes, or None when it can (or
    when ``caredesk ehr check`` has not run: then the write is tried and a refusal is
    recorded as not supported)."""
    features = (reg.capabilities or {}).get("features") or {}
    return blocker_of(reg.allow_writes, features.get(WRITE_BACK_FEATURE))


def write_back_entry(capabilities: Any) -> Any:
    """The write-back entry of a check report, as a column expression over a
    registration's ``capabilities`` column (the table's or the model's): a query that
    needs only ``blocker_of``'s answer selects this, not the whole report."""
    return capabilities[("features", WRITE_BACK_FEATURE)].label("write_back")


def blocker_of(allow_writes: bool, feature: object) -> str | None:
    """``writeback_blocker`` from the registration's ``allow_writes`` and the write-back
    entry of its check report (``capabilities["features"][WRITE_BACK_FEATURE]``): the
    survey page reads just these two in its invitation query."""
    if not allow_writes:
        return "This EHR is registered read-only."
    if isinstance(feature, Mapping) and feature.get("works") is False:
        missing = ", ".join(str(b) for b in feature.get("blocked_by") or []) or "capabilities"
        return f"The EHR check found no support for: {missing}."
    return None
