from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from smart_launch.errors import FatalFhirError, TemporaryFhirError, UnsafeUrl
from smart_launch.fhir import FhirClient, parallel, read_ahead
from tests.smart_launch.httpfake import FakeServer, Request, Response

OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "not-found", "diagnostics": "Patient/x is gone"}],
}


def client(fake: FakeServer, http: requests.Session, **kw: object) -> FhirClient:
    return FhirClient(f"{fake.base_url}/fhir", lambda: "tok-1", session=http, **kw)  # type: ignore[arg-type]


def bundle(ids: list[str], next_url: str | None) -> dict[str, object]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": {"resourceType": "Patient", "id": i}} for i in ids],
    }


def test_read_sends_bearer_and_returns_resource(fake: FakeServer, http: requests.Session) -> None:
    fake.route("GET", "/fhir/Patient/p1", Response(200, {"resourceType": "Patient", "id": "p1"}))
    assert client(fake, http).read("Patient", "p1")["id"] == "p1"
    assert fake.hits("/fhir/Patient/p1")[0].headers["authorization"] == "Bearer tok-1"


def test_a_netrc_entry_for_the_ehr_neither_replaces_the_token_nor_is_looked_up(
    fake: FakeServer, http: requests.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {urlsplit(fake.base_url).hostname} login someone password pw\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    lookups: list[str] = []
    real = requests.sessions.get_netrc_auth

    def counted(url: str, raise_errors: bool = False) -> tuple[str, str] | None:
        lookups.append(url)
        return real(url, raise_errors)

    monkeypatch.setattr(requests.sessions, "get_netrc_auth", counted)
    fake.route("GET", "/fhir/Patient/p1", Response(200, {"resourceType": "Patient", "id": "p1"}))
    fake.route("GET", "/fhir/metadata", Response(200, {"resourceType": "CapabilityStatement"}))
    fhir = client(fake, http)  # a plain requests.Session, as the reader fuzzing's
    fhir.read("Patient", "p1")
    fhir.capabilities()
    # requests by itself would send the file's login as Basic credentials instead of the
    # token (and with /metadata, where no token goes); it looked the file up each time.
    assert fake.hits("/fhir/Patient/p1")[0].headers["authorization"] == "Bearer tok-1"
    assert "authorization" not in fake.hits("/fhir/metadata")[0].headers
    assert lookups == []


def test_search_all_follows_relative_and_absolute_next_links(
    fake: FakeServer, http: requests.Session
) -> None:
    def page(req: Request) -> Response:
        n = req.query.get("page", "1")
        if n == "1":
            return Response(200, bundle(["a", "b"], "Patient?page=2"))
        if n == "2":
            return Response(200, bundle(["c"], f"{fake.base_url}/fhir/Patient?page=3"))
        return Response(200, bundle(["d"], None))

    fake.route("GET", "/fhir/Patient", page)
    ids = [r["id"] for r in client(fake, http).search_all("Patient", {"name": "x"})]
    assert ids == ["a", "b", "c", "d"]


def test_search_all_stops_at_page_limit(fake: FakeServer, http: requests.Session) -> None:
    fake.route("GET", "/fhir/Patient", Response(200, bundle(["a"], "Patient?again=1")))
    assert len(list(client(fake, http).search_all("Patient", {}, max_pages=3))) == 3
    assert len(fake.hits("/fhir/Patient")) == 3


def test_off_base_next_link_is_an_error_not_a_request(
    fake: FakeServer, http: requests.Session
) -> None:
    with FakeServer() as elsewhere:
        fake.route(
            "GET", "/fhir/Patient", Response(200, bundle(["a"], f"{elsewhere.base_url}/steal"))
        )
        results = client(fake, http).search_all("Patient", {})
        assert next(results)["id"] == "a"
        with pytest.raises(UnsafeUrl):
            next(results)
        assert elsewhere.requests == []


def test_redirect_off_base_is_not_followed(fake: FakeServer, http: requests.Session) -> None:
    with FakeServer() as elsewhere:
        fake.route(
            "GET", "/fhir/Patient/p1", Response(302, None, {"Location": f"{elsewhere.base_url}/x"})
        )
        with pytest.raises(UnsafeUrl):
            client(fake, http).read("Patient", "p1")
        assert elsewhere.requests == []


def test_unauthorized_refreshes_once_and_retries(fake: FakeServer, http: requests.Session) -> None:
    def patient(req: Request) -> Response:
        if req.headers["authorization"] == "Bearer tok-2":
            return Response(200, {"resourceType": "Patient", "id": "p1"})
        return Response(401, {"error": "invalid_token"})

    fake.route("GET", "/fhir/Patient/p1", patient)
    calls: list[int] = []

    def on_unauthorized() -> str:
        calls.append(1)
        return "tok-2"

    fhir = client(fake, http, on_unauthorized=on_unauthorized)
    assert fhir.read("Patient", "p1")["id"] == "p1"
    assert calls == [1]


def test_second_unauthorized_is_fatal(fake: FakeServer, http: requests.Session) -> None:
    fake.route(
        "GET",
        "/fhir/Patient/p1",
        Response(401, {"error": "invalid_token", "error_description": "expired"}),
    )
    fhir = client(fake, http, on_unauthorized=lambda: "tok-2")
    with pytest.raises(FatalFhirError, match="expired") as info:
        fhir.read("Patient", "p1")
    assert info.value.status == 401
    assert len(fake.hits("/fhir/Patient/p1")) == 2


def test_not_found_carries_operation_outcome_text(fake: FakeServer, http: requests.Session) -> None:
    fake.route("GET", "/fhir/Patient/x", Response(404, OUTCOME))
    with pytest.raises(FatalFhirError) as info:
        client(fake, http).read("Patient", "x")
    # Our sentence and the EHR's words apart; str() quotes the EHR's, attributed.
    assert info.value.summary == "read Patient failed with HTTP 404."
    assert info.value.ehr_text == "Patient/x is gone"
    assert info.value.party == "ehr"
    assert str(info.value) == 'read Patient failed with HTTP 404. The EHR said: "Patient/x is gone"'
    assert info.value.status == 404
    assert info.value.operation_outcome == OUTCOME


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_temporary_statuses_raise_temporary_error_with_retry_after(
    fake: FakeServer, http: requests.Session, status: int
) -> None:
    fake.route("GET", "/fhir/Patient/p1", Response(status, OUTCOME, {"Retry-After": "7"}))
    with pytest.raises(TemporaryFhirError) as info:
        client(fake, http).read("Patient", "p1")
    assert info.value.retry_after == 7.0
    assert info.value.status == status


def test_retry_after_is_honored_when_retries_allowed(
    fake: FakeServer, http: requests.Session
) -> None:
    seen: list[float] = []

    def flaky(req: Request) -> Response:
        seen.append(time.monotonic())
        if len(seen) == 1:
            return Response(429, OUTCOME, {"Retry-After": "1"})
        return Response(200, {"resourceType": "Patient", "id": "p1"})

    fake.route("GET", "/fhir/Patient/p1", flaky)
    assert client(fake, http, max_retries_after=1).read("Patient", "p1")["id"] == "p1"
    assert seen[1] - seen[0] >= 0.95


def test_timeout_is_temporary(fake: FakeServer, http: requests.Session) -> None:
    release = threading.Event()

    def slow(req: Request) -> Response:
        release.wait(2)
        return Response(200, {})

    fake.route("GET", "/fhir/Patient/p1", slow)
    try:
        with pytest.raises(TemporaryFhirError, match="did not answer in time"):
            client(fake, http, timeout=0.2).read("Patient", "p1")
    finally:
        release.set()


def test_batch_returns_per_entry_results_and_errors(
    fake: FakeServer, http: requests.Session
) -> None:
    def answer(req: Request) -> Response:
        sent = req.json()
        assert sent["type"] == "batch"
        assert [e["request"]["url"] for e in sent["entry"]] == ["Patient/p1", "Coverage?patient=p1"]
        return Response(
            200,
            {
                "resourceType": "Bundle",
                "type": "batch-response",
                "entry": [
                    {
                        "resource": {"resourceType": "Patient", "id": "p1"},
                        "response": {"status": "200 OK"},
                    },
                    {"response": {"status": "403 Forbidden", "outcome": OUTCOME}},
                ],
            },
        )

    fake.route("POST", "/fhir", answer)
    results = client(fake, http).batch(
        [{"method": "GET", "url": "Patient/p1"}, {"method": "GET", "url": "Coverage?patient=p1"}]
    )
    assert results[0] == {"resourceType": "Patient", "id": "p1"}
    assert isinstance(results[1], FatalFhirError)
    assert results[1].status == 403 and results[1].ehr_text == "Patient/x is gone"


def test_create_sends_if_none_exist(fake: FakeServer, http: requests.Session) -> None:
    fake.route(
        "POST",
        "/fhir/QuestionnaireResponse",
        lambda req: Response(
            201, {**req.json(), "id": "qr1"}, {"Location": "QuestionnaireResponse/qr1"}
        ),
    )
    status, body = client(fake, http).create(
        {"resourceType": "QuestionnaireResponse", "status": "completed"},
        if_none_exist="identifier=urn:caredesk|inv-1",
    )
    assert (status, body["id"]) == (201, "qr1")
    sent = fake.hits("/fhir/QuestionnaireResponse")[0]
    assert sent.headers["if-none-exist"] == "identifier=urn:caredesk|inv-1"
    assert sent.headers["content-type"] == "application/fhir+json"


def test_capabilities_is_fetched_without_token(fake: FakeServer, http: requests.Session) -> None:
    fake.route("GET", "/fhir/metadata", Response(200, {"resourceType": "CapabilityStatement"}))
    assert client(fake, http).capabilities()["resourceType"] == "CapabilityStatement"
    assert "authorization" not in fake.hits("/fhir/metadata")[0].headers


def test_parallel_runs_concurrently_and_keeps_order_and_errors() -> None:
    barrier = threading.Barrier(3, timeout=5)

    def call(i: int) -> int:
        barrier.wait()  # deadlocks (and times out) unless all three run at once
        if i == 1:
            raise ValueError("boom")
        return i

    results = parallel([lambda i=i: call(i) for i in range(3)])  # type: ignore[misc]
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], ValueError)


