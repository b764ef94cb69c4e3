"""Work the tolerant mapping does per page (issue 16 §2), counted rather than timed: each
test fails if its optimisation is undone, and checks the output did not change with it.

Time is frozen (passed as `now`) at 22:13 in Chicago, UTC-6.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import json
import pickle
import sys
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fhir_mappers import (
    appointment,
    contact,
    context,
    coverage,
    fhirutil,
    flags,
    issues,
    patient,
)
from fhir_mappers.context import build_context
from fhir_mappers.fhirutil import index_resources, require_aware
from fhir_mappers.records import quick_init

NOW = dt.datetime.fromisoformat("2026-11-30T22:13:00-06:00")
TZ_EXT = "http://hl7.org/fhir/StructureDefinition/timezone"
PRACTITIONER = {
    "resourceType": "Practitioner",
    "id": "lee",
    "name": [{"family": "Lee", "given": ["Ana"], "prefix": ["Dr."]}],
}
LOCATION = {
    "resourceType": "Location",
    "id": "den",
    "name": "Denver clinic",
    "extension": [{"url": TZ_EXT, "valueCode": "America/Denver"}],
}


def _appointment(aid: str, day: int) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "status": "booked",
        "start": f"2026-12-{day:02d}T10:00:00-07:00",
        "end": f"2026-12-{day:02d}T10:30:00-07:00",
        "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/lee"}, "status": "accepted"},
            {"actor": {"reference": "Location/den", "display": "old name"}, "status": "accepted"},
        ],
    }


PAGE = [_appointment(f"a{day}", day) for day in range(1, 6)]


def _count(monkeypatch: pytest.MonkeyPatch, module: object, name: str, calls: list[str]) -> None:
    real: Callable[..., Any] = getattr(module, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)


def _context(**overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "patient": None,
        "appointments": PAGE,
        "included": [PRACTITIONER, LOCATION],
        "coverages": [],
        "now": NOW,
        "viewer_tz": "America/Chicago",
        "validate": False,
    }
    return build_context(**{**fields, **overrides})


def test_a_page_of_visits_parses_and_names_each_reference_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Five visits with the same patient, practitioner and place: three references parsed,
    resolved and two targets named, not fifteen and ten (a reference seen before on the
    page is found in the page's memo without a call)."""
    parsed: list[str] = []
    named: list[str] = []
    resolved: list[str] = []
    _count(monkeypatch, fhirutil, "_parse_reference", parsed)
    _count(monkeypatch, appointment, "resource_name", named)
    _count(monkeypatch, appointment, "_resolve_actor", resolved)
    visits = _context().visits
    assert len(parsed) == 3
    assert len(resolved) == 3
    assert len(named) == 2
    assert {(v.practitioner, v.location, v.location_tz) for v in visits} == {
        ("Dr. Ana Lee", "Denver clinic", "America/Denver")
    }


def test_a_contained_actor_is_resolved_in_its_own_appointment() -> None:
    """`#id` means "in this resource": the per-page memo must not hand one appointment's
    contained practitioner to another."""
    page = []
    for aid, family in (("a1", "One"), ("a2", "Two")):
        appt = _appointment(aid, 1)
        appt["contained"] = [
            {"resourceType": "Practitioner", "id": "p", "name": [{"family": family}]}
        ]
        appt["participant"][1] = {"actor": {"reference": "#p"}, "status": "accepted"}
        page.append(appt)
    visits = _context(appointments=page).visits
    assert [v.practitioner for v in visits] == ["One", "Two"]


