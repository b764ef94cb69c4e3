"""Fetching what the sidebar and the board show: FHIR reads that go out together, never
one after another, plus the store's rows; then the pure mappers make the context.

A part that cannot be fetched (scope not granted, 403, EHR error) is marked unavailable;
the rest of the page still renders.

The sidebar's reads start as soon as the page is asked for and run in a small bounded
pool, so the page can be sent at once with what is known (the store's rows, the actions)
and its EHR sections filled as the reads arrive (``PatientParts``): a slow EHR costs the
clinician a loading line, not a blank panel.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from cachetools import TTLCache
from flask import Flask, current_app
from sqlalchemy import select

from fhir_mappers.bundle import search_entries
from fhir_mappers.fhirutil import human_name
from fhir_mappers.names import unresolved_references
from helpdesk import ehr, messaging, stamps
from helpdesk.access import scope_of
from helpdesk.db import get_db
from helpdesk.kv import EXTENSION as KV_EXTENSION
from helpdesk.models import CallAttempt, CareTask, LaunchSession, SurveyInvite, Ticket
from helpdesk.surveys import latest_for_patient
from helpdesk.tickets import ACTIVE_STATUSES, MOST_URGENT_FIRST
from helpdesk.timeutil import utcnow
from plugin.rowjson import columns
from smart_launch.errors import FhirError, NeedsAuthorization, SmartError
from smart_launch.fhir import FhirClient, parallel
from smart_launch.tokens import TokenSet

log = logging.getLogger("caredesk.context")

CONTEXT_TTL_SECONDS = 30.0
PAST_DAYS = 365
UPCOMING_DAYS = 180
PAGE = 100
CHUNK = 50  # ids per `_id=` / `patient=` search on the board: requests grow per 50 rows
# Longest a request waits for the EHR before answering with what it has.
WAIT_SECONDS = 20.0


# Per process, per launch and patient, short-lived: the sidebar re-renders without
# re-fetching. Memory only, bounded (it holds PHI): nothing is written to Redis or disk.
_cache: TTLCache[str, PatientParts] = TTLCache(maxsize=512, ttl=CONTEXT_TTL_SECONDS)
_cache_lock = threading.Lock()
# The context built from those reads and the store's rows, per launch and patient: kept
# while the reads are the same cache entry and the patient's change stamps
# (``helpdesk.stamps``) have not moved, so a repeated request reads no store rows and maps
# nothing again. Same bounds and lifetime as the reads (it holds PHI: memory only).
_built: TTLCache[str, tuple[PatientParts, tuple[str, str], dict[str, Any]]] = TTLCache(
    maxsize=512, ttl=CONTEXT_TTL_SECONDS
)
# Names of practitioners, places and payors per EHR (`(registration, Type/id)` ->
# resource): staff and places, no patient data; kept 10 minutes, bounded.
_names: TTLCache[tuple[int, str], dict[str, Any]] = TTLCache(maxsize=4096, ttl=600)
# Who a patient is (the Patient's name, birth date, gender and identifiers only), per EHR
# and patient, as the EHR last gave it to any launch of this process: a launch's first
# page shows name, DOB and MRN at once, before the EHR has answered its own read (issue
# 13 §8: a slow EHR must not cost the clinician the patient's identity), and that read
# replaces it when it arrives. SMART gives no other early source: the launch context and
# the token response carry the patient's id only, and the id_token describes the user.
# Shown only to a launch already allowed that patient (``scope_of`` runs first) and that
# the EHR launched with that patient in context or whose own user read it; never once the
# EHR refused this launch the record. Memory only (PHI), bounded, one working day.
IDENTITY_TTL_SECONDS = 8 * 3600.0
_identities: TTLCache[tuple[int, str, str], tuple[dict[str, Any], dt.datetime, str | None]] = (
    TTLCache(maxsize=4096, ttl=IDENTITY_TTL_SECONDS)
)
_IDENTITY_FIELDS = ("resourceType", "id", "name", "birthDate", "gender", "identifier")
# The sidebar's reads run here: bounded, so a burst of launches queues instead of
# starting a thread per request.
_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="caredesk-context")


@dataclass
class PatientParts:
    """One patient's EHR reads in flight: the Patient alone (identity comes first), and
    the rest (visits with their people and places, coverage)."""

    patient: Future[dict[str, Any]]
    rest: Future[dict[str, Any]]
    started: float = field(default_factory=lambda: utcnow().timestamp())

    def done(self) -> bool:
        return self.patient.done() and self.rest.done()


@dataclass(frozen=True, kw_only=True)
class StoreRows:
    """The help desk's own rows about a patient that the context shows, read while the
    EHR's reads are in flight (``store_rows``) instead of after they arrive. ``stamp``:
    the patient's change stamps, read before the rows (a write in between renews them,
    so a context built from these rows is not cached under the new stamps)."""

    stamp: tuple[str, str] | None
    tickets: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    surveys: list[dict[str, Any]]
    invites: dict[str, dict[str, Any]]


def store_rows(launch: LaunchSession, patient_ref: str) -> StoreRows:
    """What ``fetch_context`` reads from the store (but the messaging summary, which
    needs the EHR's visits), for a caller about to wait for the EHR: the page reads its
    rows during that wait, so only the mapping is left once the EHR answers."""
    scope = scope_of(launch)
    scope.check(patient_ref)
    stamp = stamps.read(_redis(), launch.registration_id, patient_ref)
    return _read_rows(launch, patient_ref, scope, stamp)


def _read_rows(
    launch: LaunchSession, patient_ref: str, scope: Any, stamp: tuple[str, str] | None
) -> StoreRows:
    return StoreRows(
        stamp=stamp,
        tickets=_ticket_rows(scope, patient_ref),
        tasks=task_rows(launch, patient_ref),
        surveys=_surveys(launch, patient_ref),
        invites=survey_invites(launch, patient_ref),
    )


def invalidate(launch_id: str, patient_ref: str | None = None) -> None:
    """Forget cached context after a change (a new ticket or task shows at once)."""
    with _cache_lock:
        for cache in (_cache, _built):
            if patient_ref is None:
                for key in [k for k in cache if k.startswith(f"{launch_id}:")]:
                    cache.pop(key, None)
            else:
                cache.pop(f"{launch_id}:{patient_ref}", None)


def viewer_tz() -> str:
    return str(current_app.config.get("VIEWER_TIMEZONE") or "UTC")


def _client(launch: LaunchSession, token_set: TokenSet | None = None) -> FhirClient:
    """A FHIR client on behalf of the launch's user (what the EHR lets them see)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return ehr.fhir_client(
        app, launch.registration, launch=launch, as_user=True, token_set=token_set
    )


