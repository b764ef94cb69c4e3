"""Coverage -> Insurance."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fhir_mappers.coverage import to_insurance

CHI = ZoneInfo("America/Chicago")
NOW = dt.datetime(2026, 11, 27, 9, 30, tzinfo=CHI)
PLAN = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "plan"}]
}
GROUP = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "group"}]
}


def cov(
    cid: str = "c1",
    *,
    status: str = "active",
    start: str | None = "2026-01-01",
    end: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    res: dict[str, Any] = {
        "resourceType": "Coverage",
        "id": cid,
        "status": status,
        "beneficiary": {"reference": "Patient/p1"},
        "payor": [{"reference": "Organization/o1", "display": "Acme Health"}],
        "subscriberId": f"M-{cid}",
        "period": period,
    }
    res.update(fields)
    return res


@pytest.mark.parametrize(
    ("fields", "state", "days_left"),
    [
        ({}, "active", None),
        ({"end": "2027-06-30"}, "active", 215),
        ({"end": "2026-12-27"}, "expiring", 30),
        ({"end": "2026-12-28"}, "active", 31),
        ({"end": "2026-11-27"}, "expiring", 0),  # last covered day is today
        ({"end": "2026-11-26"}, "expired", -1),  # status still says active: real EHRs do this
        ({"end": "2026-11-26T23:59:59-06:00"}, "expired", -1),
        ({"end": "2026-11"}, "expiring", 3),  # a partial end means the whole month
        ({"end": "2026-10"}, "expired", -27),
        ({"status": "cancelled", "end": "2027-01-01"}, "cancelled", 35),
        ({"status": "cancelled", "end": "2020-01-01"}, "cancelled", -2522),
        ({"status": "draft"}, "unknown", None),
        ({"start": "2026-12-01"}, "unknown", None),  # not started yet
        ({"status": "draft", "end": "2026-01-01"}, "expired", -330),
    ],
)
def test_state_comes_from_the_period_first_then_the_status(
    fields: dict[str, Any], state: str, days_left: int | None
) -> None:
    ins = to_insurance([cov(**fields)], now=NOW)
    (policy,) = ins.policies
    assert (policy.state, policy.days_left) == (state, days_left)
    assert ins.state == state


def test_expiring_window_is_configurable() -> None:
    ins = to_insurance([cov(end="2026-12-07")], now=NOW, expiring_days=7)
    assert ins.state == "active"
    ins = to_insurance([cov(end="2026-12-04")], now=NOW, expiring_days=7)
    assert ins.state == "expiring"


def test_no_coverages_is_none_and_entered_in_error_is_ignored() -> None:
    assert to_insurance([], now=NOW).state == "none"
    ins = to_insurance([cov(status="entered-in-error")], now=NOW)
    assert (ins.state, ins.policies, ins.primary) == ("none", (), None)


def test_two_active_coverages_are_ordered_and_the_first_is_primary() -> None:
    ins = to_insurance(
        [cov("secondary", order=2), cov("old", end="2025-12-31"), cov("primary", order=1)],
        now=NOW,
    )
    assert [p.coverage_id for p in ins.policies] == ["primary", "secondary", "old"]
    assert ins.primary is not None and ins.primary.coverage_id == "primary"
    assert ins.state == "active"


@pytest.mark.parametrize(
    ("states", "overall"),
    [
        ([{"end": "2026-01-01"}, {"status": "cancelled"}], "expired"),
        ([{"status": "cancelled"}, {"status": "draft"}], "cancelled"),
        ([{"status": "draft"}], "unknown"),
        ([{"end": "2026-01-01"}, {"end": "2026-12-01"}], "expiring"),
    ],
)
def test_overall_state_when_nothing_is_usable_or_partly_usable(
    states: list[dict[str, Any]], overall: str
) -> None:
    coverages = [cov(f"c{i}", **fields) for i, fields in enumerate(states)]
    assert to_insurance(coverages, now=NOW).state == overall


def test_payor_plan_group_and_member_id() -> None:
    org = {"resourceType": "Organization", "id": "o1", "name": "Acme Health Plans Inc."}
    ins = to_insurance(
        [
            cov(
                **{
                    "class": [
                        {"type": GROUP, "value": "G-77", "name": "Employees"},
                        {"type": PLAN, "value": "PPO-1", "name": "Acme PPO"},
                    ]
                }
            )
        ],
        now=NOW,
        included={"Organization/o1": org},
    )
    p = ins.primary
    assert p is not None
    assert (p.payor, p.payor_ref) == ("Acme Health Plans Inc.", "Organization/o1")
    assert (p.plan, p.plan_id, p.group) == ("Acme PPO", "PPO-1", "G-77")
    assert p.member_id == "M-c1"
    assert p.warnings == ()


def test_member_id_falls_back_to_the_mb_identifier() -> None:
    res = cov(
        identifier=[
            {"type": {"coding": [{"code": "SN"}]}, "value": "not-this"},
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}
                    ]
                },
                "value": "MB-123",
            },
        ]
    )
    del res["subscriberId"]
    assert to_insurance([res], now=NOW).policies[0].member_id == "MB-123"


@pytest.mark.parametrize(
    ("payor", "name", "ref", "warning"),
    [
        ([{"display": "Aetna"}], "Aetna", None, ("payor[0]", "display-only-reference")),
        (None, None, None, ("payor", "missing-required")),
        (
            [{"reference": "Organization/x"}],
            None,
            "Organization/x",
            ("payor[0]", "unresolved-reference"),
        ),
        ([{"reference": "junk", "display": "J"}], "J", None, ("payor[0]", "bad-reference")),
    ],
)
def test_odd_payors_are_mapped_with_a_warning(
    payor: list[dict[str, Any]] | None, name: str | None, ref: str | None, warning: tuple[str, str]
) -> None:
    res = cov()
    if payor is None:
        del res["payor"]
    else:
        res["payor"] = payor
    (policy,) = to_insurance([res], now=NOW).policies
    assert (policy.payor, policy.payor_ref) == (name, ref)
    assert warning in [(w.field, w.code) for w in policy.warnings]
    assert policy.state == "active"  # an odd payor does not change whether one is covered


def test_the_calendar_day_is_nows_own() -> None:
    # 23:30 on the 26th in Chicago is already the 27th in UTC
    late = dt.datetime(2026, 11, 26, 23, 30, tzinfo=CHI)
    assert to_insurance([cov(end="2026-11-26")], now=late).state == "expiring"
    assert to_insurance([cov(end="2026-11-26")], now=late.astimezone(dt.UTC)).state == "expired"


def test_unreadable_period_dates_are_warned_and_do_not_decide_the_state() -> None:
    (policy,) = to_insurance([cov(start="01/01/2026", end="soon")], now=NOW).policies
    assert policy.state == "active"
    assert (policy.period_start, policy.period_end, policy.days_left) == (None, None, None)
    assert [(w.field, w.code) for w in policy.warnings] == [
        ("period.start", "bad-value"),
        ("period.end", "bad-value"),
    ]
