"""What an EHR launch puts on its critical path (issue 16 §4), counted in requests and
their order, never timed: the sandbox's request log says when each EHR request started,
and the browser here stops at each redirect so the test decides when the next one goes.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from sqlalchemy import event, select

from helpdesk.db import get_store
from helpdesk.ehr import DbTokenStore
from helpdesk.models import AuditEvent
from plugin import context
from sandbox.testing import SandboxHandle

CLIENT_ID = "caredesk-critical-path"
SIDEBAR_READS = ("/fhir/Patient/pat-001", "/fhir/Appointment", "/fhir/Coverage")


@pytest.fixture
def ehr(connected_ehr) -> Iterator[tuple[Any, SandboxHandle]]:  # type: ignore[no-untyped-def]
    yield connected_ehr(CLIENT_ID)


def _to_the_sidebar_redirect(
    sb: SandboxHandle, browser: requests.Session, seen: list[str] | None = None
) -> str:
    """The launch up to the callback's answer, whose redirect (to the sidebar) is not
    followed: returns the sidebar's URL. ``seen``: cleared before each request, so it
    holds what the callback's request put there."""
    url = sb.launch(CLIENT_ID, patient="pat-001")["url"]
    for _ in range(10):
        if seen is not None:
            seen.clear()
        answer = browser.get(url, allow_redirects=False, timeout=30)
        assert answer.status_code in (302, 303), answer.text[:300]
        url = requests.compat.urljoin(url, answer.headers["Location"])
        if "/l/" in url:
            return url
    raise AssertionError("the launch never redirected to the sidebar")


def _reads(sb: SandboxHandle) -> list[dict[str, Any]]:
    return [r for r in sb.requests() if r["path"] in SIDEBAR_READS]


def _wait_for_reads(sb: SandboxHandle, count: int) -> list[dict[str, Any]]:
    """The sidebar's EHR reads, once ``count`` of them have been answered (or what there
    is after 10 s: nothing asks the sidebar meanwhile)."""
    give_up = time.monotonic() + 10
    while len(found := _reads(sb)) < count and time.monotonic() < give_up:
        time.sleep(0.02)
    return found


