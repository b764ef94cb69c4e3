"""Generated odd FHIR for the readers outside fhir_mappers (issue 12 §1), and the drivers
that put one generated case through each: the sidebar's context and the board's assembly
(plugin.context, plugin.board_data, through the real FHIR client over a fake transport)
and the job readers (jobs.survey; the senders use fhir_mappers.contact). Whatever JSON an EHR
sends, they never raise: what cannot be read is left out or marked unavailable.

Used by tests/plugin/test_fuzz_readers.py (a seeded sample per target in `make test`) and
bench/fuzz.py (10,000 cases in all, spread over the targets, counted in `make bench`).
(The mappers themselves and `caredesk map` have their own suite in tests/mappers.)
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import requests
from flask import Flask
from hypothesis import strategies as st

from smart_launch.errors import FatalFhirError, SmartError

KEYS = [
    "resourceType",
    "id",
    "entry",
    "resource",
    "search",
    "mode",
    "link",
    "relation",
    "url",
    "participant",
    "actor",
    "reference",
    "display",
    "start",
    "end",
    "status",
    "communication",
    "language",
    "coding",
    "code",
    "preferred",
    "extension",
    "valueCode",
    "valueCoding",
    "telecom",
    "system",
    "value",
    "use",
    "rank",
    "period",
    "name",
    "family",
    "given",
    "text",
    "birthDate",
    "identifier",
    "type",
    "payor",
    "beneficiary",
    "total",
]
ODD_TEXT = [
    "",
    "next",
    "include",
    "match",
    "outcome",
    "Appointment",
    "Patient",
    "Patient/pat-001",
    "http://ehr/fhir/Patient/pat-001/_history/2",
    "#contained",
    "Patient/",
    "urn:uuid:1",
    "0001-01-01T00:00:00-12:00",
    "9999-12-31T23:59:59+14:00",
    "2026-13-45",
    "2026-11",
    "2026-11-30T09:00:00",
    "fulfilled",
    "booked",
    "sms",
    "email",
    "phone",
    "mobile",
    "no-contact",
    "http://hl7.org/fhir/StructureDefinition/timezone",
    "America/Chicago",
    "Not/AZone",
    "\ud800",
    "x" * 5000,
]
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(ODD_TEXT)
)
json_values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=6)
    ),
    max_leaves=30,
)


def resource(rtype: str) -> st.SearchStrategy[Any]:
    """A resource of `rtype` whose fields are anything: wrong JSON types at every level."""
    return (
        st.builds(
            lambda fields, rid: {**fields, "resourceType": rtype, "id": rid},
            st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8),
            st.one_of(st.sampled_from(["pat-001", "a1", ""]), json_values),
        )
        | json_values
    )


def bundle(rtype: str) -> st.SearchStrategy[Any]:
    entry = (
        st.fixed_dictionaries(
            {},
            optional={
                "resource": resource(rtype) | resource("Practitioner") | resource("Location"),
                "search": json_values | st.fixed_dictionaries({"mode": json_values}),
            },
        )
        | json_values
    )
    return (
        st.fixed_dictionaries(
            {"resourceType": st.just("Bundle")},
            optional={
                "entry": st.lists(entry, max_size=5) | json_values,
                "link": st.lists(
                    st.fixed_dictionaries({"relation": json_values, "url": json_values}), max_size=2
                )
                | json_values,
                "total": json_values,
            },
        )
        | json_values
    )


def json_object(rtype: str) -> st.SearchStrategy[Any]:
    """A resource as the FHIR client hands it over (always a JSON object; the client
    refuses any other body), its fields anything."""
    return resource(rtype).filter(lambda r: isinstance(r, dict))


# --- the fake EHR -------------------------------------------------------------------------


class Transport(requests.adapters.BaseAdapter):
    """The EHR's answers, by the path asked for: whatever the strategy drew."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__()
        self.answers = answers

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        path = (request.path_url or "").split("?")[0].rstrip("/")
        key = next((k for k in self.answers if path.endswith(k)), "")
        response = requests.Response()
        response.status_code = 200
        response.headers["Content-Type"] = "application/fhir+json"
        body = self.answers.get(key, {"resourceType": "Bundle"})
        response._content = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
        response.request = request
        response.url = request.url or ""
        return response

    def close(self) -> None:
        return None


