"""Fetching what the sidebar and the board show: FHIR reads that go out together, never
one after another, plus the store's rows; then the pure mappers make the context.

A part that cannot be fetched (scope not granted, 403, EHR error) is marked unavailable;
the rest of the page still renders.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from cachetools import TTLCache
from flask import current_app
from sqlalchemy import select

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
