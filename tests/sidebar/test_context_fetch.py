"""One sidebar load against the sandbox: the FHIR requests go out together, their number
does not grow with the patient's appointments, and a part the EHR refuses is marked
unavailable while the rest of the page renders."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from sandbox.testing import running_sandbox
from tests.ehr import connect
from tests.live import serve

CLIENT_ID = "caredesk-ctx"
LATENCY_MS = 150


@pytest.fixture
def launched(make_app) -> Iterator[tuple]:  # type: ignore[type-arg]
    app = make_app()
    with serve(app) as url, running_sandbox(latency_ms=LATENCY_MS) as sb:
        connect(app, sb, url, client_id=CLIENT_ID)
        browser = requests.Session()
        page = browser.get(sb.launch(CLIENT_ID, patient="pat-001")["url"], timeout=30)
        assert page.status_code == 200
        url = page.url.split("?")[0]
        # The whole page once (the first one may be sent before the EHR answered): the
        # process has then loaded what building a context needs, as a running server has.
        assert "Okonkwo" in browser.get(url + "?wait=1", timeout=30).text
        yield sb, browser, url


def _fhir_requests(sb) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    return [
        r
        for r in sb.requests()
        if r["path"].startswith("/fhir/")
        and "metadata" not in r["path"]
        and ".well-known" not in r["path"]
    ]


def _load(sb, browser, url: str) -> tuple[list[dict], float]:  # type: ignore[no-untyped-def,type-arg]
    sb.clear_requests()
    started = time.monotonic()
    response = browser.get(url + "?refresh=1&wait=1", timeout=30)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    return _fhir_requests(sb), elapsed


def test_sidebar_fhir_requests_overlap_and_do_not_grow_with_appointments(launched) -> None:
    sb, browser, url = launched
    first, elapsed = _load(sb, browser, url)
    paths = sorted(r["path"] for r in first)
    assert paths == ["/fhir/Appointment", "/fhir/Coverage", "/fhir/Patient/pat-001"]
    # All three were in flight at once: the latest start is before the earliest end.
    assert max(r["start"] for r in first) < min(r["end"] for r in first)
    # One wave of EHR latency, not three in a row.
    assert elapsed < 2 * LATENCY_MS / 1000 + 0.5

    sb.generate_appointments(time.strftime("%Y-%m-%d"), 3000)
    second, _ = _load(sb, browser, url)
    assert len(second) == len(first)


def test_a_refused_part_is_marked_unavailable_and_the_rest_renders(launched) -> None:
    sb, browser, url = launched
    sb.set_knobs(
        fail_next=[
            {
                "status": 403,
                "path_contains": "Coverage",
                "diagnostics": "Coverage is not available to this app",
            }
        ]
    )
    response = browser.get(url + "?refresh=1&wait=1", timeout=30)
    assert response.status_code == 200
    assert "Coverage could not be read from the EHR" in response.text
    assert "Okonkwo" in response.text
    assert "No upcoming visits" not in response.text  # visits still came through
