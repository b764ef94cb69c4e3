"""Fetching the scheduler board's day: paged FHIR searches (requests per 50 rows, never per
row) and the store's rows, handed to the pure board mapper.

The whole day is read once (appointments with their `_include`d people and places); the
practitioner and location choices come from the references of that day's appointments
(who and where has visits, never the signed-in user), and those filters are applied
here, before patients and coverages are read for the rows that remain. A Coverage search
the EHR refused or failed makes coverage *unknown* for the patients it was about (never
"no coverage on file": ``fhir_mappers.board`` reads ``None`` that way).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from fhir_mappers import flags
from fhir_mappers.appointment import Visit, to_visits
from fhir_mappers.board import board_rows, coverages_by_patient, patient_of, sort_by_flags
from fhir_mappers.contact import reachable
from fhir_mappers.fhirutil import ResourceIndex, resource_id, resource_type
from fhir_mappers.patient import to_contact
from helpdesk import messaging
from helpdesk.access import OtherPatient, scope_of
from helpdesk.db import get_db
from helpdesk.models import CareTask, LaunchSession, Ticket
from helpdesk.timeutil import utcnow
from plugin.context import PAGE, _client, _unavailable, viewer_tz
from smart_launch.fhir import FhirClient, read_ahead

CHUNK = 50  # ids per `_id=` / `patient=` search on the board: requests grow per 50 rows
# Patient and Coverage searches in flight at once, beside the one Appointment page.
SEARCH_WORKERS = 4


@dataclass(frozen=True)
class Choice:
    id: str  # the FHIR id (`loc-denver`), as the filter's URL value
    name: str
    count: int  # the day's appointments there / with them

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "count": self.count}


def _all(client: FhirClient, rtype: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return list(client.search_all(rtype, params))


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _id_of(ref: str | None) -> str | None:
    """`loc-denver` of `Location/loc-denver` (the mappers hand back `Type/id`)."""
    if not ref or "/" not in ref:
        return None
    return ref.rsplit("/", 1)[1] or None


def _choices(values: Sequence[tuple[str | None, str | None]]) -> list[Choice]:
    """Distinct (id, name) pairs of the day with their counts, by name."""
    counts: dict[str, int] = {}
    names: dict[str, str] = {}
    for ref_id, name in values:
        if not ref_id:
            continue
        counts[ref_id] = counts.get(ref_id, 0) + 1
        names.setdefault(ref_id, name or ref_id)
    return sorted((Choice(i, names[i], n) for i, n in counts.items()), key=lambda c: c.name.lower())


def _kept(visit: Visit, *, location: str | None, practitioner: str | None) -> bool:
    """Whether the location and practitioner filters keep this visit's row."""
    return (not location or _id_of(visit.location_ref) == location) and (
        not practitioner or _id_of(visit.practitioner_ref) == practitioner
    )


@dataclass
class _Page:
    """One page of the day's Appointment search: its appointments and their visits, mapped
    with the `_include`s of this page and the ones before it."""

    appointments: list[dict[str, Any]]
    keep: Callable[[Visit], bool]
    visits: list[Visit] = field(default_factory=list)
    missed: frozenset[str] = frozenset()  # included keys the mapping looked for in vain

    def map(self, included: ResourceIndex, *, now: dt.datetime) -> None:
        included.memo.clear()  # an answer remembered for "not included" may be stale now
        included.missed.clear()
        self.visits = to_visits(
            self.appointments, now=now, viewer_tz=viewer_tz(), included=included
        )
        self.missed = frozenset(included.missed)

    def kept(self) -> list[tuple[dict[str, Any], Visit]]:
        return [(a, v) for a, v in zip(self.appointments, self.visits, strict=True) if self.keep(v)]


