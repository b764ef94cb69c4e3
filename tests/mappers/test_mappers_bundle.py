"""Reading FHIR files and `run_map`, the pure core of `caredesk map`."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fhir_mappers.bundle import NotFhirError, contexts_for_file, read_resources, run_map

NOW = dt.datetime(2026, 11, 27, 9, 30, tzinfo=ZoneInfo("America/Chicago"))
P1 = {"resourceType": "Patient", "id": "p1", "name": [{"family": "One"}]}
P2 = {"resourceType": "Patient", "id": "p2", "name": [{"family": "Two"}]}
LOC = {
    "resourceType": "Location",
    "id": "l1",
    "name": "Clinic",
    "extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": "America/Denver"}
    ],
}


def appt(aid: str, patient_ref: str, location_ref: str = "Location/l1") -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "status": "booked",
        "start": "2026-11-30T17:00:00Z",
        "end": "2026-11-30T17:30:00Z",
        "participant": [
            {"actor": {"reference": patient_ref}, "status": "accepted"},
            {"actor": {"reference": location_ref}, "status": "accepted"},
        ],
    }


def cov(cid: str, patient_ref: str) -> dict[str, Any]:
    return {
        "resourceType": "Coverage",
        "id": cid,
        "status": "active",
        "beneficiary": {"reference": patient_ref},
        "payor": [{"display": "Payor"}],
    }


def bundle(btype: str, resources: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": btype,
        "entry": [{"resource": r} for r in resources],
        **extra,
    }


def run(data: Any) -> list[dict[str, Any]]:
    text = data if isinstance(data, str) else json.dumps(data)
    return contexts_for_file(text, now=NOW, viewer_tz="America/Chicago")


@pytest.mark.parametrize("btype", ["searchset", "collection", "transaction", "batch"])
def test_bundles_of_any_type_are_read(btype: str) -> None:
    assert read_resources(json.dumps(bundle(btype, [P1, LOC]))) == [P1, LOC]


def test_single_resource_ndjson_and_nested_batch_response() -> None:
    assert read_resources(json.dumps(P1)) == [P1]
    ndjson = "\ufeff" + json.dumps(P1) + "\n\n" + json.dumps(LOC) + "\n"
    assert read_resources(ndjson) == [P1, LOC]
    nested = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {"resource": P1, "response": {"status": "200 OK"}},
            {"resource": bundle("searchset", [LOC]), "response": {"status": "200 OK"}},
            {"response": {"status": "404 Not Found"}},
        ],
    }
    assert read_resources(json.dumps(nested)) == [P1, LOC]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "input is empty"),
        ("   \n ", "input is empty"),
        ("hello world", "input is not JSON"),
        ("<html><body>502 Bad Gateway</body></html>", "input is not JSON"),
        ("[1, 2]", "not an object"),
        ('"Patient"', "not an object"),
        ('{"name": "x"}', "no resourceType"),
        ('{"resourceType": 5}', "no resourceType"),
        (json.dumps(P1) + "\nnot json\n", "line 2 is not JSON"),
        (json.dumps(P1) + "\n[1]\n", "line 2 is JSON but not a FHIR resource"),
        ('{"resourceType": "Bundle", "entry": [{"resource": {"id": "x"}}]}', "no resourceType"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_not_fhir_is_a_one_line_error(text: str, message: str) -> None:
    with pytest.raises(NotFhirError, match=message) as exc:
        read_resources(text)
    assert "\n" not in str(exc.value)
    code, out = run_map(text, now=NOW, viewer_tz="America/Chicago")
    assert code == 2
    assert out.startswith("caredesk map: not FHIR: ") and "\n" not in out


def test_run_map_prints_a_json_array_of_contexts() -> None:
    code, out = run_map(
        json.dumps(bundle("collection", [P1, appt("a1", "Patient/p1"), LOC])),
        now=NOW,
        viewer_tz="America/Chicago",
    )
    assert code == 0 and out.endswith("\n")
    (context,) = json.loads(out)
    assert context["patient_id"] == "p1"
    (visit,) = context["visits"]
    assert visit["start"] == "2026-11-30T11:00:00-06:00"  # the viewer's zone
    assert visit["location_start"] == "2026-11-30T10:00:00-07:00"  # and the location's


def test_run_map_refuses_an_unknown_time_zone() -> None:
    code, out = run_map(json.dumps(P1), now=NOW, viewer_tz="Atlantis/Capital")
    assert (code, out) == (2, "caredesk map: unknown time zone 'Atlantis/Capital'")


def test_resources_are_grouped_by_patient_in_order_of_appearance() -> None:
    contexts = run(
        bundle(
            "searchset",
            [
                P2,
                P1,
                appt("a1", "Patient/p1"),
                appt("a2", "https://ehr/fhir/Patient/p2"),
                cov("c1", "Patient/p1"),
                LOC,
            ],
        )
    )
    assert [c["patient_id"] for c in contexts] == ["p2", "p1"]
    assert [v["appointment_id"] for v in contexts[1]["visits"]] == ["a1"]
    assert [v["appointment_id"] for v in contexts[0]["visits"]] == ["a2"]
    assert contexts[1]["insurance"]["state"] == "active"
    # p2 had no Coverage in a file that has Coverages: it has none on file
    assert contexts[0]["insurance"]["state"] == "none"


def test_a_referenced_patient_without_its_resource_still_gets_a_context() -> None:
    (context,) = run(bundle("collection", [appt("a1", "Patient/ghost"), LOC]))
    assert context["patient_id"] == "ghost" and context["contact"] is None
    assert context["unavailable"]["patient"] == "not in the input"
    assert context["unavailable"]["coverage"] == "no Coverage resources in the input"


def test_an_empty_coverage_search_means_none_on_file() -> None:
    empty_search = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 0,
        "link": [{"relation": "self", "url": "https://ehr/fhir/Coverage?patient=p1"}],
    }
    batch = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [{"resource": P1}, {"resource": empty_search}],
    }
    (context,) = run(batch)
    assert context["insurance"]["state"] == "none" and context["unavailable"] == {}
    assert "no-coverage" in context["flags"]
    (context,) = run(bundle("collection", [P1]))
    assert context["insurance"]["state"] == "unknown"


def test_transaction_urn_references_are_resolved() -> None:
    patient = {k: v for k, v in P1.items() if k != "id"}
    location = {k: v for k, v in LOC.items() if k != "id"}
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:aaaa-1",
                "resource": patient,
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:bbbb-2",
                "resource": location,
                "request": {"method": "POST", "url": "Location"},
            },
            {
                "fullUrl": "urn:uuid:cccc-3",
                "resource": appt("a1", "urn:uuid:aaaa-1", "urn:uuid:bbbb-2"),
                "request": {"method": "POST", "url": "Appointment"},
            },
        ],
    }
    (context,) = run(tx)
    assert context["contact"]["display_name"] == "One"
    (visit,) = context["visits"]
    assert visit["location"] == "Clinic" and visit["time_zone"] == "America/Denver"


def test_resources_naming_no_patient_are_not_shown() -> None:
    assert run(bundle("collection", [LOC, appt("a1", "Group/g1")])) == []
    assert run(bundle("searchset", [])) == []


# --- `caredesk map`: the summary, the JSON, the exit codes --------------------------------


def population_text() -> str:
    from fixtures.population import build_population

    pop = build_population(NOW.date())
    return "\n".join(json.dumps(r) for rs in pop.values() for r in rs)


def test_summary_is_one_short_block_per_patient() -> None:
    code, out = run_map(population_text(), now=NOW, viewer_tz="America/Chicago", as_json=False)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(
        "32 patients · 85 visits · 10 data warnings · as of 2026-11-27T09:30"
    )
    assert len(lines) < 300  # the JSON of the same input is over 4,500 lines
    blocks = out.split("\n\n")[1:-1]
    assert len(blocks) == 32
    first = blocks[0].splitlines()
    assert first == [
        "Margaret Ann Okonkwo (goes by Peggy) · Patient/pat-001 · MRN 00100237",
        "  flags:    Visit today",
        "  visits:   2 upcoming, 2 recent (next 2026-11-27 11:00 CST, Booked)",
        "  coverage: active (Aetna, ends 2027-12-31)",
        "  warnings: 0",
    ]
    assert lines[-1] == "The full context of each patient: caredesk map --json FILE"


def test_summary_lists_the_three_worst_warnings_in_plain_words() -> None:
    odd = {
        **P1,
        "birthDate": "1980-07",
        "extension": [{"valueCode": "x"}],
        "bogus": 1,
        "identifier": [],
    }
    visit = {**appt("a1", "Patient/p1"), "start": "2026-11-30T10:00:00"}
    text = json.dumps(bundle("collection", [odd, visit, LOC]))
    code, out = run_map(text, now=NOW, viewer_tz="America/Chicago", as_json=False)
    assert code == 0
    block = out.split("\n\n")[1].splitlines()
    count = int(block[4].removeprefix("  warnings: "))
    assert count > 3
    assert block[5] == (
        "    - Appointment/a1: The appointment's start time has no time zone; read as Denver time."
    )
    assert len([line for line in block if line.startswith("    - ")]) == 3
    assert block[-1] == f"    … and {count - 3} more (--json shows all)"


def test_json_is_the_full_contexts_when_asked() -> None:
    text = json.dumps(bundle("collection", [P1, appt("a1", "Patient/p1"), LOC]))
    code, out = run_map(text, now=NOW, viewer_tz="America/Chicago", as_json=True)
    assert code == 0
    assert json.loads(out) == run(text)


@pytest.mark.parametrize(
    ("data", "held"),
    [
        ({"resourceType": "Practitioner", "id": "d1"}, "1 Practitioner"),
        (bundle("searchset", []), "no resources"),
        (bundle("collection", [LOC, appt("a1", "Group/g1")]), "1 Appointment, 1 Location"),
    ],
)
@pytest.mark.parametrize("as_json", [True, False])
def test_fhir_about_no_patient_says_so_with_exit_3(data: Any, held: str, as_json: bool) -> None:
    code, out = run_map(json.dumps(data), now=NOW, viewer_tz="America/Chicago", as_json=as_json)
    assert code == 3
    assert out == (
        f"caredesk map: the input is FHIR ({held}) but concerns no patient: give a Patient, "
        "or Appointments or Coverages that name one."
    )


@pytest.mark.parametrize("as_json", [True, False])
def test_not_fhir_stays_exit_2(as_json: bool) -> None:
    code, out = run_map('{"hello": "world"}', now=NOW, viewer_tz="America/Chicago", as_json=as_json)
    assert code == 2 and out.startswith("caredesk map: not FHIR:")


def test_output_is_safe_for_a_terminal() -> None:
    sneaky = {
        **P1,
        "name": [{"family": "\x1b[2J\x1b[31mRed\u202eevil", "given": ["\ud800"]}],
    }
    for as_json in (True, False):
        code, out = run_map(
            json.dumps(sneaky), now=NOW, viewer_tz="America/Chicago", as_json=as_json
        )
        assert code == 0
        out.encode("utf-8")  # a lone surrogate from the input is escaped, not printed
        if not as_json:
            assert "\x1b" not in out and "\u202e" not in out
        else:
            assert (
                json.loads(out)[0]["contact"]["display_name"]
                == "\ud800 \x1b[2J\x1b[31mRed\u202eevil"
            )
