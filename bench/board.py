"""8. The scheduler's day board with 300 appointments, beside its floor.

A scheduler's EHR launch (no patient) against the sandbox, which generates 300
appointments for one day (300 patients); then the board page of that day
(``/l/<id>/board?date=...``) is asked for, one request at a time, as the scheduler's
browser does. CareDesk runs as in production on PostgreSQL, served on loopback in this
process; the sandbox is its own process.

- at L = 50 ms added to every EHR request: the page's time beside its floor, the EHR
  round trips that depend on each other: the day's Appointment pages one after the other
  (each page's ``next`` link comes with the page before), then one wave of the Patient
  and Coverage searches for those patients (independent of each other: they can all go
  at once). The floor is (Appointment pages + 1) x L; the pages are counted in the
  sandbox's request log.
- at L = 0: the server time of the same page (CareDesk's own work plus an EHR on
  loopback that answers at once).
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from typing import Any
from zoneinfo import ZoneInfo

import requests

from bench.common import (
    CLIENT_ID,
    HTTP_TIMEOUT,
    Figure,
    Outcome,
    Row,
    close_app,
    new_app,
    postgres_store,
    register_public_client,
    serve,
)

APPOINTMENTS = 300
LATENCY_MS = 50
SCHEDULER = "Practitioner/prac-scheduler-ortiz"
ZONE = "America/Chicago"


def _board(browser: requests.Session, url: str, day: str) -> float:
    started = time.perf_counter()
    with browser.get(url, params={"date": day}, timeout=HTTP_TIMEOUT) as page:
        body = page.text
        if page.status_code != 200 or "cd-row" not in body:
            raise RuntimeError(f"board answered {page.status_code} without rows")
    return time.perf_counter() - started


def run(*, quick: bool) -> Outcome:
    from helpdesk import migrate
    from sandbox.testing import running_sandbox

    samples = 3 if quick else 7
    day = dt.datetime.now(ZoneInfo(ZONE)).date().isoformat()
    out = Outcome()
    data: dict[str, Any] = {"appointments": APPOINTMENTS, "samples": samples, "date": day}
    out.data = data
    with postgres_store() as db_url, running_sandbox(in_process=False, timezone=ZONE) as sb:
        migrate.upgrade(db_url)
        app = new_app(db_url, VIEWER_TIMEZONE=ZONE)
        try:
            with serve(app) as base:
                register_public_client(app, sb, base)
                added = sb.generate_appointments(day, APPOINTMENTS)
                browser = requests.Session()
                try:
                    page = browser.get(
                        sb.launch(CLIENT_ID, user=SCHEDULER)["url"], timeout=HTTP_TIMEOUT
                    )
                    if page.status_code != 200 or "/board" not in page.url:
                        raise RuntimeError(f"scheduler launch ended at {page.status_code}")
                    url = page.url.split("?", 1)[0]
                    _board(browser, url, day)  # warm: discovery, names, templates
                    by_latency: dict[int, dict[str, Any]] = {}
                    for latency in (0, LATENCY_MS):
                        sb.set_knobs(latency_ms=latency)
                        times = []
                        for i in range(samples):
                            sb.clear_requests()
                            times.append(_board(browser, url, day))
                            if i == 0:
                                fhir = [
                                    f"{r['method']} {r['path']}"
                                    for r in sb.requests()
                                    if r["path"].startswith("/fhir/")
                                ]
                        pages = sum(1 for r in fhir if r.endswith("/Appointment"))
                        by_latency[latency] = {
                            "seconds": times,
                            "median_s": statistics.median(times),
                            "ehr_requests": fhir,
                            "appointment_pages": pages,
                        }
                finally:
                    browser.close()
        finally:
            close_app(app)
    data["appointments_added"] = added
    data["by_latency_ms"] = {str(k): v for k, v in by_latency.items()}
    slow, fast = by_latency[LATENCY_MS], by_latency[0]
    dependent = slow["appointment_pages"] + 1
    floor_s = dependent * LATENCY_MS / 1000
    note = (
        f"median of {samples}; {len(slow['ehr_requests'])} EHR requests, "
        f"{dependent} dependent ({slow['appointment_pages']} Appointment pages + one wave)"
    )
    out.rows.append(
        Row(
            "8 board",
            f"board page, {APPOINTMENTS} appointments, L={LATENCY_MS} ms",
            slow["median_s"] * 1000,
            "ms",
            floor=floor_s * 1000,
            ratio=slow["median_s"] / floor_s,
            note=note,
        )
    )
    out.rows.append(
        Row(
            "8 board",
            f"board page, {APPOINTMENTS} appointments, L=0 (server time)",
            fast["median_s"] * 1000,
            "ms",
            note=f"median of {samples}; {len(fast['ehr_requests'])} EHR requests",
        )
    )
    out.figures.append(
        Figure(
            "board.latency",
            slow["median_s"] * 1000,
            "ms",
            floor_s * 1000,
            f"{dependent} dependent round trips x L",
            note=f"median of {samples}",
        )
    )
    out.figures.append(
        Figure(
            "board.server",
            fast["median_s"] * 1000,
            "ms",
            None,
            "EHR on loopback at L = 0",
            note=f"median of {samples}",
        )
    )
    return out
