"""The no-JavaScript HTML pages for tickets (under ``/l/<launch_id>/tickets``): the same
operations as the JSON API's ticket routes (``plugin.api``), as forms that POST and
redirect back. Both call the ticket service (``helpdesk.tickets``) and validate with the
same schemas (``plugin.schemas``); a failed form comes back with its messages (422).

Every change answers on the page it lands on ("Ticket #12 resolved."): the redirect
carries a word (``?ok=resolved``), the sentence is read back from the row. Patients are
named (one ``Patient?_id=`` search per 50 tickets) and linked to their CareDesk page;
when the EHR does not answer, the reference stands in for the name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from flask.blueprints import BlueprintSetupState
from marshmallow import ValidationError
from werkzeug.wrappers import Response as BaseResponse

from fhir_mappers.fhirutil import human_name, reference_of
from helpdesk import ehr
from helpdesk import tickets as svc
from helpdesk.access import NoPatient
from helpdesk.db import get_db
from helpdesk.models import LaunchSession, Ticket
from helpdesk.timeutil import utcnow
from plugin.csrf import csrf_token
from plugin.errors import field_messages
from plugin.launched import authenticate, request_launch, sla, viewer_zone
from plugin.navigation import back
from plugin.schemas import NoteCreateSchema, TicketCreateSchema, TicketUpdateSchema
from plugin.timewords import when_words
from smart_launch.errors import SmartError

bp = Blueprint("tickets", __name__)
bp.before_request(authenticate)
log = logging.getLogger("caredesk.tickets")


@bp.record_once
def _template_helpers(state: BlueprintSetupState) -> None:
    state.app.add_template_global(csrf_token, "csrf_token")
    state.app.add_template_global(ticket_overdue, "ticket_overdue")
    state.app.add_template_filter(_when, "when")
    state.app.jinja_env.globals.setdefault("ticket_choices", _CHOICES)
    state.app.jinja_env.globals.setdefault("ticket_words", WORDS)


_CHOICES = {
    "statuses": svc.STATUSES,
    "priorities": svc.PRIORITIES,
    "categories": svc.CATEGORIES,
    "channels": svc.NOTE_CHANNELS,
    "directions": svc.NOTE_DIRECTIONS,
    "transitions": svc.TRANSITIONS,
}


# Every code the ticket pages show, in words (a badge reads "High priority", not "high!").
WORDS: dict[str, dict[str, str]] = {
    "status": {"open": "Open", "pending": "Pending", "resolved": "Resolved", "closed": "Closed"},
    "priority": {
        "low": "Low priority",
        "normal": "Normal priority",
        "high": "High priority",
        "urgent": "Urgent",
    },
    "category": {c: c.replace("-", " ").capitalize() for c in svc.CATEGORIES},
    "channel": {
        "phone": "Phone call",
        "email": "Email",
        "sms": "Text message",
        "chat": "Chat",
        "portal": "Patient portal",
        "in-person": "In person",
        "internal": "Internal note",
    },
    "direction": {"inbound": "from the patient", "outbound": "to the patient", "internal": ""},
}
# How a note was reached decides its defaults: "Log a call" from a call list is a call the
# staff member made; "The patient called" is inbound; a plain "Add a note" is internal.
NOTE_KINDS: dict[str, tuple[str, str, str]] = {
    "call": ("phone", "outbound", "Log a call you made"),
    "called": ("phone", "inbound", "The patient called"),
    "message": ("sms", "outbound", "Log a message you sent"),
    "internal": ("internal", "internal", "Internal note"),
}


def _when(value: datetime | str | None) -> str:
    """The one way a page shows a moment (``plugin.timewords``): the viewer's zone, named,
    "today 3:00 PM CST"; tickets, notes, the conversation and the sidebar read alike."""
    return when_words(value, now=utcnow(), tz=viewer_zone())


NAMED = ("Patient", "Practitioner")


def names_of(launch: LaunchSession, refs: Iterable[str | None]) -> dict[str, str]:
    """Names of the patients and staff the pages mention, `Type/id` -> name, in one
    `_id=` search per type and 50 ids; empty when the EHR does not answer (the page then
    shows the reference)."""
    wanted: dict[str, list[str]] = {}
    keys: dict[str, list[str]] = {}  # `Type/id` -> the references as written (fhirUser
    for ref in sorted({r for r in refs if r}):  # may be an absolute URL)
        parsed = reference_of({"reference": ref})
        if parsed is None or parsed.type not in NAMED or parsed.contained:
            continue
        if parsed.key not in keys:
            wanted.setdefault(parsed.type, []).append(parsed.id)
        keys.setdefault(parsed.key, []).append(ref)
    if not wanted:
        return {}
    names: dict[str, str] = {}
    try:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        client = ehr.fhir_client(app, launch.registration, launch=launch, as_user=True)
        for rtype, ids in wanted.items():
            for i in range(0, len(ids), 50):
                params = [("_id", ",".join(ids[i : i + 50]))]
                for found in client.search_all(rtype, params, max_pages=2):
                    name = human_name(found.get("name"))
                    if found.get("resourceType") == rtype and name:
                        for ref in keys.get(f"{rtype}/{found.get('id')}", ()):
                            names[ref] = name
    except SmartError as exc:
        log.info("names unavailable: %s", type(exc).__name__)
    return names


def confirmation(ticket: Ticket, ok: str) -> str | None:
    """The sentence that confirms what was just done, read back from the row."""
    if ok == "created":
        due = f" · due {_when(ticket.due_at)}" if ticket.due_at else ""
        return f"Ticket #{ticket.id} opened{due}."
    if ok == "saved":
        return f"Ticket #{ticket.id} saved: {WORDS['status'][ticket.status].lower()}, " + (
            f"{WORDS['priority'][ticket.priority].lower()}, "
            f"{'assigned to ' + ticket.assignee if ticket.assignee else 'unassigned'}."
        )
    if ok in ("resolved", "closed", "reopened", "pending"):
        return f"Ticket #{ticket.id} is now {WORDS['status'][ticket.status].lower()}."
    if ok == "note" and ticket.notes:
        note = ticket.notes[-1]
        what = WORDS["channel"].get(note.channel, note.channel)
        way = WORDS["direction"].get(note.direction, "")
        return f"Note added: {what.lower()}{' ' + way if way else ''}."
    return None


def ticket_overdue(ticket: Ticket) -> bool:
    return svc.is_overdue(ticket, utcnow())


def _form(*names: str) -> dict[str, str]:
    """The named form fields that were filled in (blank inputs mean "not given")."""
    return {n: v.strip() for n in names if (v := request.form.get(n, "")).strip()}


def _back(launch_id: str, fallback: str) -> BaseResponse:
    return back(launch_id, request.form.get("next"), fallback)


def _errors_text(exc: ValidationError) -> dict[str, str]:
    messages = field_messages(exc)
    return {
        str(k): " ".join(map(str, v)) if isinstance(v, list) else str(v)
        for k, v in messages.items()
    }


@bp.get("/l/<launch_id>/tickets")
def tickets_page(launch_id: str) -> str:
    launch = request_launch()
    page = svc.list_tickets(
        get_db(),
        launch,
        svc.TicketFilters(status=svc.ACTIVE_STATUSES, patient=launch.patient_ref),
    )
    names = names_of(launch, (t.patient_ref for t in page.items))
    return render_template(
        "tickets/index.html", launch=launch, tickets=page.items, page=page, names=names
    )


@bp.get("/l/<launch_id>/tickets/new")
def new_ticket_page(launch_id: str) -> str:
    return render_template("tickets/new.html", launch=request_launch(), form={}, errors={})


@bp.post("/l/<launch_id>/tickets")
def create_ticket_form(launch_id: str) -> BaseResponse | tuple[str, int]:
    launch = request_launch()
    form = _form("subject", "description", "category", "priority", "assignee", "patient")
    try:
        data = TicketCreateSchema().load(form)
        ticket = svc.create_ticket(get_db(), launch, sla=sla(), **data)
    except ValidationError as exc:
        errors = _errors_text(exc)
        return render_template("tickets/new.html", launch=launch, form=form, errors=errors), 422
    except NoPatient as exc:
        errors = {"patient": exc.message}
        return render_template("tickets/new.html", launch=launch, form=form, errors=errors), 422
    return _back(
        launch_id,
        url_for("tickets.ticket_page", launch_id=launch_id, ticket_id=ticket.id, ok="created"),
    )


@bp.get("/l/<launch_id>/tickets/<rowid:ticket_id>")
def ticket_page(launch_id: str, ticket_id: int) -> str:
    launch = request_launch()
    ticket = svc.get_ticket(get_db(), launch, ticket_id)
    return _detail(launch, ticket, errors={}, ok=confirmation(ticket, request.args.get("ok", "")))


def _detail(
    launch: LaunchSession,
    ticket: Ticket,
    *,
    errors: dict[str, str],
    ok: str | None = None,
    note: dict[str, str] | None = None,
) -> str:
    kind = request.args.get("note", "")
    channel, direction, _ = NOTE_KINDS.get(kind, NOTE_KINDS["internal"])
    return render_template(
        "tickets/detail.html",
        launch=launch,
        ticket=ticket,
        errors=errors,
        ok=ok,
        names=names_of(
            launch,
            [ticket.patient_ref, ticket.created_by, *(n.author for n in ticket.notes)],
        ),
        ok_kind=request.args.get("ok", ""),
        note_kinds=NOTE_KINDS,
        note_kind=kind if kind in NOTE_KINDS else "internal",
        # A form sent back with errors keeps what was typed and chosen.
        note=note or {"channel": channel, "direction": direction, "body": ""},
    )


def _detail_with_errors(
    launch: LaunchSession,
    ticket_id: int,
    errors: dict[str, str],
    status: int,
    note: dict[str, str] | None = None,
) -> tuple[str, int]:
    ticket = svc.get_ticket(get_db(), launch, ticket_id)
    return _detail(launch, ticket, errors=errors, note=note), status


@bp.post("/l/<launch_id>/tickets/<rowid:ticket_id>")
def update_ticket_form(launch_id: str, ticket_id: int) -> BaseResponse | tuple[str, int]:
    launch = request_launch()
    changes: dict[str, Any] = _form("status", "priority", "category")
    if request.form.get("resolve"):
        changes["status"] = "resolved"  # "Save and resolve"
    if "assignee" in request.form:
        changes["assignee"] = request.form["assignee"].strip() or None
    before = get_db().get(Ticket, ticket_id)
    was = before.status if before is not None else None
    try:
        loaded = TicketUpdateSchema().load(changes)
        svc.update_ticket(get_db(), launch, ticket_id, loaded, sla=sla())
    except ValidationError as exc:
        return _detail_with_errors(launch, ticket_id, _errors_text(exc), 422)
    except svc.TransitionError as exc:
        return _detail_with_errors(launch, ticket_id, {"status": exc.message}, 409)
    moved = {"resolved": "resolved", "closed": "closed", "open": "reopened", "pending": "pending"}
    status = loaded.get("status")
    ok = moved[status] if status in moved and status != was else "saved"
    return redirect(
        url_for("tickets.ticket_page", launch_id=launch_id, ticket_id=ticket_id, ok=ok), code=303
    )


@bp.post("/l/<launch_id>/tickets/<rowid:ticket_id>/notes")
def add_note_form(launch_id: str, ticket_id: int) -> BaseResponse | tuple[str, int]:
    launch = request_launch()
    form = _form("body", "channel", "direction")
    try:
        svc.add_note(get_db(), launch, ticket_id, **NoteCreateSchema().load_note(form))
    except ValidationError as exc:
        return _detail_with_errors(launch, ticket_id, _errors_text(exc), 422, note=form)
    except svc.TransitionError as exc:
        return _detail_with_errors(launch, ticket_id, {"body": exc.message}, 409, note=form)
    fallback = url_for("tickets.ticket_page", launch_id=launch_id, ticket_id=ticket_id, ok="note")
    return _back(launch_id, fallback + "#notes")
