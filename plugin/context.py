"""Fetching what the sidebar and the board show: FHIR reads that go out together, never
one after another, plus the store's rows; then the pure mappers make the context.

A part that cannot be fetched (scope not granted, 403, EHR error) is marked unavailable;
the rest of the page still renders.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from cachetools import TTLCache
from flask import current_app
from sqlalchemy import select

from fhir_mappers.board import board_rows, coverages_by_patient, patient_of, sort_by_flags
from fhir_mappers.fhirutil import human_name
from helpdesk import ehr
from helpdesk.db import get_db
from helpdesk.models import CareTask, LaunchSession, Ticket
from helpdesk.surveys import latest_for_patient
from helpdesk.timeutil import utcnow
from smart_launch.errors import FhirError, NeedsAuthorization, SmartError
from smart_launch.fhir import FhirClient, parallel

log = logging.getLogger("caredesk.context")

CONTEXT_TTL_SECONDS = 30.0
PAST_DAYS = 365
UPCOMING_DAYS = 180
PAGE = 100
CHUNK = 50  # ids per `_id=` / `patient=` search on the board: requests grow per 50 rows


# Per process, per launch and patient, short-lived: the sidebar re-renders without
# re-fetching. Memory only, bounded (it holds PHI): nothing is written to Redis or disk.
_cache: TTLCache[str, dict[str, Any]] = TTLCache(maxsize=512, ttl=CONTEXT_TTL_SECONDS)
_cache_lock = threading.Lock()


def _cached(key: str) -> dict[str, Any] | None:
    with _cache_lock:
        return _cache.get(key)


def _remember(key: str, value: dict[str, Any]) -> None:
    with _cache_lock:
        _cache[key] = value


def invalidate(launch_id: str, patient_ref: str | None = None) -> None:
    """Forget cached context after a change (a new ticket or task shows at once)."""
    with _cache_lock:
        if patient_ref is None:
            for key in [k for k in _cache if k.startswith(f"{launch_id}:")]:
                _cache.pop(key, None)
        else:
            _cache.pop(f"{launch_id}:{patient_ref}", None)


def viewer_tz() -> str:
    return str(current_app.config.get("VIEWER_TIMEZONE") or "UTC")


def _client(launch: LaunchSession) -> FhirClient:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return ehr.fhir_client(app, launch.registration, launch=launch, as_user=True)


def _unavailable(exc: Exception) -> str:
    if isinstance(exc, FhirError) and exc.status in (401, 403):
        return "not permitted by the EHR for this session"
    if isinstance(exc, FhirError) and exc.status == 404:
        return "not found in the EHR"
    if isinstance(exc, SmartError):
        return exc.message
    return "the EHR did not answer"


def _entries(bundle: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    matches: list[dict[str, Any]] = []
    included: list[dict[str, Any]] = []
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            continue
        mode = (entry.get("search") or {}).get("mode", "match")
        (included if mode == "include" else matches).append(resource)
    more = any(link.get("relation") == "next" for link in bundle.get("link") or [])
    return matches, included, more


def fetch_context(
    launch: LaunchSession, *, patient_ref: str | None = None, use_cache: bool = True
) -> dict[str, Any]:
    """A patient's help-desk context as JSON (see ``fhir_mappers.context``): the launch's
    patient, or ``patient_ref`` when a scheduler opens one from the board."""
    from fhir_mappers.context import build_context

    patient_ref = patient_ref or launch.patient_ref
    if not patient_ref or not patient_ref.startswith("Patient/"):
        raise NeedsAuthorization("This launch has no patient; open CareDesk from a chart.")
    cache_key = f"{launch.id}:{patient_ref}"
    fhir = _cached(cache_key) if use_cache else None
    if fhir is None:
        fhir = _fetch_patient_parts(launch, patient_ref)
        _remember(cache_key, fhir)
    patient = fhir["patient"]
    appointments = fhir["appointments"]
    included = fhir["included"]
    coverage_list = fhir["coverages"]
    unavailable = dict(fhir["unavailable"])
    more_visits = fhir["more_visits"]
    now = utcnow().astimezone(ZoneInfo(viewer_tz()))

    db = get_db()
    tickets = [
        {
            "id": t.id,
            "subject": t.subject,
            "status": t.status,
            "priority": t.priority,
            "category": t.category,
            "due_at": t.due_at.isoformat() if t.due_at else None,
        }
        for t in db.scalars(
            select(Ticket)
            .where(
                Ticket.registration_id == launch.registration_id,
                Ticket.patient_ref == patient_ref,
                Ticket.status.in_(("open", "pending")),
            )
            .order_by(Ticket.id.desc())
        )
    ]
    tasks = [
        {
            "id": t.id,
            "kind": t.kind,
            "status": t.status,
            "attempts": t.attempts,
            "due_at": t.due_at.isoformat() if t.due_at else None,
            "last_error": t.last_error,
            "reason": (t.payload or {}).get("reason"),
        }
        for t in db.scalars(
            select(CareTask)
            .where(
                CareTask.registration_id == launch.registration_id,
                CareTask.patient_ref == patient_ref,
                CareTask.status.notin_(("done", "cancelled")),
            )
            .order_by(CareTask.id.desc())
            .limit(20)
        )
    ]
    surveys = _surveys(launch, patient_ref)
    context = build_context(
        patient=patient,
        appointments=appointments,
        included=included,
        coverages=coverage_list,
        now=now,
        viewer_tz=viewer_tz(),
        tickets=tickets,
        tasks=tasks,
        surveys=surveys,
        unavailable=unavailable,
    ).to_json()
    context["more_visits_in_ehr"] = more_visits
    context["missing_scopes"] = (launch.context or {}).get("missing_scopes") or []
    context["patient_ref"] = patient_ref
    return context


def _fetch_patient_parts(launch: LaunchSession, patient_ref: str) -> dict[str, Any]:
    """The FHIR side of the context, in one wave of parallel reads. Cached briefly; the
    store's rows (tickets, tasks, surveys) are always read fresh."""
    patient_id = patient_ref.split("/", 1)[1]
    tz = ZoneInfo(viewer_tz())
    now = utcnow().astimezone(tz)
    client = _client(launch)
    window = [
        ("patient", patient_id),
        ("date", f"ge{(now - dt.timedelta(days=PAST_DAYS)).date().isoformat()}"),
        ("date", f"le{(now + dt.timedelta(days=UPCOMING_DAYS)).date().isoformat()}"),
        ("_include", "Appointment:actor"),
        ("_count", str(PAGE)),
    ]
    calls: Sequence[Callable[[], dict[str, Any]]] = (
        lambda: client.read("Patient", patient_id),
        lambda: client.search("Appointment", window),
        lambda: client.search("Coverage", [("beneficiary", f"Patient/{patient_id}")]),
    )
    # One wave: the three reads overlap, so the sidebar costs one EHR round trip.
    patient_read, appts, coverages = parallel(calls, max_workers=3)
    unavailable: dict[str, str] = {}
    patient: dict[str, Any] | None = None
    if isinstance(patient_read, Exception):
        unavailable["patient"] = _unavailable(patient_read)
    else:
        patient = patient_read
    appointments: list[dict[str, Any]] = []
    included: list[dict[str, Any]] = []
    more_visits = False
    if isinstance(appts, Exception):
        unavailable["visits"] = _unavailable(appts)
    else:
        appointments, included, more_visits = _entries(appts)
    coverage_list: list[dict[str, Any]] | None = None
    if isinstance(coverages, Exception):
        unavailable["coverage"] = _unavailable(coverages)
    else:
        coverage_list = _entries(coverages)[0]
    for part, exc in (("patient", patient_read), ("visits", appts), ("coverage", coverages)):
        if isinstance(exc, Exception):
            log.info("context part %s unavailable: %s", part, type(exc).__name__)

    return {
        "patient": patient,
        "appointments": appointments,
        "included": included,
        "coverages": coverage_list,
        "unavailable": unavailable,
        "more_visits": more_visits,
    }


def _surveys(launch: LaunchSession, patient_ref: str) -> list[dict[str, Any]]:
    latest = latest_for_patient(get_db(), launch.registration_id, patient_ref)
    return [latest] if latest else []


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