@contextmanager
def fake_ehr(app: Flask) -> Iterator[dict[str, Any]]:
    """Inside a request of `app`, the context and board readers fetch from a fake EHR that
    answers, per path, what the returned dict holds (the real FHIR client parses it)."""
    from plugin import board_data
    from plugin import context as ctx
    from smart_launch.fhir import FhirClient

    answers: dict[str, Any] = {}

    def client(launch: Any, token_set: Any = None) -> Any:
        http = requests.Session()
        http.mount("http://", Transport(answers))
        return FhirClient("http://ehr.test/fhir", lambda: "token", session=http)

    saved = ctx._client, board_data._client
    ctx._client = board_data._client = client  # type: ignore[assignment]
    try:
        with app.test_request_context():
            yield answers
    finally:
        ctx._client, board_data._client = saved  # type: ignore[assignment]


def _launch(patient: str | None) -> Any:
    from helpdesk.models import EhrRegistration, LaunchSession

    return LaunchSession(
        id="fuzz",
        registration_id=1,
        # As a stored launch has it (the sidebar keys its identity cache on the iss).
        registration=EhrRegistration(id=1, slug="fuzz", iss="https://fuzz.example/fhir"),
        status="active",
        patient_ref=patient,
        scope_granted="launch openid user/*.rs",
        context={},
    )


# --- one case through each reader ----------------------------------------------------------


def drive_context(ehr: dict[str, Any], case: dict[str, Any]) -> None:
    from plugin.context import fetch_context

    ehr.clear()
    ehr.update({"/Patient/pat-001": case["patient"], "/Appointment": case["appointments"]})
    ehr["/Coverage"] = case["coverages"]
    try:
        context = fetch_context(_launch("Patient/pat-001"), use_cache=False)
    except SmartError:
        return  # a body that is not a FHIR resource at all: the EHR's error, shown as such
    assert isinstance(context, dict) and context["patient_ref"] == "Patient/pat-001"


def drive_board(ehr: dict[str, Any], case: dict[str, Any]) -> None:
    from plugin.board_data import fetch_board

    ehr.clear()
    ehr.update(
        {
            "/Appointment": case["appointments"],
            "/Patient": case["patients"],
            "/Coverage": case["coverages"],
        }
    )
    try:
        board = fetch_board(_launch(None), day=dt.date(2026, 11, 30))
    except SmartError:
        return
    assert isinstance(board["rows"], list)


def drive_job_readers(ehr: dict[str, Any], case: dict[str, Any]) -> None:
    from fhir_mappers import contact
    from jobs import survey

    appointment, patient = case["appointment"], case["patient"]
    tz = ZoneInfo("America/Chicago")
    try:
        visit = survey._visit(appointment, tz)
        assert visit.patient_ref.startswith("Patient/")
    except FatalFhirError:
        pass  # an appointment naming no patient: the job fails with that reason
    survey.restriction_codes(patient)
    survey.preferred_language(patient)
    survey._ext_zone(patient)
    contact.pick_language(patient, ("en", "es"))
    contact.reachable(patient, now=dt.datetime(2026, 11, 30, 9, tzinfo=tz))


def drive_encounter_lookup(ehr: dict[str, Any], case: dict[str, Any]) -> None:
    from jobs import survey

    found_bundle = case["bundle"]

    class Client:
        def search(self, *_: Any, **__: Any) -> Any:
            return found_bundle

    found = survey._encounter_for(Client(), "Appointment/a1")
    assert found is None or found.startswith("Encounter/")


@dataclass(frozen=True)
class Target:
    name: str
    cases: st.SearchStrategy[dict[str, Any]]
    drive: Callable[[dict[str, Any], dict[str, Any]], None]


CONTEXT = Target(
    "sidebar context",
    st.fixed_dictionaries(
        {
            "patient": resource("Patient"),
            "appointments": bundle("Appointment"),
            "coverages": bundle("Coverage"),
        }
    ),
    drive_context,
)
BOARD = Target(
    "board",
    st.fixed_dictionaries(
        {
            "appointments": bundle("Appointment"),
            "patients": bundle("Patient"),
            "coverages": bundle("Coverage"),
        }
    ),
    drive_board,
)
JOB_READERS = Target(
    "job readers",
    st.fixed_dictionaries(
        {"appointment": resource("Appointment"), "patient": json_object("Patient")}
    ),
    drive_job_readers,
)
ENCOUNTER_LOOKUP = Target(
    "encounter lookup",
    st.fixed_dictionaries({"bundle": bundle("Encounter")}),
    drive_encounter_lookup,
)
TARGETS = (CONTEXT, BOARD, JOB_READERS, ENCOUNTER_LOOKUP)