def _unavailable(exc: Exception) -> str:
    if isinstance(exc, FhirError) and exc.status in (401, 403):
        return "not permitted by the EHR for this session"
    if isinstance(exc, FhirError) and exc.status == 404:
        return "not found in the EHR"
    if isinstance(exc, SmartError) and not isinstance(exc, FhirError):
        return exc.summary
    return "the EHR did not answer"


def _entries(bundle: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """(matches, included, more pages) of a searchset: fhir_mappers' one reading, which
    never raises on a Bundle of the wrong shape."""
    return search_entries(bundle)


class _OneRefresh:
    """Wraps a client's token callbacks for the reads of one page.

    Once renewing the grant failed (revoked, expired), the page's other reads fail at
    once instead of each asking the EHR's token endpoint again (it was seen retrying
    three times per page load). Renewals after a 401 are taken one at a time, and a read
    that waited while another renewed uses that renewal instead of starting its own.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failed: NeedsAuthorization | None = None
        self.renewed: str | None = None
        self.used = threading.local()  # the token this thread's last request carried

    def _fail(self, exc: NeedsAuthorization) -> None:
        self.failed = exc

    def token(self, call: Callable[[], str]) -> Callable[[], str]:
        def guarded() -> str:
            if self.failed is not None:
                raise self.failed
            try:
                token = call()
            except NeedsAuthorization as exc:
                self._fail(exc)
                raise
            self.used.token = token
            return token

        return guarded

    def renew(self, call: Callable[[], str]) -> Callable[[], str]:
        def guarded() -> str:
            with self.lock:
                if self.failed is not None:
                    raise self.failed
                if self.renewed is not None and getattr(self.used, "token", None) != self.renewed:
                    # Another read renewed after this one's token was taken: use that.
                    self.used.token = self.renewed
                    return self.renewed
                try:
                    fresh = call()
                except NeedsAuthorization as exc:
                    self._fail(exc)
                    raise
                self.renewed = self.used.token = fresh
                return fresh

        return guarded


def _page_client(launch: LaunchSession, token_set: TokenSet | None = None) -> FhirClient:
    client = _client(launch, token_set)
    guard = _OneRefresh()
    # FhirClient keeps its callbacks as attributes; the guard goes around both.
    client._token = guard.token(client._token)  # noqa: SLF001
    if client.on_unauthorized is not None:
        client.on_unauthorized = guard.renew(client.on_unauthorized)
    return client


def start_patient(
    launch: LaunchSession,
    patient_ref: str,
    *,
    use_cache: bool = True,
    retry_failed: bool = True,
    token_set: TokenSet | None = None,
) -> PatientParts:
    """The patient's EHR reads, started now (or the ones already in flight or cached).

    Reads that finished with a failure are started again (a page load is the user asking
    again) unless ``retry_failed`` is false: the page's own fragments take what the page
    started, so one page load never asks the EHR twice. ``token_set``: the launch's
    tokens when the caller holds them (the callback), for the first request."""
    if not patient_ref.startswith("Patient/"):
        raise NeedsAuthorization("This launch has no patient; open CareDesk from a chart.")
    # Before any read: a launch from A's chart never reads or shows B (403).
    scope_of(launch).check(patient_ref)
    key = f"{launch.id}:{patient_ref}"
    with _cache_lock:
        found = _cache.get(key) if use_cache else None
    # Each part on its own: a Patient read that failed is asked again even while the
    # visits are still on their way (and those are kept, not asked twice).
    again_patient, again_rest = _failed_parts(found) if found is not None else (True, True)
    if found is not None and not (retry_failed and (again_patient or again_rest)):
        return found
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        client = _page_client(launch, token_set)
    except NeedsAuthorization:
        raise
    except SmartError as exc:
        # Discovery failed (the EHR is down): every part is unavailable, said in words.
        parts = PatientParts(patient=Future(), rest=Future())
        parts.patient.set_exception(exc)
        parts.rest.set_exception(exc)
        with _cache_lock:
            _cache[key] = parts
        return parts
    patient_id = patient_ref.split("/", 1)[1]
    tz = ZoneInfo(viewer_tz())
    now = utcnow().astimezone(tz)

    def in_app(call: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            with app.app_context():
                return call()

        return run

    identity_key = (launch.registration_id, launch.registration.iss, patient_ref)

    def read_patient() -> dict[str, Any]:
        resource = client.read("Patient", patient_id)
        if resource.get("resourceType") == "Patient":
            kept = {k: resource[k] for k in _IDENTITY_FIELDS if k in resource}
            with _cache_lock:
                _identities[identity_key] = (kept, utcnow(), launch.fhir_user)
        return resource

    parts = PatientParts(
        patient=(
            _pool.submit(in_app(read_patient)) if found is None or again_patient else found.patient
        ),
        rest=(
            _pool.submit(
                in_app(partial(_read_rest, client, launch.registration_id, patient_id, now))
            )
            if found is None or again_rest
            else found.rest
        ),
    )
    with _cache_lock:
        _cache[key] = parts
    return parts


def _failed_parts(parts: PatientParts) -> tuple[bool, bool]:
    """Which of the reads (the Patient, the rest) finished with a failure: those are not
    kept, the next page load asks again. One still on its way has not failed."""
    patient = parts.patient.done() and parts.patient.exception() is not None
    rest = parts.rest.done() and (
        parts.rest.exception() is not None or bool(parts.rest.result().get("unavailable"))
    )
    return patient, rest


def _failed(parts: PatientParts) -> bool:
    """A finished read that failed is not kept: the next page load asks again."""
    return any(_failed_parts(parts))


def _read_rest(
    client: FhirClient, registration_id: int, patient_id: str, now: dt.datetime
) -> dict[str, Any]:
    """Visits (with their people and places) and coverage: one wave of parallel searches,
    then one `_id=` search per type for the names the EHR's references did not carry."""
    window = [
        ("patient", patient_id),
        ("date", f"ge{(now - dt.timedelta(days=PAST_DAYS)).date().isoformat()}"),
        ("date", f"le{(now + dt.timedelta(days=UPCOMING_DAYS)).date().isoformat()}"),
        ("_include", "Appointment:actor"),
        ("_count", str(PAGE)),
    ]
    appts, coverages = parallel(
        [
            lambda: client.search("Appointment", window),
            lambda: client.search("Coverage", [("beneficiary", f"Patient/{patient_id}")]),
        ],
        max_workers=2,
    )
    for exc in (appts, coverages):
        if isinstance(exc, NeedsAuthorization):
            raise exc
    unavailable: dict[str, str] = {}
    appointments: list[dict[str, Any]] = []
    included: list[dict[str, Any]] = []
    more_visits = False
    if isinstance(appts, Exception):
        unavailable["visits"] = _unavailable(appts)
        log.info("context part visits unavailable: %s", type(appts).__name__)
    else:
        appointments, included, more_visits = _entries(appts)
    coverage_list: list[dict[str, Any]] | None = None
    if isinstance(coverages, Exception):
        unavailable["coverage"] = _unavailable(coverages)
        log.info("context part coverage unavailable: %s", type(coverages).__name__)
    else:
        coverage_list = _entries(coverages)[0]
    included.extend(
        _names_of(client, registration_id, [*appointments, *(coverage_list or [])], included)
    )
    return {
        "appointments": appointments,
        "included": included,
        "coverages": coverage_list,
        "unavailable": unavailable,
        "more_visits": more_visits,
    }


def _names_of(
    client: FhirClient,
    registration_id: int,
    resources: Sequence[dict[str, Any]],
    included: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The practitioners, places and payors the references name without a `display` (a
    real third-party server sends none): from this EHR's name cache, else one `_id=a,b`
    search per type, all types at once. At most two rounds (a PractitionerRole names its
    practitioner). A failed search leaves those names unknown, and the page says so."""
    found: list[dict[str, Any]] = []
    for _ in range(2):
        wanted = unresolved_references(resources, [*included, *found])
        if not wanted:
            break
        missing: dict[str, list[str]] = {}
        for rtype, ids in wanted.items():
            for rid in ids:
                with _cache_lock:
                    hit = _names.get((registration_id, f"{rtype}/{rid}"))
                if hit is not None:
                    found.append(hit)
                else:
                    missing.setdefault(rtype, []).append(rid)
        if not missing:
            continue
        searches = [
            (rtype, chunk) for rtype, ids in missing.items() for chunk in _chunks(ids, CHUNK)
        ]
        results = parallel(
            [
                partial(client.search, rtype, [("_id", ",".join(chunk)), ("_count", str(CHUNK))])
                for rtype, chunk in searches
            ],
            max_workers=4,
        )
        got_any = False
        for result in results:
            if isinstance(result, Exception):
                log.info("names of references unavailable: %s", type(result).__name__)
                continue
            for resource in _entries(result)[0]:
                key = f"{resource.get('resourceType')}/{resource.get('id')}"
                with _cache_lock:
                    _names[(registration_id, key)] = resource
                found.append(resource)
                got_any = True
        if not got_any:
            break
    return found


def wait_patient(parts: PatientParts, timeout: float = WAIT_SECONDS) -> dict[str, Any] | None:
    """The Patient resource, or None when it could not be read (NeedsAuthorization
    propagates: the session is over)."""
    try:
        return parts.patient.result(timeout=timeout)
    except NeedsAuthorization:
        raise
    except (FutureTimeout, Exception) as exc:  # noqa: BLE001 - shown as "unavailable"
        log.info("context part patient unavailable: %s", type(exc).__name__)
        return None


def known_identity(
    launch: LaunchSession, patient_ref: str, parts: PatientParts
) -> tuple[dict[str, Any], dt.datetime] | None:
    """The patient's identity as this EHR last gave it (a Patient with name, birthDate,
    gender and identifier only) and when it was read; None when not read lately, when
    this launch's own read was refused (401/403/404: not a slow or failing EHR but a
    "no"), or when the patient is not the launch's own and another user read it. The
    caller has checked the launch may see ``patient_ref`` (``start_patient`` does)."""
    if parts.patient.done():
        exc = parts.patient.exception()
        if isinstance(exc, FhirError) and exc.status in (401, 403, 404):
            return None
    with _cache_lock:
        found = _identities.get((launch.registration_id, launch.registration.iss, patient_ref))
    if found is None:
        return None
    resource, read_at, reader = found
    if patient_ref != launch.patient_ref and reader != launch.fhir_user:
        return None
    return resource, read_at


def patient_error(parts: PatientParts) -> str | None:
    """Why the Patient could not be read, in words (None when it was, or still runs)."""
    if not parts.patient.done():
        return None
    exc = parts.patient.exception()
    return _unavailable(exc) if isinstance(exc, Exception) else None


def patient_resource(launch: LaunchSession, patient_ref: str) -> dict[str, Any] | None:
    """The launch's view of a Patient (from the page's reads when fresh, else read now);
    None when the EHR did not give it. Used to check a channel before a task is stored."""
    return wait_patient(start_patient(launch, patient_ref))


def fetch_context(
    launch: LaunchSession,
    *,
    patient_ref: str | None = None,
    use_cache: bool = True,
    parts: PatientParts | None = None,
    store: StoreRows | None = None,
) -> dict[str, Any]:
    """A patient's help-desk context as JSON (see ``fhir_mappers.context``): the launch's
    patient, or ``patient_ref`` when a scheduler opens one from the board. ``store``: the
    patient's rows when the caller read them already (``store_rows``)."""

    patient_ref = patient_ref or launch.patient_ref
    if not patient_ref or not patient_ref.startswith("Patient/"):
        raise NeedsAuthorization("This launch has no patient; open CareDesk from a chart.")
    scope = scope_of(launch)
    scope.check(patient_ref)
    parts = parts or start_patient(launch, patient_ref, use_cache=use_cache)
    key = f"{launch.id}:{patient_ref}"
    # Read before the rows (a write in between renews it: the next request rebuilds).
    ok = parts.done() and not _failed(parts)
    if store is not None:
        stamp = store.stamp if ok else None
    else:
        stamp = stamps.read(_redis(), launch.registration_id, patient_ref) if ok else None
    if stamp is not None:
        with _cache_lock:
            hit = _built.get(key)
        if hit is not None and hit[0] is parts and hit[1] == stamp:
            return dict(hit[2])
    context = _build_context(launch, patient_ref, scope, parts, store)
    if stamp is not None:
        with _cache_lock:
            _built[key] = (parts, stamp, context)
    return dict(context)