def _read_day(
    client: FhirClient,
    params: list[tuple[str, str]],
    *,
    now: dt.datetime,
    keep: Callable[[Visit], bool],
    reads: Sequence[_PatientReads | _StoreReads],
) -> list[_Page]:
    """The day's Appointment pages, each mapped while the next one is in flight, and the
    Patient and Coverage searches for the patients of each page's kept rows started as soon
    as that page is mapped, and the store's rows about them read while the next page is in
    flight: after the last page only what that page adds is still to read, not the whole
    day's.

    An EHR names the people and places of a page's visits in that page's `_include`s; one
    that sends them with a later page gets the earlier pages that looked for them mapped
    again, so every visit is mapped with all the day's `_include`s, as if read at the end.
    """
    included = ResourceIndex()
    pages: list[_Page] = []
    with ThreadPoolExecutor(max_workers=1) as pager:
        for resources in read_ahead(
            client.search_pages("Appointment", params, max_pages=100), pager
        ):
            page = _Page([], keep)
            new: set[str] = set()
            for resource in resources:
                rtype, rid = resource_type(resource), resource_id(resource)
                if rtype == "Appointment":
                    page.appointments.append(resource)
                elif rid and (key := f"{rtype}/{rid}") not in included:
                    included[key] = resource
                    new.add(key)
            for earlier in pages:
                if earlier.missed & new:
                    earlier.map(included, now=now)
                    for reader in reads:
                        reader.ask(earlier.kept())
            page.map(included, now=now)
            for reader in reads:
                reader.ask(page.kept())
            pages.append(page)
    return pages


class _PatientReads:
    """The Patient and Coverage searches for the board's patients, `CHUNK` ids a search,
    each patient asked for once; at most `SEARCH_WORKERS` of them in flight at once."""

    def __init__(self, client: FhirClient, pool: Executor) -> None:
        self.client, self.pool = client, pool
        self.asked: set[str] = set()
        self.chunks: list[tuple[Sequence[str], Future[Any], Future[Any]]] = []

    def ask(self, rows: Sequence[tuple[Mapping[str, Any], Visit]]) -> None:
        refs = sorted({ref for a, _ in rows if (ref := patient_of(a))} - self.asked)
        self.asked.update(refs)
        for chunk in _chunks([ref.split("/", 1)[1] for ref in refs], CHUNK):
            patients_param = [("_id", ",".join(chunk))]
            coverage_param = [("patient", ",".join(f"Patient/{i}" for i in chunk))]
            self.chunks.append(
                (
                    chunk,
                    self.pool.submit(_all, self.client, "Patient", patients_param),
                    self.pool.submit(_all, self.client, "Coverage", coverage_param),
                )
            )

    def results(
        self,
    ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], list[str], dict[str, str]]:
        """(patients by `Patient/id`, coverages, patients whose Coverage search failed,
        what could not be read and why), once every search has answered."""
        patients: dict[str, dict[str, Any]] = {}
        coverage_resources: list[dict[str, Any]] = []
        coverage_failed: list[str] = []
        unavailable: dict[str, str] = {}
        for chunk, patient_search, coverage_search in self.chunks:
            try:
                found = patient_search.result()
            except Exception as exc:  # shown as "could not be read", never raised
                unavailable["patients"] = _unavailable(exc)
            else:
                patients.update({f"Patient/{rid}": p for p in found if (rid := resource_id(p))})
            try:
                coverage_resources.extend(coverage_search.result())
            except Exception as exc:  # those patients' coverage is unknown
                unavailable["coverage"] = _unavailable(exc)
                coverage_failed.extend(f"Patient/{i}" for i in chunk)
        return patients, coverage_resources, coverage_failed, unavailable


