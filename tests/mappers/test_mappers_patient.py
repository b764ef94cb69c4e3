"""Patient -> Contact."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fhir_mappers.contact import CONTACT_RESTRICTION_URL
from fhir_mappers.patient import to_contact

CHI = ZoneInfo("America/Chicago")
NOW = dt.datetime(2026, 11, 27, 9, 30, tzinfo=CHI)
MR = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}


def patient(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"type": MR, "value": "MRN-1"}],
        "name": [{"use": "official", "family": "Okafor", "given": ["Ngozi"]}],
        "telecom": [{"system": "phone", "value": "555-0100", "use": "mobile"}],
    }
    base.update(fields)
    return base


def restriction(code: str) -> dict[str, Any]:
    return {"url": CONTACT_RESTRICTION_URL, "valueCoding": {"code": code}}


def codes(contact: Any) -> list[tuple[str, str]]:
    return [(w.field, w.code) for w in contact.warnings]


M = {"system": "phone", "value": "mobile-1", "use": "mobile"}
H = {"system": "phone", "value": "home-1", "use": "home"}
E = {"system": "email", "value": "e@example.com", "use": "home"}


@pytest.mark.parametrize(
    ("telecom", "restrictions", "channel", "preferred_value"),
    [
        ([M, H, E], [], "sms", "mobile-1"),
        ([M, H, E], ["no-sms"], "phone", "mobile-1"),  # the mobile can still be called
        ([M, H, E], ["no-sms", "no-call"], "email", "e@example.com"),
        ([M, H, E], ["no-sms", "no-call", "no-email"], None, None),
        ([{**H, "rank": 2}, {**E, "rank": 1}], [], "email", "e@example.com"),
        ([H, {**E, "rank": 5}], [], "email", "e@example.com"),  # ranked before unranked
        ([H, E], [], "phone", "home-1"),  # unranked: the EHR's order
        ([{"system": "sms", "value": "s-1"}], [], "sms", "s-1"),
        ([{**M, "period": {"end": "2025-01-31"}}, E], [], "email", "e@example.com"),
        ([{**M, "use": "old"}, H], [], "phone", "home-1"),
        ([{**M, "period": {"end": "2026-11-27"}}], [], "sms", "mobile-1"),  # through today
        ([{**M, "period": {"end": "2026-11-27T09:00:00-06:00"}}, E], [], "email", "e@example.com"),
        ([{"system": "fax", "value": "f"}], [], None, None),
    ],
)
def test_preferred_channel_respects_rank_period_and_restrictions(
    telecom: list[dict[str, Any]],
    restrictions: list[str],
    channel: str | None,
    preferred_value: str | None,
) -> None:
    contact = to_contact(
        patient(telecom=telecom, extension=[restriction(c) for c in restrictions]), now=NOW
    )
    assert contact.preferred_channel == channel
    chosen = [t.value for t in (*contact.phones, *contact.emails) if t.preferred]
    assert chosen == ([preferred_value] if preferred_value else [])
    assert contact.restrictions == tuple(restrictions)


def test_restriction_as_value_code_and_unknown_extensions_are_ignored() -> None:
    contact = to_contact(
        patient(
            extension=[
                {"url": CONTACT_RESTRICTION_URL, "valueCode": "no-sms"},
                {"url": "http://other/ext", "valueCode": "no-email"},
                {"valueString": "no url"},
            ]
        ),
        now=NOW,
    )
    assert contact.restrictions == ("no-sms",)
    assert contact.preferred_channel == "phone"


@pytest.mark.parametrize(
    ("birth", "now", "age", "approximate", "warning"),
    [
        ("1990-11-27", NOW, 36, False, None),  # birthday today
        ("1990-11-28", NOW, 35, False, None),  # tomorrow
        # 20:00 in Chicago is already the 28th in UTC: the age follows the local day
        ("1990-11-28", dt.datetime(2026, 11, 27, 20, 0, tzinfo=CHI), 35, False, None),
        ("1980-07", NOW, 46, False, "partial-date"),  # partial, but the age is certain
        ("1980-11", NOW, 45, True, "partial-date"),  # birthday may not have come yet
        ("1980", NOW, 45, True, "partial-date"),
        ("2026-11", NOW, 0, False, "partial-date"),
        ("2027-01-01", NOW, None, False, "bad-value"),
        ("1980-13-01", NOW, None, False, "bad-value"),
        (None, NOW, None, False, None),
    ],
)
def test_age_from_birth_date(
    birth: str | None, now: dt.datetime, age: int | None, approximate: bool, warning: str | None
) -> None:
    contact = to_contact(patient(birthDate=birth) if birth else patient(), now=now)
    assert (contact.age, contact.age_is_approximate) == (age, approximate)
    assert [c for f, c in codes(contact) if f == "birthDate"] == ([warning] if warning else [])


def test_names_mrn_gender_language_and_address() -> None:
    contact = to_contact(
        patient(
            name=[
                {"use": "official", "family": "Chen", "given": ["Robert", "J"]},
                {"use": "nickname", "given": ["Bob"]},
            ],
            identifier=[
                {"type": {"coding": [{"code": "SS"}]}, "value": "999-99-9999"},
                {"type": MR, "value": "00123"},
            ],
            gender="male",
            communication=[
                {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}},
                {
                    "language": {
                        "coding": [
                            {"system": "urn:ietf:bcp:47", "code": "es", "display": "Spanish"}
                        ]
                    },
                    "preferred": True,
                },
            ],
            address=[
                {"use": "old", "line": ["1 Old Rd"], "city": "Gone"},
                {
                    "use": "home",
                    "line": ["12 Main St", "Apt 3"],
                    "city": "Chicago",
                    "state": "IL",
                    "postalCode": "60601",
                    "country": "US",
                },
            ],
        ),
        now=NOW,
    )
    assert contact.display_name == "Robert J Chen"
    assert contact.preferred_name == "Bob"
    assert contact.mrn == "00123"
    assert contact.gender == "male"
    assert (contact.preferred_language, contact.language_display) == ("es", "Spanish")
    assert contact.address is not None
    assert contact.address.text == "12 Main St, Apt 3, Chicago, IL 60601"
    assert contact.warnings == ()


def test_a_usual_name_equal_to_the_official_first_name_is_not_a_preferred_name() -> None:
    contact = to_contact(
        patient(
            name=[
                {"use": "official", "family": "Kim", "given": ["Grace"]},
                {"use": "usual", "given": ["Grace"]},
            ]
        ),
        now=NOW,
    )
    assert contact.preferred_name is None


def test_missing_name_mrn_and_telecom_are_warnings_not_errors() -> None:
    contact = to_contact({"resourceType": "Patient", "id": "bare"}, now=NOW)
    assert contact.display_name is None and contact.mrn is None
    assert contact.phones == () and contact.emails == () and contact.preferred_channel is None
    assert codes(contact) == [
        ("name", "missing"),
        ("identifier", "missing"),
        ("telecom", "missing"),
    ]


@pytest.mark.parametrize(
    ("fields", "deceased"),
    [
        ({"deceasedBoolean": True}, True),
        ({"deceasedDateTime": "2026-01-02"}, True),
        ({"deceasedBoolean": False}, False),
        ({"deceasedBoolean": "yes"}, False),
        ({}, False),
    ],
)
def test_deceased(fields: dict[str, Any], deceased: bool) -> None:
    assert to_contact(patient(**fields), now=NOW).deceased is deceased


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        to_contact(patient(), now=dt.datetime(2026, 11, 27, 9, 30))
