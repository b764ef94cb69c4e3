"""Updates a client makes: a patient confirming an appointment, referral status changes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sandbox.testing import SandboxHandle, running_sandbox
from tests.sandbox.conftest import fhir_get, fhir_post, login
from tests.sandbox.population import population

PATCH_JSON = "application/json-patch+json"


@pytest.fixture
def token(sb: SandboxHandle) -> str:
    value: str = login(sb, scope="openid fhirUser user/*.cruds")["access_token"]
    return value


def _put(
    sb: SandboxHandle, path: str, token: str, body: Any, headers: dict[str, str] | None = None
) -> requests.Response:
    all_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    all_headers.update(headers or {})
    return requests.put(f"{sb.fhir_base}/{path}", json=body, headers=all_headers, timeout=10)


def _patch(
    sb: SandboxHandle,
    path: str,
    token: str,
    operations: Any,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    all_headers = {"Authorization": f"Bearer {token}", "Content-Type": PATCH_JSON}
    all_headers.update(headers or {})
    return requests.patch(
        f"{sb.fhir_base}/{path}", json=operations, headers=all_headers, timeout=10
    )


def _caps(sb: SandboxHandle) -> dict[str, dict[str, Any]]:
    cap = requests.get(f"{sb.fhir_base}/metadata", timeout=10).json()
    return {r["type"]: r for r in cap["rest"][0]["resource"]}


def _patient_index(appt: dict[str, Any]) -> int:
    return next(
        i
        for i, p in enumerate(appt["participant"])
        if p["actor"]["reference"].startswith("Patient/")
    )


# --- Appointment ------------------------------------------------------------------------


def test_put_appointment_sets_the_patients_participation_to_accepted(
    sb: SandboxHandle, token: str
) -> None:
    appt = fhir_get(sb, "Appointment/appt-a-9", token).json()
    i = _patient_index(appt)
    appt["participant"][i]["status"] = "needs-action"
    first = _put(sb, "Appointment/appt-a-9", token, appt, {"If-Match": 'W/"1"'})
    assert first.status_code == 200, first.text
    appt = first.json()
    appt["participant"][i]["status"] = "accepted"
    resp = _put(sb, "Appointment/appt-a-9", token, appt, {"If-Match": 'W/"2"'})
    assert resp.status_code == 200, resp.text
    assert resp.headers["ETag"] == 'W/"3"'
    stored = sb.resource("Appointment", "appt-a-9")
    assert stored["participant"][i]["status"] == "accepted"
    stale = _put(sb, "Appointment/appt-a-9", token, appt, {"If-Match": 'W/"2"'})
    assert stale.status_code == 412


def test_patch_appointment_participation_with_json_patch(sb: SandboxHandle, token: str) -> None:
    appt = fhir_get(sb, "Appointment/appt-a-10", token).json()
    i = _patient_index(appt)
    ops = [
        {"op": "test", "path": f"/participant/{i}/actor/reference", "value": "Patient/pat-a"},
        {"op": "replace", "path": f"/participant/{i}/status", "value": "declined"},
    ]
    resp = _patch(sb, "Appointment/appt-a-10", token, ops, {"If-Match": 'W/"1"'})
    assert resp.status_code == 200, resp.text
    assert resp.json()["participant"][i]["status"] == "declined"
    assert resp.json()["meta"]["versionId"] == "2"
    assert sb.resource("Appointment", "appt-a-10")["participant"][i]["status"] == "declined"


@pytest.mark.parametrize(
    ("ops", "content_type", "status"),
    [
        ([{"op": "test", "path": "/status", "value": "cancelled"}], PATCH_JSON, 422),
        ([{"op": "replace", "path": "/nothing/here", "value": 1}], PATCH_JSON, 422),
        ([{"op": "replace", "path": "/participant/0/status", "value": "maybe"}], PATCH_JSON, 422),
        ({"op": "replace"}, PATCH_JSON, 400),
        ([{"op": "teleport", "path": "/status"}], PATCH_JSON, 400),
        ([{"op": "replace", "path": "/status", "value": "booked"}], "application/json", 415),
    ],
)
def test_patch_refuses_what_it_cannot_apply(
    sb: SandboxHandle, token: str, ops: Any, content_type: str, status: int
) -> None:
    resp = _patch(sb, "Appointment/appt-a-11", token, ops, {"Content-Type": content_type})
    assert resp.status_code == status, resp.text
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert sb.resource("Appointment", "appt-a-11")["meta"]["versionId"] == "1"


def test_appointments_are_updated_never_created_by_a_client(sb: SandboxHandle, token: str) -> None:
    appt = fhir_get(sb, "Appointment/appt-a-8", token).json()
    appt["id"] = "appt-new"
    assert _put(sb, "Appointment/appt-new", token, appt).status_code == 405
    del appt["id"]
    assert fhir_post(sb, "Appointment", token, appt).status_code == 405
    missing = _patch(sb, "Appointment/nope", token, [])
    assert missing.status_code == 404
    caps = _caps(sb)["Appointment"]
    assert {i["code"] for i in caps["interaction"]} == {"read", "search-type", "update", "patch"}
    assert caps["updateCreate"] is False


def test_patient_scoped_update_only_in_the_launch_patients_compartment(
    sb: SandboxHandle,
) -> None:
    body = login(sb, scope="launch/patient openid fhirUser patient/Appointment.rus")
    mine = fhir_get(sb, "Appointment/appt-a-12", body["access_token"]).json()
    assert _put(sb, "Appointment/appt-a-12", body["access_token"], mine).status_code == 200
    theirs = _patch(
        sb,
        "Appointment/appt-b-yesterday",
        body["access_token"],
        [{"op": "replace", "path": "/status", "value": "cancelled"}],
    )
    assert theirs.status_code == 403
    read_only = login(sb, scope="launch/patient openid fhirUser patient/Appointment.rs")
    refused = _put(sb, "Appointment/appt-a-12", read_only["access_token"], mine)
    assert refused.status_code == 403


def test_invalid_appointment_is_422(sb: SandboxHandle, token: str) -> None:
    appt = fhir_get(sb, "Appointment/appt-a-13", token).json()
    appt["status"] = "maybe"
    assert _put(sb, "Appointment/appt-a-13", token, appt).status_code == 422
    appt["status"] = "booked"
    del appt["participant"]
    assert _put(sb, "Appointment/appt-a-13", token, appt).status_code == 422


@pytest.fixture
def epic(clients: list[dict[str, Any]]) -> Iterator[SandboxHandle]:
    with running_sandbox(profile="epic", clients=clients, population=population()) as handle:
        yield handle


def test_epic_refuses_appointment_update_and_says_so(epic: SandboxHandle) -> None:
    token = login(epic, scope="openid fhirUser user/*.cruds")["access_token"]
    appt = fhir_get(epic, "Appointment?patient=pat-a&_count=1", token).json()["entry"][0][
        "resource"
    ]
    path = f"Appointment/{appt['id']}"
    put = _put(epic, path, token, appt)
    assert put.status_code == 405
    assert put.json()["issue"][0]["code"] == "not-supported"
    patched = _patch(epic, path, token, [{"op": "replace", "path": "/status", "value": "booked"}])
    assert patched.status_code == 405
    assert {i["code"] for i in _caps(epic)["Appointment"]["interaction"]} == {
        "read",
        "search-type",
    }
    assert "appointment-update" in epic.get_knobs()["disabled"]


def test_appointment_update_feature_switches_off_at_runtime(sb: SandboxHandle, token: str) -> None:
    sb.set_knobs(disabled=["appointment-update"])
    appt = fhir_get(sb, "Appointment/appt-a-8", token).json()
    assert _put(sb, "Appointment/appt-a-8", token, appt).status_code == 405


# --- referrals: ServiceRequest and Task status --------------------------------------


def test_service_request_and_task_status_change_by_put_and_patch(
    sb: SandboxHandle, token: str
) -> None:
    sr = fhir_post(
        sb,
        "ServiceRequest",
        token,
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/pat-a"},
        },
    ).json()
    task = fhir_post(
        sb,
        "Task",
        token,
        {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "for": {"reference": "Patient/pat-a"},
            "focus": {"reference": f"ServiceRequest/{sr['id']}"},
        },
    ).json()
    sr["status"] = "completed"
    done = _put(sb, f"ServiceRequest/{sr['id']}", token, sr, {"If-Match": 'W/"1"'})
    assert (done.status_code, done.json()["status"]) == (200, "completed")
    ops = [{"op": "replace", "path": "/status", "value": "completed"}]
    task_done = _patch(sb, f"Task/{task['id']}", token, ops)
    assert (task_done.status_code, task_done.json()["status"]) == (200, "completed")
    found = fhir_get(sb, "Task?status=completed", token).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [task["id"]]
    assert {"update", "patch"} <= {i["code"] for i in _caps(sb)["Task"]["interaction"]}
    sb.set_knobs(disabled=["task-create"])
    assert _patch(sb, f"Task/{task['id']}", token, ops).status_code == 405