def _redis() -> Any:
    found = current_app.extensions.get(KV_EXTENSION)
    return found.connection if found is not None else None


def ticket_rows(launch: LaunchSession, patient_ref: str) -> list[dict[str, Any]]:
    """The patient's open tickets, most urgent first (``MOST_URGENT_FIRST``, as the ticket
    list), as JSON rows (the context's ``tickets``)."""
    scope = scope_of(launch)
    scope.check(patient_ref)
    return _ticket_rows(scope, patient_ref)


def _ticket_rows(scope: Any, patient_ref: str) -> list[dict[str, Any]]:
    return [
        columns(t, "id", "subject", "status", "priority", "category", "due_at")
        for t in get_db().scalars(
            select(Ticket)
            .where(
                *scope.where(Ticket.registration_id, Ticket.patient_ref),
                Ticket.patient_ref == patient_ref,
                Ticket.status.in_(ACTIVE_STATUSES),
            )
            .order_by(*MOST_URGENT_FIRST)
        )
    ]


def _build_context(
    launch: LaunchSession,
    patient_ref: str,
    scope: Any,
    parts: PatientParts,
    store: StoreRows | None = None,
) -> dict[str, Any]:
    from fhir_mappers.context import build_context

    patient = wait_patient(parts)
    unavailable: dict[str, str] = {}
    if patient is None:
        unavailable["patient"] = patient_error(parts) or "the EHR did not answer in time"
    try:
        rest = parts.rest.result(timeout=WAIT_SECONDS)
    except NeedsAuthorization:
        raise
    except (FutureTimeout, Exception) as exc:  # noqa: BLE001 - shown as "unavailable"
        log.info("context parts unavailable: %s", type(exc).__name__)
        rest = {
            "appointments": [],
            "included": [],
            "coverages": None,
            "more_visits": False,
            "unavailable": {
                "visits": _unavailable(exc) if isinstance(exc, Exception) else "",
                "coverage": _unavailable(exc) if isinstance(exc, Exception) else "",
            },
        }
    unavailable.update(rest["unavailable"])
    now = utcnow().astimezone(ZoneInfo(viewer_tz()))
    db = get_db()
    if store is None:
        store = _read_rows(launch, patient_ref, scope, None)
    context = build_context(
        patient=patient,
        appointments=rest["appointments"],
        included=rest["included"],
        coverages=rest["coverages"],
        now=now,
        viewer_tz=viewer_tz(),
        tickets=store.tickets,
        tasks=store.tasks,
        surveys=store.surveys,
        unavailable=unavailable,
    ).to_json()
    context["more_visits_in_ehr"] = rest["more_visits"]
    context["missing_scopes"] = (launch.context or {}).get("missing_scopes") or []
    context["patient_ref"] = patient_ref
    context["survey_invites"] = store.invites
    # Two-way messaging (helpdesk.messaging): the patient's STOPs and reminder answers.
    context["messaging"] = messaging.summary(
        db,
        launch.registration_id,
        patient_ref,
        [
            f"Appointment/{v['appointment_id']}"
            for v in context.get("visits") or []
            if v.get("appointment_id")
        ],
    )
    return context