def test_read_ahead_asks_for_the_next_item_while_the_caller_works_on_this_one() -> None:
    asked: list[int] = []
    second_asked = threading.Event()

    def items():  # type: ignore[no-untyped-def]
        for i in range(3):
            asked.append(i)
            if i == 1:
                second_asked.set()
            yield i

    with ThreadPoolExecutor(max_workers=1) as pool:
        seen = []
        for item in read_ahead(items(), pool):
            if item == 0:
                # The caller is still on item 0: item 1 is being read already.
                assert second_asked.wait(timeout=10)
            seen.append(item)
    assert seen == [0, 1, 2] and asked == [0, 1, 2]


def test_read_ahead_raises_where_the_failed_item_would_be_and_stops_when_the_caller_does() -> None:
    def failing():  # type: ignore[no-untyped-def]
        yield "page 1"
        raise TemporaryFhirError("page 2 failed", status=503)

    with ThreadPoolExecutor(max_workers=1) as pool:
        got = []
        with pytest.raises(TemporaryFhirError):
            for item in read_ahead(failing(), pool):
                got.append(item)
        assert got == ["page 1"]

    asked: list[int] = []

    def endless():  # type: ignore[no-untyped-def]
        i = 0
        while True:
            asked.append(i)
            yield i
            i += 1

    with ThreadPoolExecutor(max_workers=1) as pool:
        for item in read_ahead(endless(), pool):
            if item == 2:
                break
    # At most two items are read ahead of the caller's, then nothing more.
    assert asked[:3] == [0, 1, 2] and len(asked) <= 5
