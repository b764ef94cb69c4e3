"""References and dates: the one helper module everything else relies on."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from fhir_mappers.fhirutil import (
    Ref,
    date_bounds,
    human_name,
    identifier_of_type,
    is_partial_date,
    lacks_timezone,
    parse_date,
    parse_datetime,
    parse_reference,
    reference_of,
    require_aware,
    zone,
)

CHI = ZoneInfo("America/Chicago")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Patient/123", Ref("Patient", "123")),
        ("Patient/a.b-C", Ref("Patient", "a.b-C")),
        ("Location/loc-1/_history/3", Ref("Location", "loc-1", version="3")),
        (
            "https://ehr.example.org/fhir/r4/Practitioner/p1",
            Ref("Practitioner", "p1", url="https://ehr.example.org/fhir/r4"),
        ),
        (
            "http://127.0.0.1:9090/fhir/Patient/x/_history/2",
            Ref("Patient", "x", url="http://127.0.0.1:9090/fhir", version="2"),
        ),
        ("#visiting", Ref(None, "visiting", contained=True)),
        (
            "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
            Ref(
                None,
                "61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                url="urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
            ),
        ),
        (" Patient/1 ", Ref("Patient", "1")),
        ("Patient/" + "x" * 80, Ref("Patient", "x" * 80)),  # over-long ids still resolve
    ],
)
def test_parse_reference_reads_every_form(text: str, expected: Ref) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "Patient",
        "Patient/",
        "/123",
        "patient/1",
        "Patient/1 2",
        "Patient?identifier=x|1",
        "http://ehr/fhir/Patient",
        "#",
        "Patient/1/_history/",
        "123",
        "Patient//1",
    ],
)
def test_parse_reference_rejects_garbage(garbage: str) -> None:
    with pytest.raises(ValueError, match="not a FHIR reference"):
        parse_reference(garbage)


def test_parse_reference_rejects_non_strings() -> None:
    with pytest.raises(ValueError):
        parse_reference(42)  # type: ignore[arg-type]


def test_relative_reference_takes_the_given_base_and_keys_ignore_it() -> None:
    ref = parse_reference("Patient/1", base="https://ehr/fhir/")
    assert ref.url == "https://ehr/fhir"
    assert ref.key == "Patient/1"
    assert parse_reference("https://ehr/fhir/Patient/1/_history/9").key == "Patient/1"
    assert parse_reference("#c1").key == "#c1"


def test_reference_of_is_graceful() -> None:
    assert reference_of({"reference": "Patient/1"}) == Ref("Patient", "1")
    assert reference_of({"reference": "nonsense"}) is None
    assert reference_of({"display": "Dr. X"}) is None
    assert reference_of("Patient/1") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T09:30:00-06:00", dt.datetime(2026, 11, 27, 15, 30, tzinfo=dt.UTC)),
        ("2026-11-27T15:30:00Z", dt.datetime(2026, 11, 27, 15, 30, tzinfo=dt.UTC)),
        (
            "2026-11-27T15:30:00.123456789+00:00",
            dt.datetime(2026, 11, 27, 15, 30, 0, 123456, tzinfo=dt.UTC),
        ),
        ("2026-11-27T09:30-06:00", dt.datetime(2026, 11, 27, 15, 30, tzinfo=dt.UTC)),
        # no offset: the default zone (here Chicago, UTC-6 in November)
        ("2026-11-27T09:30:00", dt.datetime(2026, 11, 27, 15, 30, tzinfo=dt.UTC)),
        ("2026-11-27", dt.datetime(2026, 11, 27, 6, 0, tzinfo=dt.UTC)),
        ("2026-11", dt.datetime(2026, 11, 1, 5, 0, tzinfo=dt.UTC)),  # CDT until Nov 1st 2am
        ("2026", dt.datetime(2026, 1, 1, 6, 0, tzinfo=dt.UTC)),
        ("2026-07-01T12:00:00", dt.datetime(2026, 7, 1, 17, 0, tzinfo=dt.UTC)),  # DST
    ],
)
def test_parse_datetime_gives_aware_values(text: str, expected: dt.datetime) -> None:
    parsed = parse_datetime(text, CHI)
    assert parsed is not None and parsed.tzinfo is not None
    assert parsed == expected


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "2026-13-01",
        "2026-02-30",
        "27/11/2026",
        "2026-11-27T25:00:00Z",
        "tomorrow",
        None,
        20261127,
        ["2026"],
    ],
)
def test_parse_datetime_returns_none_on_garbage(garbage: object) -> None:
    assert parse_datetime(garbage, CHI) is None


def test_parse_datetime_accepts_a_zone_name_and_falls_back_to_utc() -> None:
    assert parse_datetime("2026-11-27T09:30:00", "America/Denver") == dt.datetime(
        2026, 11, 27, 16, 30, tzinfo=dt.UTC
    )
    assert parse_datetime("2026-11-27T09:30:00", "Not/AZone") == dt.datetime(
        2026, 11, 27, 9, 30, tzinfo=dt.UTC
    )


@pytest.mark.parametrize(
    ("text", "no_tz", "partial"),
    [
        ("2026-11-27T14:00:00", True, False),
        ("2026-11-27T14:00", True, False),
        ("2026-11-27T14:00:00-06:00", False, False),
        ("2026-11-27T14:00:00Z", False, False),
        ("2026-11-27", False, False),
        ("2026-11", False, True),
        ("2026", False, True),
        ("garbage", False, False),
        (None, False, False),
    ],
)
def test_timezone_and_partial_detection(text: object, no_tz: bool, partial: bool) -> None:
    assert lacks_timezone(text) is no_tz
    assert is_partial_date(text) is partial


@pytest.mark.parametrize(
    ("text", "bounds"),
    [
        ("1980-07", (dt.date(1980, 7, 1), dt.date(1980, 7, 31))),
        ("2024-02", (dt.date(2024, 2, 1), dt.date(2024, 2, 29))),
        ("1980", (dt.date(1980, 1, 1), dt.date(1980, 12, 31))),
        ("2026-11-27", (dt.date(2026, 11, 27), dt.date(2026, 11, 27))),
        ("2026-11-27T23:30:00-06:00", (dt.date(2026, 11, 27), dt.date(2026, 11, 27))),
        ("2026-02-30", None),
        ("x", None),
    ],
)
def test_date_bounds_cover_partial_dates(text: str, bounds: tuple[dt.date, dt.date] | None) -> None:
    assert date_bounds(text) == bounds
    assert parse_date(text) == (bounds[0] if bounds else None)


def test_zone_refuses_paths_and_unknown_names() -> None:
    assert zone("America/Chicago") == CHI
    for bad in ("../etc/passwd", "/etc/localtime", "Mars/Olympus", "", None, 5):
        assert zone(bad) is None


def test_require_aware_refuses_naive_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        require_aware(dt.datetime(2026, 11, 27, 9, 30))  # naive on purpose
    assert require_aware(dt.datetime(2026, 11, 27, tzinfo=CHI)).tzinfo is CHI


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (
            [{"use": "official", "family": "Lee", "given": ["Ana"], "prefix": ["Dr."]}],
            "Dr. Ana Lee",
        ),
        (
            [
                {"use": "usual", "given": ["Bob"]},
                {"use": "official", "family": "Chen", "given": ["Robert"]},
            ],
            "Robert Chen",
        ),
        ([{"use": "old", "family": "Smith"}, {"family": "Jones", "given": ["Ann"]}], "Ann Jones"),
        ([{"text": "Ms. Q"}], "Ms. Q"),
        ([{"family": "Doe", "given": ["J"], "suffix": ["Jr."]}], "J Doe, Jr."),
        ([{"use": "maiden", "family": "Only"}], "Only"),
        ([], None),
        ("Bob", None),
        ([1, None], None),
    ],
)
def test_human_name_picks_the_best_name(names: object, expected: str | None) -> None:
    assert human_name(names) == expected


_V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _ident(value: object, code: str, system: str | None = _V2) -> dict[str, object]:
    coding = {"code": code} if system is None else {"system": system, "code": code}
    return {"type": {"coding": [coding]}, "value": value}


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"identifier": [_ident("A1", "MB"), _ident("M7", "MR")]}, "M7"),
        ({"identifier": [_ident("M8", "MR", system=None)]}, "M8"),  # no system: table 0203
        ({"identifier": [_ident("X1", "MR", system="urn:local"), _ident("M9", "MR")]}, "M9"),
        ({"identifier": [_ident("", "MR"), _ident(None, "MR"), _ident("M2", "MR")]}, "M2"),
        ({"identifier": [{"type": {"coding": [{"code": "MR"}]}}]}, None),
        ({"identifier": "MR"}, None),
        ("not a resource", None),
    ],
)
def test_identifier_of_type_reads_the_first_usable_v2_0203_identifier(
    resource: object, expected: str | None
) -> None:
    assert identifier_of_type(resource, "MR") == expected


def test_a_references_key_is_worked_out_once_and_follows_replace() -> None:
    """`Ref.key` is stored when the Ref is made (the build turned the cached_property
    it was into a property built on every read); it is no argument, no part of equality
    or repr, and `replace` works it out again."""
    import copy
    import dataclasses
    import pickle

    ref = parse_reference("Practitioner/p1")
    assert vars(ref)["key"] == ref.key == "Practitioner/p1"
    assert dataclasses.replace(ref, id="p2").key == "Practitioner/p2"
    assert Ref("Patient", "1", key="Wrong/9").key == "Patient/1"
    assert Ref(None, "c1", contained=True).key == "#c1"
    assert Ref(None, "urn:uuid:1", url="urn:uuid:1").key == "urn:uuid:1"
    assert "key" not in repr(ref)
    assert ref == Ref("Practitioner", "p1") and hash(ref) == hash(Ref("Practitioner", "p1"))
    assert pickle.loads(pickle.dumps(ref)).key == copy.deepcopy(ref).key == ref.key