def task_rows(launch: LaunchSession, patient_ref: str) -> list[dict[str, Any]]:
    """The patient's open tasks and the ones that failed, newest first, as JSON rows (with
    the calls logged on each follow-up)."""
    db = get_db()
    rows = list(
        db.scalars(
            select(CareTask)
            .where(
                *scope_of(launch).where(CareTask.registration_id, CareTask.patient_ref),
                CareTask.patient_ref == patient_ref,
                CareTask.status.notin_(("done", "cancelled")),
            )
            .order_by(CareTask.id.desc())
            .limit(20)
        )
    )
    calls: dict[int, int] = {t.id: 0 for t in rows}
    if rows:
        for task_id in db.scalars(
            select(CallAttempt.task_id).where(CallAttempt.task_id.in_(list(calls)))
        ):
            calls[task_id] += 1
    return [
        {
            **columns(t, "id", "kind", "status", "attempts", "due_at", "last_error", "status_note"),
            "calls": calls[t.id],
            **{key: (t.payload or {}).get(key) for key in ("reason", "channel", "target")},
        }
        for t in rows
    ]


def survey_invites(launch: LaunchSession, patient_ref: str) -> dict[str, dict[str, Any]]:
    """Per appointment reference: the survey invitation's state (or the queued task's,
    before the invitation job has run)."""
    db = get_db()
    out: dict[str, dict[str, Any]] = {}
    queued = db.scalars(
        select(CareTask).where(
            *scope_of(launch).where(CareTask.registration_id, CareTask.patient_ref),
            CareTask.patient_ref == patient_ref,
            CareTask.kind == "survey-invite",
        )
    )
    for task in queued:
        ref = str((task.payload or {}).get("appointment_ref") or "")
        if ref:
            out[ref] = {
                "status": "queued"
                if task.status in ("queued", "scheduled", "running")
                else task.status,
                "send_at": task.due_at.isoformat() if task.due_at else None,
                "note": task.status_note,
            }
    invites = db.scalars(
        select(SurveyInvite).where(
            *scope_of(launch).where(SurveyInvite.registration_id, SurveyInvite.patient_ref),
            SurveyInvite.patient_ref == patient_ref,
        )
    )
    for invite in invites:
        if invite.appointment_ref:
            out[invite.appointment_ref] = columns(
                invite,
                "status",
                "channel",
                "send_at",
                "sent_at",
                "expires_at",
                "answered_at",
                "skip_reason",
            )
    return out