def test_a_page_of_visits_checks_the_viewer_zone_once(monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up: list[str] = []
    _count(monkeypatch, appointment, "zone", looked_up)
    _count(monkeypatch, context, "zone", looked_up)
    visits = _context().visits
    assert looked_up == ["zone"]  # not once per visit, nor again for the visits
    assert [v.timing for v in visits] == ["upcoming"] * 5


def test_a_coverage_reads_its_classes_and_payor_reference_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan_type = {"coding": [{"code": "plan"}]}
    group_type = {"coding": [{"code": "group"}]}
    cov = {
        "resourceType": "Coverage",
        "id": "c1",
        "status": "active",
        "subscriberId": "M1",
        "payor": [{"reference": "Organization/o1", "display": "Acme"}],
        "class": [
            {"type": group_type, "value": "G-7", "name": "Group seven"},
            {"type": plan_type, "value": "P-1", "name": "Gold"},
        ],
    }
    read: list[str] = []
    parsed: list[str] = []
    _count(monkeypatch, coverage, "codes", read)
    _count(monkeypatch, fhirutil, "_parse_reference", parsed)
    policy = coverage.to_policy(cov, today=NOW.date(), included=index_resources([]))
    assert len(read) == 2  # one per class, not one per class per kind looked for
    assert len(parsed) == 1
    assert (policy.plan, policy.plan_id, policy.group, policy.payor, policy.payor_ref) == (
        "Gold",
        "P-1",
        "G-7",
        "Acme",
        "Organization/o1",
    )


def test_a_patient_reads_its_language_and_contact_channels_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resource = {
        "resourceType": "Patient",
        "id": "p1",
        "extension": [
            {"url": contact.CONTACT_RESTRICTION_URL, "valueCode": "no-sms"},
            {"url": contact.CONTACT_RESTRICTION_URL, "valueCode": "no-call"},
        ],
        "telecom": [
            {"system": "phone", "value": "+1 312 555 0100", "use": "home"},
            {"system": "phone", "value": "+1 312 555 0101", "use": "mobile"},
            {"system": "email", "value": "p@example.com"},
        ],
        "communication": [
            {"language": {"coding": [{"system": contact.BCP47, "code": "es"}], "text": "Spanish"}}
        ],
        "birthDate": "1980-07",
    }
    communications: list[str] = []
    channels: list[str] = []
    _count(monkeypatch, patient, "preferred_communication", communications)
    _count(monkeypatch, patient, "channel_of", channels)
    found = patient.to_contact(resource, now=NOW)
    assert len(communications) == 1
    assert len(channels) == 3  # once per contact point
    assert (found.preferred_language, found.language_display) == ("es", "Spanish")
    assert (found.preferred_channel, found.phone_reachable) == ("email", False)
    assert [w.code for w in found.warnings if w.field == "birthDate"] == ["partial-date"]


# Frozen records the tolerant mapping builds per resource (issue 16 §2).
RECORDS = (
    appointment.Visit,
    patient.Contact,
    patient.Telecom,
    patient.PostalAddress,
    coverage.Policy,
    coverage.Insurance,
    context.HelpdeskContext,
    issues.DataWarning,
)


@pytest.mark.parametrize("cls", RECORDS, ids=lambda cls: cls.__name__)
def test_mapper_records_are_built_without_a_setattr_call_per_field(cls: type) -> None:
    """A frozen dataclass's own `__init__` calls `object.__setattr__` once per field (a
    tenth of the tolerant mapping's time on the bench population); `records.quick_init`
    writes the fields without it, with the dataclass's signature."""
    init = cls.__init__
    assert "__setattr__" not in init.__code__.co_names
    fields = [f.name for f in dataclasses.fields(cls)]
    assert list(inspect.signature(init).parameters)[1:] == fields


@quick_init
@dataclasses.dataclass(frozen=True)
class _Sample:
    a: int
    b: str = "b"
    c: str = ""

    def __post_init__(self) -> None:
        if not self.c:
            object.__setattr__(self, "c", self.b * 2)


def test_quick_init_keeps_what_a_frozen_dataclass_does() -> None:
    one = _Sample(1)
    assert (one.a, one.b, one.c) == (1, "b", "bb")
    assert _Sample(1, "x") == _Sample(a=1, b="x") == _Sample(1, b="x", c="xx")
    assert hash(_Sample(1, "x")) == hash(_Sample(1, b="x", c="xx"))
    assert repr(one) == "_Sample(a=1, b='b', c='bb')"
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.a = 2  # type: ignore[misc]
    assert dataclasses.replace(one, b="y") == _Sample(1, "y", "bb")
    assert pickle.loads(pickle.dumps(one)) == one
    with pytest.raises(TypeError):
        _Sample()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _Sample(1, d=2)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "options",
    [{"frozen": False}, {"frozen": True, "slots": True}],
)
def test_quick_init_refuses_what_it_would_build_wrongly(options: dict[str, bool]) -> None:
    @dataclasses.dataclass(**options)  # type: ignore[call-overload]
    class Odd:
        a: int

    with pytest.raises(TypeError):
        quick_init(Odd)


@pytest.mark.parametrize(
    "spec",
    [
        dataclasses.field(default_factory=list),
        dataclasses.field(default=1, kw_only=True),
        dataclasses.field(default=1, init=False),
    ],
)
def test_quick_init_refuses_fields_it_does_not_build(spec: Any) -> None:
    @dataclasses.dataclass(frozen=True)
    class Odd:
        a: Any = spec

    with pytest.raises(TypeError):
        quick_init(Odd)


