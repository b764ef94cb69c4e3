"""Property-based fuzzing of the readers outside fhir_mappers: the sidebar's context and
the board's assembly (plugin.context, through the real FHIR client over a fake transport)
and the job readers (jobs.survey, jobs.contact). Whatever JSON an EHR sends, they never
raise: what cannot be read is left out or marked unavailable.

(The mappers themselves and `caredesk map` have their own suite in tests/mappers.)
Seeded (derandomized) and bounded: FUZZ_EXAMPLES examples per target in `make test`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smart_launch.errors import SmartError

FUZZ_EXAMPLES = int(os.environ.get("CAREDESK_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

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


def _resource(rtype: str) -> st.SearchStrategy[Any]:
    """A resource of `rtype` whose fields are anything: wrong JSON types at every level."""
    return (
        st.builds(
            lambda fields, rid: {**fields, "resourceType": rtype, "id": rid},
            st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8),
            st.one_of(st.sampled_from(["pat-001", "a1", ""]), json_values),
        )
        | json_values
    )


def _bundle(rtype: str) -> st.SearchStrategy[Any]:
    entry = (
        st.fixed_dictionaries(
            {},
            optional={
                "resource": _resource(rtype) | _resource("Practitioner") | _resource("Location"),
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


@pytest.fixture
def context_app(make_app: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from plugin import board_data
    from plugin import context as ctx

    app = make_app()
    answers: dict[str, Any] = {}

    def client(launch: Any) -> Any:
        from smart_launch.fhir import FhirClient

        http = requests.Session()
        http.mount("http://", Transport(answers))
        return FhirClient("http://ehr.test/fhir", lambda: "token", session=http)

    monkeypatch.setattr(ctx, "_client", client)
    monkeypatch.setattr(board_data, "_client", client)
    with app.test_request_context():
        yield app, answers


def _launch(patient: str | None) -> Any:
    from helpdesk.models import LaunchSession

    return LaunchSession(
        id="fuzz",
        registration_id=1,
        status="active",
        patient_ref=patient,
        scope_granted="launch openid user/*.rs",
        context={},
    )


@FUZZ
@given(
    patient=_resource("Patient"),
    appointments=_bundle("Appointment"),
    coverages=_bundle("Coverage"),
)
def test_the_sidebar_context_never_raises_on_odd_fhir(
    context_app: Any, patient: Any, appointments: Any, coverages: Any
) -> None:
    from plugin.context import fetch_context

    _, answers = context_app
    answers.clear()
    answers.update({"/Patient/pat-001": patient, "/Appointment": appointments})
    answers["/Coverage"] = coverages
    try:
        context = fetch_context(_launch("Patient/pat-001"), use_cache=False)
    except SmartError:
        return  # a body that is not a FHIR resource at all: the EHR's error, shown as such
    assert isinstance(context, dict) and context["patient_ref"] == "Patient/pat-001"


@FUZZ
@given(
    appointments=_bundle("Appointment"),
    patients=_bundle("Patient"),
    coverages=_bundle("Coverage"),
)
def test_the_board_never_raises_on_odd_fhir(
    context_app: Any, appointments: Any, patients: Any, coverages: Any
) -> None:
    from plugin.board_data import fetch_board

    _, answers = context_app
    answers.clear()
    answers.update({"/Appointment": appointments, "/Patient": patients, "/Coverage": coverages})
    try:
        board = fetch_board(_launch(None), day=dt.date(2026, 11, 30))
    except SmartError:
        return
    assert isinstance(board["rows"], list)


def _object(rtype: str) -> st.SearchStrategy[Any]:
    """A resource as the FHIR client hands it over (always a JSON object; the client
    refuses any other body), its fields anything."""
    return _resource(rtype).filter(lambda r: isinstance(r, dict))


@FUZZ
@given(appointment=_resource("Appointment"), patient=_object("Patient"))
def test_the_job_readers_never_raise_on_odd_fhir(appointment: Any, patient: Any) -> None:
    from jobs import contact, survey
    from smart_launch.errors import FatalFhirError

    tz = ZoneInfo("America/Chicago")
    try:
        visit = survey._visit(appointment, tz)
        assert visit.patient_ref.startswith("Patient/")
    except FatalFhirError:
        pass  # an appointment naming no patient: the job fails with that reason
    survey.restriction_codes(patient)
    survey.preferred_language(patient)
    survey._ext_zone(patient)
    contact.language(patient, ("en", "es"))
    contact.reachable(patient, now=dt.datetime(2026, 11, 30, 9, tzinfo=tz))


@FUZZ
@given(bundle=_bundle("Encounter"))
def test_the_encounter_lookup_never_raises_on_odd_fhir(bundle: Any) -> None:
    from jobs import survey

    class Client:
        def search(self, *_: Any, **__: Any) -> Any:
            return bundle

    found = survey._encounter_for(Client(), "Appointment/a1")
    assert found is None or found.startswith("Encounter/")