def fetch_board(
    launch: LaunchSession,
    *,
    day: dt.date,
    location: str | None = None,
    practitioner: str | None = None,
    sort: str = "time",
) -> dict[str, Any]:
    """The day's appointments with flags, from paged searches (requests per 50 rows, not
    per row): the day's appointments with their actors, then patients and coverages by
    id lists for the rows the location/practitioner filters keep.

    The board shows other patients, so it belongs to launches without a patient: a
    launch from a chart is bound to that chart's patient (403, for the page and the API
    alike)."""
    if launch.patient_ref:
        raise OtherPatient(
            "The day board lists other patients, and this CareDesk window belongs to one "
            "patient's chart. Open CareDesk from the EHR's schedule to see the board."
        )
    tz = ZoneInfo(viewer_tz())
    now = utcnow().astimezone(tz)
    start = dt.datetime.combine(day, dt.time.min, tz)
    end = start + dt.timedelta(days=1)
    params: list[tuple[str, str]] = [
        ("date", f"ge{start.isoformat()}"),
        ("date", f"lt{end.isoformat()}"),
        ("_include", "Appointment:actor"),
        ("_count", str(PAGE)),
    ]
    client = _client(launch)
    pool = ThreadPoolExecutor(max_workers=SEARCH_WORKERS)
    try:
        reads = _PatientReads(client, pool)
        store_reads = _StoreReads(launch)
        pages = _read_day(
            client,
            params,
            now=now,
            keep=partial(_kept, location=location, practitioner=practitioner),
            reads=(reads, store_reads),
        )
        patients, coverage_resources, coverage_failed, unavailable = reads.results()
    finally:
        # A page of the day failed (the board is down): searches still queued are not sent.
        pool.shutdown(wait=True, cancel_futures=True)
    day_appointments = [a for page in pages for a in page.appointments]
    # Who and where has visits this day: the references of the day's appointments, named
    # from the `_include`d Practitioner/Location (a real server sends no `display`).
    visits = [v for page in pages for v in page.visits]
    places = _choices([(_id_of(v.location_ref), v.location) for v in visits])
    people = _choices([(_id_of(v.practitioner_ref), v.practitioner) for v in visits])
    refs_of = {
        v.appointment_id: (_id_of(v.location_ref), _id_of(v.practitioner_ref))
        for v in visits
        if v.appointment_id
    }
    kept = [(a, v) for page in pages for a, v in page.kept()]
    appointments = [a for a, _ in kept]
    patient_refs = sorted({ref for a in appointments if (ref := patient_of(a))})
    coverages: dict[str, Sequence[Mapping[str, Any]] | None] | None
    if coverage_failed and set(patient_refs) <= set(coverage_failed):
        coverages = None  # no Coverage search answered: every row is "coverage unknown"
    else:
        coverages = dict(coverages_by_patient(coverage_resources))
        coverages.update(dict.fromkeys(coverage_failed))

    appointment_refs = [f"Appointment/{rid}" for a in appointments if (rid := resource_id(a))]
    store = store_reads.flags(appointment_refs)
    # Per patient, once however many visits they have: the rows' names and the MRN and
    # phone beside them come from the same mapping.
    contacts = {ref: to_contact(resource, now=now) for ref, resource in patients.items()}
    rows = board_rows(
        appointments=appointments,
        included={},  # the visits are mapped (with the day's `_include`s) already
        patients=patients,
        coverages=coverages,
        open_ticket_patients=store["open_ticket"],
        high_priority_ticket_patients=store["high_priority"],
        overdue_call_patients=store["overdue_call"],
        failed_reminder_appointments=store["failed_reminder"],
        now=now,
        viewer_tz=viewer_tz(),
        visits=[v for _, v in kept],  # mapped once above, not again per row
        contacts=contacts,
    )
    if sort == "flags":
        rows = sort_by_flags(rows)
    # What the search and the bulk reminders need beside the mapper's row (MRN, phone, a
    # channel a message may use).
    messageable = {ref: bool(reachable(resource, now=now)) for ref, resource in patients.items()}
    # The patient's answer to a reminder (helpdesk.messaging): "confirmed by text".
    replies = store_reads.replies
    out_rows = []
    for row in rows:
        data = row.to_json()
        where, who = refs_of.get(row.appointment_id or "", (None, None))
        contact = contacts.get(row.patient_ref or "")
        data.update(
            location_id=where,
            practitioner_id=who,
            mrn=contact.mrn if contact else None,
            phone=contact.phones[0].value if contact and contact.phones else None,
            reachable=messageable.get(row.patient_ref or "", False),
            patient_reply=replies.get(f"Appointment/{row.appointment_id}"),
        )
        out_rows.append(data)
    return {
        "date": day.isoformat(),
        "location": location,
        "practitioner": practitioner,
        "sort": sort,
        "rows": out_rows,
        "unavailable": unavailable,
        "locations": [c.to_json() for c in places],
        "practitioners": [c.to_json() for c in people],
        "day_total": len(day_appointments),
    }


