"""Fetching the scheduler board's day: paged FHIR searches (requests per 50 rows, never per
row) and the store's rows, handed to the pure board mapper.

Split from ``plugin.context`` (the patient's context) so the board's reads live apart from
the sidebar's; both share the client and the "unavailable" wording from there.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from cachetools import TTLCache
from sqlalchemy import select

from fhir_mappers.board import board_rows, coverages_by_patient, patient_of, sort_by_flags
from fhir_mappers.fhirutil import human_name
from helpdesk.db import get_db
from helpdesk.models import CareTask, LaunchSession, Ticket
from helpdesk.timeutil import utcnow
from plugin.context import PAGE, _client, _unavailable, viewer_tz
from smart_launch.fhir import FhirClient, parallel

CHUNK = 50  # ids per `_id=` / `patient=` search on the board: requests grow per 50 rows

_cache_lock = threading.Lock()


def _all(client: FhirClient, rtype: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return list(client.search_all(rtype, params))


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def fetch_board(
    launch: LaunchSession,
    *,
    day: dt.date,
    location: str | None = None,
    practitioner: str | None = None,
    sort: str = "time",
) -> dict[str, Any]:
    """The day's appointments with flags, from paged searches (requests per 50 rows, not
    per row): appointments with their actors, then patients and coverages by id lists."""
    tz = ZoneInfo(viewer_tz())
    start = dt.datetime.combine(day, dt.time.min, tz)
    end = start + dt.timedelta(days=1)
    params: list[tuple[str, str]] = [
        ("date", f"ge{start.isoformat()}"),
        ("date", f"lt{end.isoformat()}"),
        ("_include", "Appointment:actor"),
        ("_count", str(PAGE)),
    ]
    if location:
        params.append(("location", location))
    if practitioner:
        params.append(("practitioner", practitioner))
    client = _client(launch)
    appointments: list[dict[str, Any]] = []
    included: dict[str, dict[str, Any]] = {}

    def day_appointments() -> None:
        for resource in client.search_all("Appointment", params, max_pages=100):
            if resource.get("resourceType") == "Appointment":
                appointments.append(resource)
            else:
                included[f"{resource.get('resourceType')}/{resource.get('id')}"] = resource

    # The filter choices go out with the day's first page, not after it.
    first_wave = parallel([day_appointments, lambda: _filter_choices(launch, client)])
    if isinstance(first_wave[0], Exception):
        raise first_wave[0]
    choices: dict[str, list[dict[str, str]]] = (
        first_wave[1] if isinstance(first_wave[1], dict) else {}
    )
    patient_refs = sorted({ref for a in appointments if (ref := patient_of(a))})
    ids = [ref.split("/", 1)[1] for ref in patient_refs]
    calls: list[Callable[[], list[dict[str, Any]]]] = []
    for chunk in _chunks(ids, CHUNK):
        patients_param = [("_id", ",".join(chunk))]
        coverage_param = [("patient", ",".join(f"Patient/{i}" for i in chunk))]
        calls.append(partial(_all, client, "Patient", patients_param))
        calls.append(partial(_all, client, "Coverage", coverage_param))
    results = parallel(calls, max_workers=4)
    patients: dict[str, dict[str, Any]] = {}
    coverage_resources: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    for index, result in enumerate(results):
        if isinstance(result, Exception):
            unavailable["patients" if index % 2 == 0 else "coverage"] = _unavailable(result)
            continue
        if index % 2 == 0:
            patients.update({f"Patient/{p.get('id')}": p for p in result})
        else:
            coverage_resources.extend(result)
    db = get_db()
    open_ticket_patients = (
        frozenset(
            ref
            for ref in db.scalars(
                select(Ticket.patient_ref).where(
                    Ticket.registration_id == launch.registration_id,
                    Ticket.patient_ref.in_(patient_refs),
                    Ticket.status.in_(("open", "pending")),
                )
            )
            if ref
        )
        if patient_refs
        else frozenset()
    )
    appointment_refs = [f"Appointment/{a.get('id')}" for a in appointments]
    failed = (
        frozenset(
            ref
            for ref in db.scalars(
                select(CareTask.payload).where(
                    CareTask.registration_id == launch.registration_id,
                    CareTask.kind == "reminder",
                    CareTask.status == "failed",
                    CareTask.patient_ref.in_(patient_refs),
                )
            )
            for ref in [str((ref or {}).get("appointment_ref", ""))]
            if ref in appointment_refs
        )
        if patient_refs
        else frozenset()
    )
    rows = board_rows(
        appointments=appointments,
        included=included,
        patients=patients,
        coverages=coverages_by_patient(coverage_resources),
        open_ticket_patients=open_ticket_patients,
        failed_reminder_appointments=failed,
        now=utcnow().astimezone(tz),
        viewer_tz=viewer_tz(),
    )
    if sort == "flags":
        rows = sort_by_flags(rows)
    return {
        "date": day.isoformat(),
        "location": location,
        "practitioner": practitioner,
        "sort": sort,
        "rows": [r.to_json() for r in rows],
        "unavailable": unavailable,
        "locations": choices.get("locations", []),
        "practitioners": choices.get("practitioners", []),
    }


# Filter choices per EHR (names of places and clinicians, no patient data), 10 minutes.
_choices_cache: TTLCache[int, dict[str, list[dict[str, str]]]] = TTLCache(maxsize=64, ttl=600)


def _filter_choices(launch: LaunchSession, client: FhirClient) -> dict[str, list[dict[str, str]]]:
    """Locations and practitioners to filter the board by, per EHR, kept 10 minutes
    (they change rarely). Names only: no patient data."""
    key = launch.registration_id
    with _cache_lock:
        hit = _choices_cache.get(key)
    if hit is not None:
        return hit

    def names(resource_type: str) -> list[dict[str, str]]:
        out = []
        for r in client.search_all(resource_type, [("_count", "200")], max_pages=5):
            if r.get("resourceType") != resource_type or not r.get("id"):
                continue
            if resource_type == "Location":
                label = str(r.get("name") or r["id"])
            else:
                label = human_name(r.get("name")) or str(r["id"])
            out.append({"id": str(r["id"]), "name": label})
        return sorted(out, key=lambda x: x["name"].lower())

    found = parallel([lambda: names("Location"), lambda: names("Practitioner")])
    result = {
        "locations": found[0] if not isinstance(found[0], Exception) else [],
        "practitioners": found[1] if not isinstance(found[1], Exception) else [],
    }
    with _cache_lock:
        _choices_cache[key] = result
    return result
