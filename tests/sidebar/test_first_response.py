"""Something useful within 200 ms of the launch, even when the EHR takes seconds (issue 13
§8): the sidebar's first response names the patient (name, DOB, MRN) from the identity
this EHR gave lately, and the EHR's sections fill in as they arrive.

Timed by what the server reports in `Server-Timing` (its wait for the EHR and its own
CPU), not by a client's clock: on a loaded machine the wall clock of both ends grows with
time spent waiting for a CPU, which says nothing about the page's design."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from urllib.parse import urljoin

import pytest
import requests

CLIENT_ID = "caredesk-first-response"
SLOW_EHR_MS = 3000


@pytest.fixture
def sandbox(connected_ehr) -> Iterator[tuple]:  # type: ignore[type-arg]
    yield connected_ehr(CLIENT_ID)


def _launch_to_sidebar(  # type: ignore[no-untyped-def]
    sb, browser: requests.Session, patient: str, *, before_callback: dict | None = None
) -> str:
    """Follow the EHR launch up to (not into) the sidebar: the sidebar's URL.

    ``before_callback``: sandbox knobs set once the user has authorized, before the browser
    brings the code back to CareDesk. The callback starts the patient's reads (issue 16
    §4), so an EHR that is slow or refuses for this launch must be so by then."""
    url = sb.launch(CLIENT_ID, patient=patient)["url"]
    for _ in range(10):
        if before_callback is not None and "/callback" in url:
            sb.set_knobs(**before_callback)
            before_callback = None
        answer = browser.get(url, allow_redirects=False, timeout=30)
        assert answer.status_code in (200, 302, 303), (answer.status_code, answer.text[:300])
        if answer.status_code == 200:  # an auto-posting form (the sandbox's consent)
            form = re.search(r'<form[^>]*action="([^"]+)"', answer.text)
            assert form is not None, answer.text[:300]
            fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', answer.text))
            answer = browser.post(
                urljoin(url, form.group(1)), data=fields, allow_redirects=False, timeout=30
            )
        url = urljoin(url, answer.headers["Location"])
        if re.search(r"/l/[^/]+/$", url):
            return url
    raise AssertionError("the launch did not reach the sidebar")


def _timing(response: requests.Response) -> dict[str, float]:
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"(\w+);dur=([0-9.]+)", response.headers["Server-Timing"])
    }


def test_a_new_launch_names_the_patient_in_its_first_response_when_the_ehr_is_slow(
    sandbox,
) -> None:
    app, sb = sandbox
    # Earlier today, another launch of this EHR read the patient.
    earlier = requests.Session()
    first = _launch_to_sidebar(sb, earlier, "pat-001")
    assert "Okonkwo" in earlier.get(first + "?wait=1", timeout=30).text

    # Now the EHR takes 3 s per request, and a new launch (another user, another
    # browser) opens the same patient.
    browser = requests.Session()
    try:
        url = _launch_to_sidebar(
            sb, browser, "pat-001", before_callback={"latency_ms": SLOW_EHR_MS}
        )
        started = time.monotonic()
        page = browser.get(url, timeout=30)
        elapsed = time.monotonic() - started
        assert page.status_code == 200
        timing = _timing(page)
        # The first response came before the EHR answered anything...
        assert elapsed < SLOW_EHR_MS / 1000, f"{elapsed:.2f}s: the page waited for the EHR"
        assert 'data-testid="sections-loading"' in page.text
        # ...and already says who the patient is: name, DOB, MRN.
        name = re.search(r'data-testid="patient-name">([^<]+)<', page.text)
        assert name is not None and "Okonkwo" in name.group(1), page.text[:2000]
        found = re.search(r'data-testid="patient-facts">(.*?)</(?:p|h1)>', page.text, re.S)
        assert found is not None
        facts = re.sub(r"<[^>]+>", "", found.group(1))
        assert "DOB 1958-03-14" in facts and "MRN 00100237" in facts, facts
        # Within 200 ms as the server measured it: what it waited for the EHR plus its own
        # work (the page's CPU), which is its time to first byte on an idle machine.
        assert timing["ehr"] + timing["cpu"] < 200, timing
        # The rest arrives with the EHR: the page's script asks for the sections part.
        sections = browser.get(url + "part/sections", timeout=30)
        assert sections.status_code == 200 and 'data-testid="coverage-state"' in sections.text
    finally:
        sb.set_knobs(latency_ms=0)


def test_a_first_ever_launch_with_a_slow_ehr_says_the_patient_is_loading(sandbox) -> None:
    """The limit of the above: a patient this process has never read from this EHR cannot
    be named before the EHR's Patient read returns (SMART's launch carries the id only).
    The first response still comes at once, with the actions, and says it is loading."""
    app, sb = sandbox
    browser = requests.Session()
    try:
        url = _launch_to_sidebar(
            sb, browser, "pat-007", before_callback={"latency_ms": SLOW_EHR_MS}
        )
        page = browser.get(url, timeout=30)
        timing = _timing(page)
        assert "Loading the patient from the EHR" in page.text
        assert 'id="cd-actions"' in page.text
        assert timing["ehr"] < 200, timing
        filled = browser.get(url + "?wait=1", timeout=30)
        assert "Loading the patient" not in filled.text
    finally:
        sb.set_knobs(latency_ms=0)


def test_the_identity_read_earlier_is_not_shown_once_the_ehr_refuses_the_record(
    sandbox,
) -> None:
    """A refusal (403) is the EHR's "no" to this launch, not a slow EHR: the identity
    another launch read is not shown in its place."""
    app, sb = sandbox
    earlier = requests.Session()
    first = _launch_to_sidebar(sb, earlier, "pat-001")
    assert "Okonkwo" in earlier.get(first + "?wait=1", timeout=30).text
    browser = requests.Session()
    # The EHR refuses this launch the patient: the callback's early read and the page's
    # own read again (a failed early read is asked again when the page loads).
    refusal = {"status": 403, "path_contains": "Patient/pat-001", "diagnostics": "no"}
    url = _launch_to_sidebar(
        sb, browser, "pat-001", before_callback={"fail_next": [refusal, refusal]}
    )
    page = browser.get(url + "?wait=1", timeout=30)
    assert "Okonkwo" not in page.text
    assert "Patient details unavailable" in page.text
    assert "not permitted by the EHR" in page.text