class _StoreReads:
    """What the store knows about the board's patients and visits: open tickets (high
    priority apart), overdue calls, failed reminders and the patients' replies to
    reminders. Read a page at a time in the request thread, while the next page is in
    flight: four queries per page of the day (each patient and visit asked about once),
    none per row."""

    def __init__(self, launch: LaunchSession) -> None:
        self.launch = launch
        self.scope = scope_of(launch)
        # One moment for the whole board: a call is overdue or not whichever page it is on.
        self.overdue_before = utcnow() - flags.CALL_GRACE
        self.patients: set[str] = set()
        self.appointments: set[str] = set()
        self.open_ticket: set[str] = set()
        self.high_priority: set[str] = set()
        self.overdue_call: set[str] = set()
        self.failed_reminder: set[str] = set()  # appointments of the asked patients
        self.replies: dict[str, dict[str, Any]] = {}

    def ask(self, rows: Sequence[tuple[Mapping[str, Any], Visit]]) -> None:
        patient_refs = sorted({ref for a, _ in rows if (ref := patient_of(a))} - self.patients)
        appointment_refs = sorted(
            {f"Appointment/{rid}" for a, _ in rows if (rid := resource_id(a))} - self.appointments
        )
        self.patients.update(patient_refs)
        self.appointments.update(appointment_refs)
        db = get_db()
        if patient_refs:
            self._patients(db, patient_refs)
        if appointment_refs:
            # The patient's answer to a reminder (helpdesk.messaging): "confirmed by text".
            self.replies.update(
                messaging.appointment_replies(db, self.launch.registration_id, appointment_refs)
            )

    def _patients(self, db: Any, patient_refs: Sequence[str]) -> None:
        scope = self.scope
        tickets = db.execute(
            select(Ticket.patient_ref, Ticket.priority).where(
                *scope.where(Ticket.registration_id, Ticket.patient_ref),
                Ticket.patient_ref.in_(patient_refs),
                Ticket.status.in_(("open", "pending")),
            )
        ).all()
        self.open_ticket.update(ref for ref, _ in tickets if ref)
        self.high_priority.update(
            ref for ref, priority in tickets if ref and priority in flags.HIGH_PRIORITIES
        )
        self.overdue_call.update(
            ref
            for ref in db.scalars(
                select(CareTask.patient_ref).where(
                    *scope.where(CareTask.registration_id, CareTask.patient_ref),
                    # fhir_mappers.context's reading of an overdue call, for a page at once.
                    CareTask.kind == "follow-up",
                    CareTask.status.notin_(("done", "cancelled", "failed")),
                    CareTask.due_at < self.overdue_before,
                    CareTask.patient_ref.in_(patient_refs),
                )
            )
            if ref
        )
        self.failed_reminder.update(
            str((payload or {}).get("appointment_ref", ""))
            for payload in db.scalars(
                select(CareTask.payload).where(
                    *scope.where(CareTask.registration_id, CareTask.patient_ref),
                    CareTask.kind == "reminder",
                    CareTask.status == "failed",
                    CareTask.patient_ref.in_(patient_refs),
                )
            )
        )

    def flags(self, appointment_refs: Sequence[str]) -> dict[str, frozenset[str]]:
        """The board's flag sets; failed reminders of the visits on the board only."""
        return {
            "open_ticket": frozenset(self.open_ticket),
            "high_priority": frozenset(self.high_priority),
            "overdue_call": frozenset(self.overdue_call),
            "failed_reminder": frozenset(self.failed_reminder & set(appointment_refs)),
        }
