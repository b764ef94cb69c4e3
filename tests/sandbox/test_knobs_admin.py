"""Fault knobs and the admin API: latency, 503/429, scripted failures, logs, bulk data."""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from sandbox.testing import SandboxHandle, running_sandbox
from tests.sandbox.conftest import fhir_get, login
from tests.sandbox.population import population


@pytest.fixture
def token(sb: SandboxHandle) -> str:
    value: str = login(sb, scope="openid fhirUser user/*.rs")["access_token"]
    return value


def _timed_read(sb: SandboxHandle, token: str) -> float:
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {token}"
        session.get(f"{sb.fhir_base}/Patient/pat-a", timeout=10)  # warm the connection
        start = time.perf_counter()
        resp = session.get(f"{sb.fhir_base}/Patient/pat-a", timeout=10)
        elapsed = time.perf_counter() - start
    assert resp.status_code == 200
    return elapsed


def test_latency_knob_delays_a_read_by_about_that_much(clients: list[dict]) -> None:
    with running_sandbox(clients=clients, population=population(), latency_ms=100) as sb:
        token = login(sb, scope="openid fhirUser user/*.rs")["access_token"]
        elapsed = min(_timed_read(sb, token) for _ in range(3))
    assert 0.100 <= elapsed <= 0.100 + 0.080, elapsed


def test_latency_knob_changes_at_runtime(sb: SandboxHandle, token: str) -> None:
    # The fastest of three: one read on a loaded 2-core machine can take 0.1 s by itself.
    assert min(_timed_read(sb, token) for _ in range(3)) < 0.09
    sb.set_knobs(latency_ms=150)
    assert _timed_read(sb, token) >= 0.150


def test_error_rate_one_answers_503_with_operation_outcome(sb: SandboxHandle, token: str) -> None:
    sb.set_knobs(error_rate=1.0)
    resp = fhir_get(sb, "Patient/pat-a", token)
    assert resp.status_code == 503
    assert resp.json()["issue"][0]["code"] == "transient"
    # Discovery stays up so a client can still find the server.
    assert requests.get(f"{sb.fhir_base}/metadata", timeout=10).status_code == 200


def test_rate_limit_answers_every_nth_request_with_429(sb: SandboxHandle, token: str) -> None:
    sb.set_knobs(rate_limit={"every": 2, "retry_after": 3})
    statuses = [fhir_get(sb, "Patient/pat-a", token) for _ in range(4)]
    limited = [r for r in statuses if r.status_code == 429]
    assert len(limited) == 2
    assert limited[0].headers["Retry-After"] == "3"
    assert sum(r.status_code == 200 for r in statuses) == 2


def test_fail_next_scripts_503_then_200(sb: SandboxHandle, token: str) -> None:
    sb.set_knobs(fail_next=[{"status": 503}])
    assert fhir_get(sb, "Patient/pat-a", token).status_code == 503
    assert fhir_get(sb, "Patient/pat-a", token).status_code == 200


def test_fail_next_scripts_429_with_retry_after_and_400(sb: SandboxHandle, token: str) -> None:
    sb.set_knobs(
        fail_next=[
            {"status": 429, "retry_after": 2},
            {"status": 400, "diagnostics": "bad thing", "path_contains": "Coverage"},
        ]
    )
    # The Coverage entry waits for a matching path; the 429 takes the first request.
    first = fhir_get(sb, "Patient/pat-a", token)
    assert (first.status_code, first.headers["Retry-After"]) == (429, "2")
    assert fhir_get(sb, "Patient/pat-a", token).status_code == 200
    bad = fhir_get(sb, "Coverage?patient=pat-a", token)
    assert bad.status_code == 400
    assert bad.json()["issue"][0]["diagnostics"] == "bad thing"
    assert sb.get_knobs()["fail_next"] == []


def test_knobs_reject_bad_values(sb: SandboxHandle) -> None:
    for bad in (
        {"latency_ms": -1},
        {"error_rate": 2},
        {"disabled": ["teleport"]},
        {"nonsense": 1},
        {"fail_next": [{"diagnostics": "no status"}]},
    ):
        resp = requests.post(f"{sb.base_url}/admin/knobs", json=bad, timeout=10)
        assert resp.status_code == 400, bad
    assert sb.get_knobs()["latency_ms"] == 0


def test_request_log_has_monotonic_times_and_no_tokens(sb: SandboxHandle, token: str) -> None:
    sb.clear_requests()
    with ThreadPoolExecutor(4) as pool:
        sb.set_knobs(latency_ms=100)
        list(pool.map(lambda _: fhir_get(sb, "Patient/pat-a", token), range(4)))
    log = [r for r in sb.requests() if r["path"] == "/fhir/Patient/pat-a"]
    assert len(log) == 4
    for entry in log:
        assert entry["status"] == 200 and entry["method"] == "GET"
        assert entry["end"] - entry["start"] >= 0.1
        assert len(entry["token_sha"]) == 16
        assert token not in str(entry)
    # The four requests were served concurrently (threaded server).
    assert max(e["start"] for e in log) < min(e["end"] for e in log)
    sb.clear_requests()
    assert sb.requests() == []