def test_the_sidebar_reads_start_in_the_callback_before_the_browser_asks(  # type: ignore[no-untyped-def]
    ehr, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The callback starts the Patient, Appointment and Coverage reads with the tokens it
    has just received (not read back from the store and decrypted); the sidebar takes
    them instead of reading again."""
    app, sb = ehr
    loads: list[str] = []
    real_load = DbTokenStore.load

    def load(self: DbTokenStore, grant_id: str) -> Any:
        loads.append(grant_id)
        return real_load(self, grant_id)

    monkeypatch.setattr(DbTokenStore, "load", load)
    browser = requests.Session()
    sb.clear_requests()
    sidebar_url = _to_the_sidebar_redirect(sb, browser)
    before_the_sidebar = _wait_for_reads(sb, len(SIDEBAR_READS))
    assert sorted(r["path"] for r in before_the_sidebar) == sorted(SIDEBAR_READS)
    assert loads == []
    page = browser.get(sidebar_url, timeout=30)
    assert page.status_code == 200
    assert "Okonkwo" in page.text
    assert 'data-loading="1"' not in page.text  # the whole page, not a loading one
    assert len(_reads(sb)) == len(SIDEBAR_READS)  # nothing read twice
    with get_store(app).session() as session:
        actions = session.execute(
            select(AuditEvent.action, AuditEvent.patient_ref, AuditEvent.detail).order_by(
                AuditEvent.id
            )
        ).all()
    # The reads are on record from the launch on; the page's view is recorded as before.
    assert actions[0] == ("launch", "Patient/pat-001", {"patient_reads": "started"})
    assert ("read", "Patient/pat-001", {"view": "sidebar", "tickets": []}) in actions


def _parts_of(sidebar_url: str) -> context.PatientParts:
    """The launch's reads as CareDesk holds them (this process runs the app)."""
    launch_id = re.search(r"/l/([^/?]+)", sidebar_url)
    assert launch_id is not None
    with context._cache_lock:  # noqa: SLF001
        parts = context._cache.get(f"{launch_id.group(1)}:Patient/pat-001")  # noqa: SLF001
    assert parts is not None
    return parts


def _wait_until(finished: Callable[[], bool]) -> None:
    """The sandbox logs a request before its answer reaches CareDesk: a test that acts on
    what CareDesk made of an answer waits for CareDesk's read itself to finish."""
    give_up = time.monotonic() + 10
    while not finished() and time.monotonic() < give_up:
        time.sleep(0.01)
    assert finished()


def test_a_failed_early_read_is_read_again_by_the_sidebar(ehr) -> None:  # type: ignore[no-untyped-def]
    _app, sb = ehr
    sb.set_knobs(fail_next=[{"status": 503, "path_contains": "/Patient/pat-001"}])
    browser = requests.Session()
    sb.clear_requests()
    sidebar_url = _to_the_sidebar_redirect(sb, browser)
    early = _wait_for_reads(sb, len(SIDEBAR_READS))
    assert [r["status"] for r in early if r["path"] == "/fhir/Patient/pat-001"] == [503]
    _wait_until(_parts_of(sidebar_url).done)
    page = browser.get(sidebar_url, params={"wait": "1"}, timeout=30)
    assert page.status_code == 200
    assert "Okonkwo" in page.text
    patient_reads = [r["status"] for r in _reads(sb) if r["path"] == "/fhir/Patient/pat-001"]
    assert patient_reads == [503, 200]


def test_a_failed_patient_read_is_asked_again_while_the_visits_are_on_their_way(  # type: ignore[no-untyped-def]
    ehr, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Patient read failed, the visits and coverage are still in flight: the next
    page load asks for the Patient again at once and keeps the reads in flight (it does
    not wait for them to finish only to ask for them twice)."""
    _app, sb = ehr
    release = threading.Event()
    real_read_rest = context._read_rest  # noqa: SLF001

    def slow_read_rest(*args: Any) -> dict[str, Any]:
        release.wait(10)
        return real_read_rest(*args)

    monkeypatch.setattr(context, "_read_rest", slow_read_rest)
    sb.set_knobs(fail_next=[{"status": 503, "path_contains": "/Patient/pat-001"}])
    browser = requests.Session()
    sb.clear_requests()
    sidebar_url = _to_the_sidebar_redirect(sb, browser)
    _wait_until(_parts_of(sidebar_url).patient.done)
    assert not _parts_of(sidebar_url).rest.done()
    first = browser.get(sidebar_url, timeout=30)  # a first paint: it does not wait
    assert first.status_code == 200
    _wait_until(_parts_of(sidebar_url).patient.done)
    patient_reads = [r["status"] for r in sb.requests() if r["path"] == "/fhir/Patient/pat-001"]
    assert patient_reads == [503, 200]
    release.set()
    page = browser.get(sidebar_url, params={"wait": "1"}, timeout=30)
    assert "Okonkwo" in page.text
    assert "Annual physical" in page.text
    paths = [r["path"] for r in sb.requests()]
    assert paths.count("/fhir/Appointment") == 1
    assert paths.count("/fhir/Coverage") == 1
    assert paths.count("/fhir/Patient/pat-001") == 2


def test_a_launch_whose_early_reads_cannot_start_still_reaches_the_sidebar(  # type: ignore[no-untyped-def]
    ehr, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The early reads are an optimisation: what stops them (here, no usable grant) is the
    sidebar's to say, not a failed sign-in."""
    from smart_launch.errors import NeedsAuthorization

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise NeedsAuthorization("no usable grant")

    _app, sb = ehr
    monkeypatch.setattr(context, "start_patient", refuse)
    sidebar_url = _to_the_sidebar_redirect(sb, requests.Session())
    assert "/l/" in sidebar_url


def test_launch_and_callback_read_each_row_they_need_once(ehr) -> None:  # type: ignore[no-untyped-def]
    """The rate limiter's key (the EHR registration of an iss, the launch of a state) and
    the view share one read; the callback does not read its launch row again after
    claiming its state. Before the token request the callback reads the launch row, claims
    it, and reads the registration and its keys, nothing else."""
    app, sb = ehr
    statements: list[str] = []

    def statement(conn, cursor, sql, params, context, executemany) -> None:  # type: ignore[no-untyped-def]
        table = re.search(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", sql)
        statements.append(f"{sql.split()[0]} {table.group(1) if table else '?'}")

    # A launch first, as in a running app (the CSP's frame origins are read once per 30 s).
    assert requests.get(sb.launch(CLIENT_ID, patient="pat-001")["url"], timeout=30).ok
    seen_by_path: dict[str, list[str]] = {}
    engine = get_store(app).engine
    event.listen(engine, "before_cursor_execute", statement)
    try:
        browser = requests.Session()
        url = sb.launch(CLIENT_ID, patient="pat-001")["url"]
        while "/l/" not in url:
            statements.clear()
            answer = browser.get(url, allow_redirects=False, timeout=30)
            seen_by_path[url.split("?", 1)[0].rsplit("/", 1)[-1]] = list(statements)
            url = requests.compat.urljoin(url, answer.headers["Location"])
    finally:
        event.remove(engine, "before_cursor_execute", statement)
    assert seen_by_path["launch"].count("SELECT ehr_registration") == 1, seen_by_path["launch"]
    callback = seen_by_path["callback"]
    before_the_token = callback[: callback.index("INSERT audit_event")]
    assert before_the_token == [
        "SELECT launch_session",
        "UPDATE launch_session",
        "SELECT ehr_registration",
        "SELECT signing_key",
    ], callback


def test_the_page_reads_its_store_rows_while_the_ehr_reads_are_in_flight(ehr) -> None:  # type: ignore[no-untyped-def]
    """The page's store rows (tickets, tasks and their calls, surveys and their
    invitations, the channels a STOP closed) are read while it waits for the EHR; once the
    EHR has answered, only the messaging rows of the visits it returned are left."""

    app, sb = ehr
    browser = requests.Session()
    # Long enough that the page's own early reads finish inside it on a loaded CI machine
    # (at 400 ms the race was lost once with both cores busy).
    sb.set_knobs(latency_ms=1200)
    try:
        sidebar_url = _to_the_sidebar_redirect(sb, browser)
        launch_id = sidebar_url.split("/l/", 1)[1].split("/", 1)[0]
        parts = context._cache[f"{launch_id}:Patient/pat-001"]
        assert not parts.done()  # the callback's reads are still at the EHR
        while_reading: list[str] = []
        after_reading: list[str] = []

        def statement(conn, cursor, sql, params, ctx, executemany) -> None:  # type: ignore[no-untyped-def]
            table = re.search(r"\bFROM\s+(\w+)", sql)
            if sql.startswith("SELECT") and table:
                (after_reading if parts.done() else while_reading).append(table.group(1))

        engine = get_store(app).engine
        event.listen(engine, "before_cursor_execute", statement)
        try:
            page = browser.get(sidebar_url, params={"wait": "1"}, timeout=30)
        finally:
            event.remove(engine, "before_cursor_execute", statement)
    finally:
        sb.set_knobs(latency_ms=0)
    assert page.status_code == 200
    assert 'data-loading="1"' not in page.text  # the whole page
    assert after_reading == ["contact_opt_out", "inbound_message"], after_reading
    assert {"ticket", "care_task", "survey_response", "survey_invite", "contact_opt_out"} <= set(
        while_reading
    )
