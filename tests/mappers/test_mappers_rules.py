"""The FHIR readings every part of CareDesk shares (fhir_mappers.contact, .names,
.appointment.patient_of, .fhirutil.resource_zone, .bundle.search_entries): one rule each,
table-driven, with the wrong shapes real EHR JSON has."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fhir_mappers import contact
from fhir_mappers.appointment import patient_of, patients_of, to_visit
from fhir_mappers.board import patient_of as board_patient_of
from fhir_mappers.bundle import search_entries
from fhir_mappers.context import patient_refs
from fhir_mappers.coverage import beneficiary_of, to_insurance
from fhir_mappers.fhirutil import TIMEZONE_EXT, in_zone, index_resources, resource_zone
from fhir_mappers.names import reference_name, unresolved_references
from fhir_mappers.patient import to_contact

NOW = dt.datetime(2026, 11, 30, 22, 13, tzinfo=ZoneInfo("America/Chicago"))
URL = contact.CONTACT_RESTRICTION_URL


def patient(*extensions: dict[str, Any], **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "p1",
        "telecom": [
            {"system": "phone", "use": "mobile", "value": "+1 312 555 0100"},
            {"system": "phone", "use": "home", "value": "+1 312 555 0101"},
            {"system": "email", "value": "a@example.org"},
        ],
        "extension": list(extensions),
    }
    base.update(fields)
    return base


# --- contact restrictions ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extension", "codes"),
    [
        ({"url": URL, "valueCode": "no-contact"}, ("no-contact",)),
        ({"url": URL, "valueCoding": {"code": "no-contact"}}, ("no-contact",)),
        ({"url": URL, "valueCodeableConcept": {"coding": [{"code": "no-sms"}]}}, ("no-sms",)),
        ({"url": URL, "valueCode": "no-phone"}, ("no-call",)),  # a synonym seen in the wild
        ({"url": URL, "valueCode": " no-email "}, ("no-email",)),
        ({"url": URL, "valueCode": "no-fax"}, ("no-fax",)),  # kept, blocks nothing
        ({"url": URL, "valueCoding": "no-sms"}, ()),  # wrong shape: nothing readable
        ({"url": URL, "valueCode": 7}, ()),
        ({"valueCode": "no-sms"}, ()),  # no url: not ours
        ({"url": "https://other.example/ext", "valueCode": "no-sms"}, ()),
    ],
)
def test_restrictions_are_read_from_value_code_coding_or_concept(
    extension: dict[str, Any], codes: tuple[str, ...]
) -> None:
    assert contact.restrictions_of(patient(extension)) == codes


def test_restrictions_come_once_each_in_the_ehr_order() -> None:
    found = contact.restrictions_of(
        patient(
            {"url": URL, "valueCode": "no-email"},
            {"url": URL, "valueCoding": {"code": "no-sms"}},
            {"url": URL, "valueCode": "no-email"},
        )
    )
    assert found == ("no-email", "no-sms")


@pytest.mark.parametrize(
    ("codes", "sms", "email", "call", "survey"),
    [
        ((), True, True, True, True),
        (("no-contact",), False, False, False, False),
        (("no-sms",), False, True, True, True),
        (("no-email",), True, False, True, True),
        (("no-call",), True, True, False, True),
        (("no-phone",), True, True, False, True),
        (("no-survey",), True, True, True, False),
        (("no-sms", "no-email"), False, False, True, True),
    ],
)
@pytest.mark.parametrize("form", ["valueCode", "valueCoding"])
def test_may_predicates_follow_the_restrictions_in_either_form(
    codes: tuple[str, ...], sms: bool, email: bool, call: bool, survey: bool, form: str
) -> None:
    exts = [
        {"url": URL, "valueCode": c}
        if form == "valueCode"
        else {"url": URL, "valueCoding": {"code": c}}
        for c in codes
    ]
    pat = patient(*exts)
    assert (
        contact.may_sms(pat),
        contact.may_email(pat),
        contact.may_call(pat),
        contact.may_survey(pat),
    ) == (sms, email, call, survey)


@pytest.mark.parametrize("deceased", [{"deceasedBoolean": True}, {"deceasedDateTime": "2026-10"}])
def test_a_deceased_patient_is_messaged_and_surveyed_by_nothing(deceased: dict[str, Any]) -> None:
    pat = patient(**deceased)
    assert not any(f(pat) for f in (contact.may_sms, contact.may_email, contact.may_survey))
    assert contact.reachable(pat, now=NOW) == []


@pytest.mark.parametrize("garbage", [None, 3, "x", [], ["a"], {"extension": "x"}])
def test_predicates_on_garbage_say_yes_and_never_raise(garbage: Any) -> None:
    # Nothing readable restricts nothing; `reachable` then finds no address anyway.
    assert contact.may_sms(garbage) and contact.may_survey(garbage)
    assert contact.restrictions_of(garbage) == ()
    assert contact.reachable(garbage, now=NOW) == []


# --- reachable (moved from jobs/contact.py; the same cases plus no-contact) --------------

MOBILE = {"system": "phone", "use": "mobile", "value": "+1 1"}
EMAIL = {"system": "email", "value": "a@x.org"}


@pytest.mark.parametrize(
    ("telecom", "codes", "requested", "expected"),
    [
        ([{**MOBILE, "rank": 2}, {**EMAIL, "rank": 1}], (), None, ["email", "sms"]),
        ([MOBILE], ("no-sms",), None, []),
        ([{"system": "phone", "use": "home", "value": "+1 1"}], (), "sms", []),
        ([{**MOBILE, "period": {"end": "2024-01-01"}}, EMAIL], (), None, ["email"]),
        ([{**MOBILE, "use": "old"}], (), None, []),
        ([MOBILE, EMAIL], ("no-email",), "email", []),
        ([MOBILE, EMAIL], ("no-contact",), None, []),
        ([MOBILE, EMAIL], (), "sms", ["sms"]),
        ([{"system": "sms", "value": "+1 2"}, MOBILE], (), None, ["sms"]),  # one per channel
        ([EMAIL, MOBILE], (), None, ["email", "sms"]),  # unranked: the EHR's order
        ("not a list", (), None, []),
    ],
)
def test_reachable_respects_rank_restrictions_and_ended_numbers(
    telecom: Any, codes: tuple[str, ...], requested: str | None, expected: list[str]
) -> None:
    pat = patient(*[{"url": URL, "valueCode": c} for c in codes], telecom=telecom)
    assert [r.channel for r in contact.reachable(pat, now=NOW, requested=requested)] == expected


def test_reachable_puts_the_sidebars_preferred_channel_first() -> None:
    pat = patient(telecom=[{**EMAIL, "rank": 2}, {**MOBILE, "rank": 1}])
    assert to_contact(pat, now=NOW).preferred_channel == "sms"
    assert contact.reachable(pat, now=NOW)[0] == contact.Reachable("sms", "+1 1")


@pytest.mark.parametrize(
    ("codes", "by_phone"),
    [((), True), (("no-sms",), True), (("no-sms", "no-call"), False), (("no-contact",), False)],
)
def test_reachable_by_phone(codes: tuple[str, ...], by_phone: bool) -> None:
    pat = patient(*[{"url": URL, "valueCode": c} for c in codes])
    assert contact.reachable_by_phone(pat, NOW) is by_phone


def test_no_contact_leaves_the_sidebar_no_channel() -> None:
    found = to_contact(patient({"url": URL, "valueCode": "no-contact"}), now=NOW)
    assert found.preferred_channel is None
    assert found.restrictions == ("no-contact",)


# --- language ----------------------------------------------------------------------------


def lang(code: Any, *, preferred: Any = None, system: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"code": code}
    if system:
        coding["system"] = system
    comm: dict[str, Any] = {"language": {"coding": [coding], "text": f"text-{code}"}}
    if preferred is not None:
        comm["preferred"] = preferred
    return comm


@pytest.mark.parametrize(
    ("communication", "preferred", "all_codes"),
    [
        ([lang("en"), lang("es", preferred=True)], "es", ("es", "en")),
        ([lang("en"), lang("es")], "en", ("en", "es")),
        ([lang("es-MX", preferred=True)], "es-MX", ("es-MX",)),
        ([lang("es", preferred="yes")], "es", ("es",)),  # a string is not `true`: first one
        (
            [
                {
                    "language": {
                        "coding": [{"code": "spa"}, {"system": "urn:ietf:bcp:47", "code": "es"}]
                    }
                }
            ],
            "es",
            ("es",),
        ),
        ([], None, ()),
        ("es", None, ()),
        ([{"language": "es"}], None, ()),
        ([{"language": {"coding": {"code": "fr"}}}], "fr", ("fr",)),  # object for a list
    ],
)
def test_preferred_language(
    communication: Any, preferred: str | None, all_codes: tuple[str, ...]
) -> None:
    pat = patient(communication=communication)
    assert contact.preferred_language(pat) == preferred
    assert contact.patient_languages(pat) == all_codes
    assert to_contact(pat, now=NOW).preferred_language == preferred


@pytest.mark.parametrize(
    ("communication", "available", "default", "picked"),
    [
        ([lang("es", preferred=True)], ("en", "es"), None, "es"),
        ([lang("es-MX", preferred=True)], ("en", "es"), None, "es"),
        ([lang("es", preferred=True)], ("en", "es-US"), None, "es-US"),
        ([lang("ar", preferred=True)], ("en", "es"), None, "en"),
        ([lang("ar", preferred=True), lang("es")], ("en", "es"), None, "es"),  # spoken too
        ([lang("ar", preferred=True)], ("en", "es"), "es", "es"),
        ([lang("EN")], ("en",), None, "en"),
        ([], (), None, "en"),
    ],
)
def test_pick_language_among_available(
    communication: list[Any], available: tuple[str, ...], default: str | None, picked: str
) -> None:
    pat = patient(communication=communication)
    assert contact.pick_language(pat, available, default=default) == picked


INTERPRETER = "http://hl7.org/fhir/StructureDefinition/patient-interpreterRequired"


@pytest.mark.parametrize(
    ("fields", "clinic", "needed"),
    [
        ({"communication": [lang("es", preferred=True)]}, ("en",), True),
        ({"communication": [lang("en-US", preferred=True)]}, ("en",), False),
        ({"communication": [lang("es", preferred=True)]}, ("en", "es"), False),
        ({}, ("en",), False),
        (
            {
                "communication": [lang("es", preferred=True)],
                "extension": [{"url": INTERPRETER, "valueBoolean": False}],
            },
            ("en",),
            False,
        ),
        ({"extension": [{"url": INTERPRETER, "valueBoolean": True}]}, ("en",), True),
    ],
)
def test_interpreter_needed(fields: dict[str, Any], clinic: tuple[str, ...], needed: bool) -> None:
    assert contact.interpreter_needed(patient(**fields), clinic) is needed


@pytest.mark.parametrize(
    ("names", "first"),
    [
        (
            [
                {"use": "official", "given": ["Margaret", "Ann"]},
                {"use": "usual", "given": ["Peggy"]},
            ],
            "Peggy",
        ),
        ([{"use": "official", "given": ["Margaret"]}], "Margaret"),
        ([{"use": "maiden", "given": ["Old"]}, {"given": ["New"]}], "New"),
        (
            [{"use": "usual", "given": ["Gone"], "period": {"end": "2020"}}, {"given": ["Now"]}],
            "Now",
        ),
        ([{"text": "Only Text"}], None),
        ("Ana", None),
        ([{"given": "Ana"}], "Ana"),
    ],
)
def test_first_name(names: Any, first: str | None) -> None:
    assert contact.first_name(patient(name=names), today=NOW.date()) == first


# --- the patient of an appointment -------------------------------------------------------


@pytest.mark.parametrize(
    ("participant", "expected"),
    [
        ([{"actor": {"reference": "Patient/1"}}], "Patient/1"),
        ([{"actor": {"reference": "https://ehr/fhir/Patient/1"}}], "Patient/1"),
        ([{"actor": {"reference": "https://ehr/fhir/Patient/1/_history/3"}}], "Patient/1"),
        ([{"actor": {"reference": "Patient/1/_history/3"}}], "Patient/1"),
        (
            [{"actor": {"reference": "Practitioner/9"}}, {"actor": {"reference": "Patient/2"}}],
            "Patient/2",
        ),
        ({"actor": {"reference": "Patient/1"}}, "Patient/1"),  # an object where a list belongs
        ([{"actor": "Patient/1"}], None),
        ([{"actor": ["Patient/1"]}], None),
        ([{"actor": {"reference": 1}}], None),
        ([{"actor": {"reference": "#p1"}}], None),
        ([{"actor": {"reference": "urn:uuid:1b7f"}}], None),
        ([{"actor": {"display": "Ana"}}], None),
        ("Patient/1", None),
        (7, None),
        (None, None),
        ([None, 3, "x"], None),
    ],
)
def test_patient_of_reads_every_reference_form_and_never_raises(
    participant: Any, expected: str | None
) -> None:
    appointment = {"resourceType": "Appointment", "participant": participant}
    assert patient_of(appointment) == expected
    assert board_patient_of(appointment) == expected
    assert patient_refs(appointment) == ([expected] if expected else [])


@pytest.mark.parametrize("garbage", [None, 1, "x", [], {"participant": {"actor": 3}}])
def test_patient_of_garbage_is_none(garbage: Any) -> None:
    assert patient_of(garbage) is None
    assert patients_of(garbage) == []


def test_group_visit_lists_each_patient_once() -> None:
    appointment = {
        "participant": [
            {"actor": {"reference": "Patient/1"}},
            {"actor": {"reference": "https://ehr/fhir/Patient/2"}},
            {"actor": {"reference": "Patient/1/_history/2"}},
        ]
    }
    assert patients_of(appointment) == ["Patient/1", "Patient/2"]


@pytest.mark.parametrize(
    ("beneficiary", "expected"),
    [
        ({"reference": "Patient/1"}, "Patient/1"),
        ({"reference": "http://ehr/Patient/1"}, "Patient/1"),
        ({"reference": "RelatedPerson/1"}, None),
        ("Patient/1", None),
        ([{"reference": "Patient/1"}], None),
    ],
)
def test_beneficiary_of(beneficiary: Any, expected: str | None) -> None:
    coverage = {"resourceType": "Coverage", "beneficiary": beneficiary}
    assert beneficiary_of(coverage) == expected
    assert patient_refs(coverage) == ([expected] if expected else [])


# --- time zone of a resource -------------------------------------------------------------


@pytest.mark.parametrize(
    ("extension", "zone"),
    [
        ([{"url": TIMEZONE_EXT, "valueCode": "America/Denver"}], "America/Denver"),
        ([{"url": TIMEZONE_EXT, "valueCode": "Mars/Olympus"}], None),
        (
            [
                {"url": TIMEZONE_EXT, "valueCode": "Mars/Olympus"},
                {"url": TIMEZONE_EXT, "valueCode": "UTC"},
            ],
            "UTC",
        ),
        ([{"url": TIMEZONE_EXT, "valueString": "America/Denver"}], None),
        ([{"url": TIMEZONE_EXT, "valueCode": "../../etc/passwd"}], None),
        ([{"valueCode": "America/Denver"}], None),
        ({"url": TIMEZONE_EXT, "valueCode": "Europe/Paris"}, "Europe/Paris"),
        ("America/Denver", None),
        ([7, None], None),
    ],
)
def test_resource_zone(extension: Any, zone: str | None) -> None:
    found = resource_zone({"resourceType": "Location", "extension": extension})
    assert (found.key if found else None) == zone


def test_in_zone_is_none_where_python_has_no_calendar() -> None:
    early = dt.datetime(1, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=14)))
    assert in_zone(early, dt.UTC) is None
    assert in_zone(NOW, dt.UTC) == NOW


# --- names of referenced people and places -----------------------------------------------

DR = {"resourceType": "Practitioner", "id": "dr1", "name": [{"given": ["Lee"], "family": "Chan"}]}
CLINIC = {"resourceType": "Location", "id": "loc1", "name": "Denver clinic"}
PAYOR = {"resourceType": "Organization", "id": "org1", "name": "Acme Health"}
ROLE = {
    "resourceType": "PractitionerRole",
    "id": "role1",
    "practitioner": {"reference": "Practitioner/dr1"},
    "code": [{"text": "Family medicine"}],
}


def visit_with(*actors: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": "a1",
        "status": "booked",
        "start": "2026-12-01T10:00:00-06:00",
        "participant": [{"actor": {"reference": "Patient/p1"}}] + [{"actor": a} for a in actors],
    }


def cov_with(payor: Any) -> dict[str, Any]:
    return {"resourceType": "Coverage", "id": "c1", "status": "active", "payor": payor}


@pytest.mark.parametrize(
    ("reference", "included", "container", "name"),
    [
        ({"reference": "Practitioner/dr1"}, [DR], None, "Lee Chan"),
        ({"reference": "https://ehr/fhir/Practitioner/dr1/_history/2"}, [DR], None, "Lee Chan"),
        ({"reference": "Practitioner/dr1", "display": "Dr. Old Name"}, [DR], None, "Lee Chan"),
        ({"reference": "Practitioner/dr1", "display": "Dr. Chan"}, [], None, "Dr. Chan"),
        ({"reference": "Practitioner/dr1"}, [], None, None),
        ({"reference": "PractitionerRole/role1"}, [ROLE, DR], None, "Lee Chan"),
        ({"reference": "PractitionerRole/role1"}, [ROLE], None, "Family medicine"),
        ({"reference": "#loc"}, [], {"contained": [{**CLINIC, "id": "loc"}]}, "Denver clinic"),
        (
            {"reference": "Location/x"},
            [{"resourceType": "Location", "id": "x", "alias": ["Annex"]}],
            None,
            "Annex",
        ),
        ("Practitioner/dr1", [DR], None, None),
    ],
)
def test_reference_name_prefers_the_target_over_the_display(
    reference: Any, included: list[dict[str, Any]], container: Any, name: str | None
) -> None:
    assert reference_name(reference, index_resources(included), container=container) == name


def test_unresolved_references_lists_what_needs_one_read_per_type() -> None:
    appointments = [
        visit_with({"reference": "Practitioner/dr1"}, {"reference": "Location/loc1"}),
        visit_with(
            {"reference": "https://ehr/fhir/Practitioner/dr2"}, {"reference": "Location/loc1"}
        ),
        visit_with({"reference": "Practitioner/dr3", "display": "Dr. Named"}),
        visit_with(
            {"reference": "#contained"}, {"reference": "urn:uuid:abc"}, {"display": "Walk-in"}
        ),
        visit_with({"reference": "HealthcareService/hs1"}, {"reference": "Device/d1"}),
    ]
    coverages = [
        cov_with([{"reference": "Organization/org1"}]),
        cov_with({"reference": "Organization/org2"}),
    ]
    wanted = unresolved_references([*appointments, *coverages, "garbage", 3], included=[DR])
    assert wanted == {
        "HealthcareService": ["hs1"],
        "Location": ["loc1"],
        "Organization": ["org1", "org2"],
        "Practitioner": ["dr2"],
    }
    # Once read and passed back, nothing is left and the mappers show names.
    fetched = [
        DR,
        CLINIC,
        PAYOR,
        {"resourceType": "Practitioner", "id": "dr2", "name": [{"text": "Dr. Two"}]},
    ]
    fetched += [
        {"resourceType": "Organization", "id": "org2", "name": "Beta"},
        {"resourceType": "HealthcareService", "id": "hs1", "name": "Lab"},
    ]
    assert unresolved_references([*appointments, *coverages], included=fetched) == {}
    visit = to_visit(
        appointments[1], now=NOW, viewer_tz="America/Chicago", included=index_resources(fetched)
    )
    assert (visit.practitioner, visit.location) == ("Dr. Two", "Denver clinic")
    insurance = to_insurance(coverages[:1], now=NOW, included=index_resources(fetched))
    assert [p.payor for p in insurance.policies] == ["Acme Health"]


def test_an_included_role_without_its_practitioner_asks_for_the_practitioner() -> None:
    appointment = visit_with({"reference": "PractitionerRole/role1"})
    assert unresolved_references([appointment]) == {"PractitionerRole": ["role1"]}
    assert unresolved_references([appointment], included=[ROLE]) == {"Practitioner": ["dr1"]}
    assert unresolved_references([appointment], included=[ROLE, DR]) == {}


def test_a_role_that_points_at_itself_does_not_loop() -> None:
    loop = {
        "resourceType": "PractitionerRole",
        "id": "r",
        "practitioner": {"reference": "PractitionerRole/r"},
    }
    appointment = visit_with({"reference": "PractitionerRole/r"})
    assert unresolved_references([appointment], included=[loop]) == {}  # nothing left to read
    assert reference_name({"reference": "PractitionerRole/r"}, index_resources([loop])) is None


def test_a_visit_without_displays_shows_no_reference_strings() -> None:
    appointment = visit_with({"reference": "Practitioner/dr9"}, {"reference": "Location/loc9"})
    visit = to_visit(appointment, now=NOW, viewer_tz="America/Chicago", included={})
    assert (visit.practitioner, visit.location) == (None, None)
    assert (visit.practitioner_ref, visit.location_ref) == ("Practitioner/dr9", "Location/loc9")


# --- searchset Bundles -------------------------------------------------------------------

APPT = {"resourceType": "Appointment", "id": "a1"}


@pytest.mark.parametrize(
    ("bundle", "expect", "matches", "included", "more"),
    [
        (
            {
                "entry": [
                    {"resource": APPT, "search": {"mode": "match"}},
                    {"resource": DR, "search": {"mode": "include"}},
                    {
                        "resource": {"resourceType": "OperationOutcome"},
                        "search": {"mode": "outcome"},
                    },
                ],
                "link": [{"relation": "self", "url": "x"}, {"relation": "next", "url": "y"}],
            },
            None,
            [APPT],
            [DR],
            True,
        ),
        ({"entry": [{"resource": APPT}, {"resource": DR}]}, "Appointment", [APPT], [DR], False),
        ({"entry": [{"resource": APPT}, {"resource": DR}]}, None, [APPT, DR], [], False),
        (
            {"entry": [{"resource": {"resourceType": "OperationOutcome"}}]},
            "Appointment",
            [],
            [],
            False,
        ),
        ({"entry": {"resource": APPT}, "link": {"relation": "next"}}, None, [APPT], [], True),
        ({"entry": [{"resource": APPT, "search": "include"}]}, None, [APPT], [], False),
        ({"entry": [{"resource": APPT, "search": {"mode": 3}}]}, None, [APPT], [], False),
        ({"entry": [None, 3, "x", {"resource": "x"}, {"resource": [APPT]}]}, None, [], [], False),
        ({"entry": "x", "link": "next"}, None, [], [], False),
        ({"link": [None, {"relation": ["next"]}, {"relation": 1}]}, None, [], [], False),
        ([], None, [], [], False),
        (None, None, [], [], False),
    ],
)
def test_search_entries_tolerates_wrong_shapes(
    bundle: Any, expect: str | None, matches: list[Any], included: list[Any], more: bool
) -> None:
    assert search_entries(bundle, expect=expect) == (matches, included, more)


def test_survey_language_is_any_language_the_patient_speaks_that_the_questionnaire_has() -> None:
    from fhir_mappers.survey import language_for_patient

    questionnaire = {
        "language": "en",
        "_title": {"extension": [{"extension": [{"url": "lang", "valueCode": "es"}]}]},
    }
    speaks = patient(communication=[lang("ar", preferred=True), lang("es-MX")])
    assert language_for_patient(questionnaire, speaks) == "es"
    assert language_for_patient(questionnaire, patient(communication=[lang("ar")])) == "en"
    assert language_for_patient(questionnaire, None) == "en"
