"""Coverage -> Insurance: is the patient covered today, by whom, under which plan and id.

EHRs leave `Coverage.status` at `active` after `period.end` (Epic and Oracle Health both
do), so the state is decided by the period first and the status second.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_mappers import issues
from fhir_mappers.fhirutil import (
    codes,
    date_bounds,
    get_dict,
    get_int,
    get_list,
    get_str,
    identifier_of_type,
    patient_key,
    reference_of,
    require_aware,
)
from fhir_mappers.issues import DataWarning
from fhir_mappers.names import name_of, resolve
from fhir_mappers.records import quick_init

_CLASS_SYSTEM = "http://terminology.hl7.org/CodeSystem/coverage-class"

# Per policy and overall. `none`: looked, nothing on file. `unknown`: can't tell (draft,
# no status, period not started, or coverage could not be fetched).
STATES = ("active", "expiring", "expired", "cancelled", "none", "unknown")
_USABLE = ("active", "expiring")


@quick_init
@dataclass(frozen=True)
class Policy:
    coverage_id: str | None
    state: str  # active | expiring | expired | cancelled | unknown
    status: str | None  # Coverage.status as sent
    payor: str | None
    payor_ref: str | None
    plan: str | None  # plan name, else plan value
    plan_id: str | None
    group: str | None
    member_id: str | None  # subscriberId, else the identifier of type MB
    order: int | None
    period_start: dt.date | None
    period_end: dt.date | None  # last covered day
    days_left: int | None  # days from today to period_end (negative once expired)
    warnings: tuple[DataWarning, ...]


@quick_init
@dataclass(frozen=True)
class Insurance:
    state: str
    primary: Policy | None  # the usable policy with the lowest order
    policies: tuple[Policy, ...]  # usable ones first, by order; then the rest
    expiring_days: int


def _class_values(resource: Mapping[str, Any]) -> dict[str, tuple[str | None, str | None]]:
    """`plan` and `group` (and any other coverage-class code) -> (name, value) of the first
    `Coverage.class` of that type, in one pass over the classes."""
    found: dict[str, tuple[str | None, str | None]] = {}
    for cls in get_list(resource, "class"):
        for system, code in codes(get_dict(cls, "type")):
            if system in (None, _CLASS_SYSTEM) and code not in found:
                found[code] = (get_str(cls, "name"), get_str(cls, "value"))
    return found


def _member_id(resource: Mapping[str, Any]) -> str | None:
    return get_str(resource, "subscriberId") or identifier_of_type(resource, "MB")


def to_policy(
    resource: Mapping[str, Any],
    *,
    today: dt.date,
    expiring_days: int = 30,
    included: Mapping[str, Mapping[str, Any]] | None = None,
) -> Policy:
    warn = issues.Warnings("Coverage", resource)
    resource = warn.readable(resource)

    status = get_str(resource, "status")
    period = get_dict(resource, "period")
    start_raw, end_raw = get_str(period, "start"), get_str(period, "end")
    start_bounds, end_bounds = date_bounds(start_raw), date_bounds(end_raw)
    if start_raw and start_bounds is None:
        warn("period.start", "not a readable date", issues.BAD_VALUE)
    if end_raw and end_bounds is None:
        warn("period.end", "not a readable date", issues.BAD_VALUE)
    # A partial period means its widest reading: from the first day, through the last.
    period_start = start_bounds[0] if start_bounds else None
    period_end = end_bounds[1] if end_bounds else None
    days_left = (period_end - today).days if period_end else None

    if status is None:
        warn("status", "no status", issues.MISSING)
    if status == "cancelled":
        state = "cancelled"
    elif period_end is not None and period_end < today:
        state = "expired"
    elif status != "active":
        state = "unknown"  # draft, or missing
    elif period_start is not None and period_start > today:
        warn(
            "period.start",
            "coverage starts in the future",
            issues.NOT_YET_ACTIVE,
            "The coverage starts in the future; it does not cover today.",
        )
        state = "unknown"
    elif days_left is not None and days_left <= expiring_days:
        state = "expiring"
    else:
        state = "active"

    payor: str | None = None
    payor_ref: str | None = None
    payors = get_list(resource, "payor")
    if not payors:
        warn(
            "payor",
            "required element is missing",
            issues.MISSING_REQUIRED,
            "The coverage record names no payor (the insurer), which FHIR requires.",
        )
    else:
        first = payors[0]
        ref = reference_of(first)
        if get_str(first, "reference") and ref is None:
            warn("payor[0]", "reference is not a FHIR reference", issues.BAD_REFERENCE)
        # The reference parsed above, not again: `name_of` with the target it points at.
        target = resolve(ref, included or {}, container=resource) if ref is not None else None
        payor = name_of(first, target, included or {})
        payor_ref = ref.key if ref and not ref.contained else None
        if ref is None and payor:
            warn("payor[0]", "payor has a display but no reference", issues.DISPLAY_ONLY_REFERENCE)
        elif payor is None:
            warn(
                "payor[0]",
                "payor has no name",
                issues.UNRESOLVED_REFERENCE,
                "The coverage record's payor (the insurer) has no name: the reference has no "
                "display and the organization it points at was not read.",
            )

    classes = _class_values(resource)
    plan_name, plan_id = classes.get("plan", (None, None))
    group_name, group_value = classes.get("group", (None, None))
    member_id = _member_id(resource)
    if member_id is None:
        warn(
            "subscriberId",
            "no member id (subscriberId or MB identifier)",
            issues.MISSING,
            "The coverage record has no member id (subscriberId or an identifier of type MB).",
        )
    coverage_id = warn.resource_id
    plan = plan_name or plan_id
    group = group_value or group_name
    order = get_int(resource, "order")
    warnings = tuple(warn.found)
    # Positional, each argument the local of its field's name (a test checks the order):
    # keyword arguments cost a microsecond more per record.
    return Policy(
        coverage_id,
        state,
        status,
        payor,
        payor_ref,
        plan,
        plan_id,
        group,
        member_id,
        order,
        period_start,
        period_end,
        days_left,
        warnings,
    )


def _policy_order(policy: Policy) -> tuple[int, int, int]:
    """Usable first, by `order` (1 = primary; no order after any order), then the rest by
    how recently they ended."""
    usable = policy.state in _USABLE
    return (
        0 if usable else 1,
        policy.order if policy.order is not None else 1_000_000,
        0 if usable or policy.period_end is None else -policy.period_end.toordinal(),
    )


def beneficiary_of(coverage: object) -> str | None:
    """`Patient/<id>` the Coverage is for (its beneficiary), in any reference form."""
    return patient_key(get_dict(coverage, "beneficiary"))


def to_insurance(
    coverages: Sequence[Mapping[str, Any]],
    *,
    now: dt.datetime,
    expiring_days: int = 30,
    included: Mapping[str, Mapping[str, Any]] | None = None,
) -> Insurance:
    """Map all of a patient's Coverages; `included` may hold `_include`d payor Organizations.

    The calendar day is `now`'s own: pass `now` in the viewer's zone.
    """
    require_aware(now)
    today = now.date()
    policies = [
        to_policy(c, today=today, expiring_days=expiring_days, included=included)
        for c in coverages
        if (type(c) is dict or isinstance(c, Mapping))
        and get_str(c, "status") != "entered-in-error"
    ]
    if len(policies) > 1:
        policies.sort(key=_policy_order)  # stable: policies that tie keep the EHR's order
    primary = None
    for policy in policies:
        if policy.state in _USABLE:
            primary = policy
            break
    if not policies:
        state = "none"
    elif primary is not None:
        state = primary.state
    else:
        present = {p.state for p in policies}
        state = next(s for s in ("expired", "cancelled", "unknown") if s in present)
    ordered = tuple(policies)
    return Insurance(state, primary, ordered, expiring_days)