def _bench_pages() -> list[dict[str, Any]]:
    """The bench's population (section 2): one searchset page per fixture patient."""
    from bench.mapping import _split, fixture_bundles

    return [_split(json.loads(blob)) for _, blob in fixture_bundles(NOW)]


def test_a_clean_page_maps_in_few_python_calls() -> None:
    """The tolerant mapping of the bench population, counted in Python-level function
    calls (sys.setprofile): 410 per page before issue 16's restructuring of the readers
    (a generator, a lambda, a NamedTuple and a getter call per field), 239 after."""
    pages = _bench_pages()
    for page in pages:  # caches (parsed references, zones) as in a running process
        build_context(**page, now=NOW, viewer_tz="America/Chicago", validate=False)
    calls = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        for page in pages:
            build_context(**page, now=NOW, viewer_tz="America/Chicago", validate=False)
    finally:
        sys.setprofile(None)
    assert calls / len(pages) <= 260


# Records the mappers build by the thousand are built positionally (a keyword call of a
# 25-field record costs a microsecond more): each argument must be the local variable of
# its field's name, so a swap cannot pass unseen. (call site, record) -> aliases.
POSITIONAL = {
    ("appointment.py", "Visit"): {},
    ("patient.py", "Contact"): {},
    ("coverage.py", "Policy"): {},
    ("context.py", "HelpdeskContext"): {"flags": "codes"},
}


@pytest.mark.parametrize(("module", "record"), sorted(POSITIONAL), ids=lambda v: str(v))
def test_records_built_positionally_name_each_field(module: str, record: str) -> None:
    import ast
    from pathlib import Path

    import fhir_mappers

    source = Path(fhir_mappers.__file__).with_name(module).read_text(encoding="utf-8")
    cls = next(c for c in RECORDS if c.__name__ == record)
    fields = [f.name for f in dataclasses.fields(cls)]
    aliases = POSITIONAL[(module, record)]
    calls = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == record
    ]
    assert calls
    for call in calls:
        assert not call.keywords
        names = [arg.id if isinstance(arg, ast.Name) else ast.dump(arg) for arg in call.args]
        assert names == [aliases.get(f, f) for f in fields]


def test_an_aware_now_in_a_zone_is_taken_without_looking_up_its_offset() -> None:
    """`require_aware` runs two or three times per context: a ZoneInfo or a fixed offset
    always has an offset, so it is not searched for (a search of the zone's rules, a
    tenth of an empty context's time in the build). Any other tzinfo is still asked."""
    asked = 0

    class Counting(dt.datetime):
        def utcoffset(self) -> dt.timedelta | None:
            nonlocal asked
            asked += 1
            return super().utcoffset()

    for tz in (ZoneInfo("America/Chicago"), dt.timezone(dt.timedelta(hours=-6)), dt.UTC):
        require_aware(Counting(2026, 11, 30, 9, 0, tzinfo=tz))
    assert asked == 0

    class Odd(dt.tzinfo):  # a tzinfo that knows no offset: the datetime is naive
        def utcoffset(self, when: dt.datetime | None) -> dt.timedelta | None:
            return None

        def dst(self, when: dt.datetime | None) -> dt.timedelta | None:
            return None

        def tzname(self, when: dt.datetime | None) -> str | None:
            return None

    with pytest.raises(ValueError, match="aware"):
        require_aware(Counting(2026, 11, 30, 9, 0, tzinfo=Odd()))
    assert asked == 1
    with pytest.raises(ValueError, match="aware"):
        require_aware(dt.datetime(2026, 11, 30, 9, 0))


def test_flags_are_ordered_by_the_vocabulary_without_a_sort(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`ordered` walks the vocabulary instead of sorting by rank (every context orders
    its flags twice): same answer, unknown codes dropped, repeats once."""
    codes = [flags.VISIT_TODAY, "made-up", flags.DECEASED, flags.VISIT_TODAY, flags.NO_SHOW]
    sorts = 0

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal sorts
        sorts += 1
        return sorted(*args, **kwargs)

    monkeypatch.setattr(flags, "sorted", counting, raising=False)
    found = flags.ordered(codes)
    described = flags.describe(codes)
    assert found == (flags.DECEASED, flags.NO_SHOW, flags.VISIT_TODAY)
    assert [f.code for f in described] == list(found)
    assert flags.ordered([]) == ()
    assert sorts == 0