def test_generate_appointments_adds_a_searchable_day(clients: list[dict]) -> None:
    with running_sandbox(clients=clients) as sb:  # the real fixtures population
        token = login(sb, scope="openid fhirUser user/*.rs", patient="pat-001")["access_token"]
        day = dt.date(2031, 3, 4)
        start = time.perf_counter()
        added = sb.generate_appointments(day.isoformat(), 5000)
        assert added == 5000
        assert time.perf_counter() - start < 10
        again = sb.generate_appointments(day.isoformat(), 10, location="loc-evanston")
        assert again == 10
        bundle = fhir_get(sb, f"Appointment?date={day}&_count=10", token).json()
        assert bundle["total"] == 5010
        assert len(bundle["entry"]) == 10
        here = fhir_get(sb, f"Appointment?date={day}&location=loc-evanston", token).json()
        assert here["total"] >= 10
        assert sb.stats()["resources"]["Appointment"] >= 5010
        sb.reset()
        assert fhir_get(sb, f"Appointment?date={day}", token).status_code == 401  # grants gone
        fresh = login(sb, scope="openid fhirUser user/*.rs")["access_token"]
        assert fhir_get(sb, f"Appointment?date={day}", fresh).json()["total"] == 0


def test_generate_appointments_rejects_bad_input(sb: SandboxHandle) -> None:
    url = f"{sb.base_url}/admin/generate-appointments"
    assert requests.post(url, json={"date": "x", "count": 1}, timeout=10).status_code == 400
    assert requests.post(url, json={"date": "2030-01-01"}, timeout=10).status_code == 400
    unknown = {"date": "2030-01-01", "count": 1, "location": "nowhere"}
    assert requests.post(url, json=unknown, timeout=10).status_code == 404


def test_reset_restores_initial_data(sb: SandboxHandle, token: str) -> None:
    qr = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "subject": {"reference": "Patient/pat-a"},
    }
    user = login(sb, scope="openid fhirUser user/*.cruds")["access_token"]
    headers = {"Authorization": f"Bearer {user}"}
    created = requests.post(
        f"{sb.fhir_base}/QuestionnaireResponse", json=qr, headers=headers, timeout=10
    )
    assert created.status_code == 201
    sb.reset()
    fresh = login(sb, scope="openid fhirUser user/*.rs")["access_token"]
    assert fhir_get(sb, "QuestionnaireResponse", fresh).json()["total"] == 0
    assert fhir_get(sb, "Patient/pat-a", fresh).status_code == 200


def test_admin_clients_registers_at_runtime(sb: SandboxHandle) -> None:
    client = {
        "client_id": "late",
        "type": "confidential-symmetric",
        "client_secret": "x",
        "redirect_uris": ["http://127.0.0.1:9/callback"],
    }
    resp = requests.post(f"{sb.base_url}/admin/clients", json=client, timeout=10)
    assert resp.status_code == 201
    assert resp.json()["client_secret"] == "***"
    bad = requests.post(f"{sb.base_url}/admin/clients", json={"type": "public"}, timeout=10)
    assert bad.status_code == 400
    listing = requests.get(f"{sb.base_url}/admin/clients", timeout=10).json()
    assert "late" in {c["client_id"] for c in listing}
    assert all(c.get("client_secret") in (None, "***") for c in listing)


def test_admin_resources_store_and_show_without_a_token(sb: SandboxHandle) -> None:
    appt = {
        "resourceType": "Appointment",
        "id": "appt-staff",
        "status": "booked",
        "participant": [{"actor": {"reference": "Patient/pat-a"}, "status": "accepted"}],
    }
    token = login(sb, scope="openid fhirUser user/*.rs")["access_token"]
    query = "Appointment?patient=pat-a&status=booked"
    before = fhir_get(sb, query, token).json()["total"]
    stored = sb.put_resource(appt)
    assert stored["meta"]["versionId"] == "1"
    again = requests.post(f"{sb.base_url}/admin/resources", json=appt, timeout=10)
    assert (again.status_code, again.json()["meta"]["versionId"]) == (200, "2")
    assert sb.resource("Appointment", "appt-staff")["meta"]["versionId"] == "2"
    assert fhir_get(sb, query, token).json()["total"] == before + 1
    url = f"{sb.base_url}/admin/resources"
    assert requests.post(url, json={"id": "x"}, timeout=10).status_code == 400
    assert requests.get(f"{url}/Appointment/nope", timeout=10).status_code == 404