def _surveys(launch: LaunchSession, patient_ref: str) -> list[dict[str, Any]]:
    latest = latest_for_patient(get_db(), scope_of(launch), patient_ref)
    return [latest] if latest else []


def known_name(registration_id: int, reference: str) -> str | None:
    """A practitioner's or place's name this process has read for the EHR, if any."""
    from fhir_mappers.names import resource_name

    with _cache_lock:
        found = _names.get((registration_id, reference))
    return resource_name(found, {}) if found is not None else None


def practitioners_named(launch: LaunchSession, query: str) -> list[dict[str, str]]:
    """Practitioners whose name starts with ``query`` (the referral's picker): one
    `Practitioner?name=` search. Staff names only, no patient data."""
    text = " ".join(query.split())[:100]
    if len(text) < 2:
        return []
    bundle = _client(launch).search("Practitioner", [("name", text), ("_count", "10")])
    out = []
    for resource in _entries(bundle)[0]:
        rid = resource.get("id")
        if resource.get("resourceType") != "Practitioner" or not isinstance(rid, str):
            continue
        with _cache_lock:
            _names[(launch.registration_id, f"Practitioner/{rid}")] = resource
        out.append(
            {
                "ref": f"Practitioner/{rid}",
                "name": human_name(resource.get("name")) or "Name not on file",
            }
        )
    return out


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
