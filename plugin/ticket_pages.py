"""The no-JavaScript HTML pages for tickets (under ``/l/<launch_id>/tickets``): the same
operations as the JSON API's ticket routes (``plugin.api``), as forms that POST and
redirect back. Both call the ticket service (``helpdesk.tickets``) and validate with the
same schemas (``plugin.schemas``); a failed form comes back with its messages (422).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for
from flask.blueprints import BlueprintSetupState
from marshmallow import ValidationError
from werkzeug.wrappers import Response as BaseResponse

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

bp = Blueprint("tickets", __name__)
bp.before_request(authenticate)


@bp.record_once
def _template_helpers(state: BlueprintSetupState) -> None:
    state.app.add_template_global(csrf_token, "csrf_token")
    state.app.add_template_global(ticket_overdue, "ticket_overdue")
    state.app.add_template_filter(local_time, "local_time")
    state.app.jinja_env.globals.setdefault("ticket_choices", _CHOICES)


_CHOICES = {
    "statuses": svc.STATUSES,
    "priorities": svc.PRIORITIES,
    "categories": svc.CATEGORIES,
    "channels": svc.NOTE_CHANNELS,
    "directions": svc.NOTE_DIRECTIONS,
    "transitions": svc.TRANSITIONS,
}


def ticket_overdue(ticket: Ticket) -> bool:
    return svc.is_overdue(ticket, utcnow())


def local_time(value: datetime | None) -> str:
    """A stored (UTC) time as the viewer reads it: "Mar 6, 14:05 CST"."""
    if value is None:
        return ""
    local = value.astimezone(viewer_zone())
    return local.strftime("%b %-d, %H:%M %Z")


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
    return render_template("tickets/index.html", launch=launch, tickets=page.items, page=page)


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
        launch_id, url_for("tickets.ticket_page", launch_id=launch_id, ticket_id=ticket.id)
    )


@bp.get("/l/<launch_id>/tickets/<rowid:ticket_id>")
def ticket_page(launch_id: str, ticket_id: int) -> str:
    launch = request_launch()
    ticket = svc.get_ticket(get_db(), launch, ticket_id)
    return render_template("tickets/detail.html", launch=launch, ticket=ticket, errors={})


def _detail_with_errors(
    launch: LaunchSession, ticket_id: int, errors: dict[str, str], status: int
) -> tuple[str, int]:
    ticket = svc.get_ticket(get_db(), launch, ticket_id)
    html = render_template("tickets/detail.html", launch=launch, ticket=ticket, errors=errors)
    return html, status


@bp.post("/l/<launch_id>/tickets/<rowid:ticket_id>")
def update_ticket_form(launch_id: str, ticket_id: int) -> BaseResponse | tuple[str, int]:
    launch = request_launch()
    changes: dict[str, Any] = _form("status", "priority", "category")
    if "assignee" in request.form:
        changes["assignee"] = request.form["assignee"].strip() or None
    try:
        loaded = TicketUpdateSchema().load(changes)
        svc.update_ticket(get_db(), launch, ticket_id, loaded, sla=sla())
    except ValidationError as exc:
        return _detail_with_errors(launch, ticket_id, _errors_text(exc), 422)
    except svc.TransitionError as exc:
        return _detail_with_errors(launch, ticket_id, {"status": exc.message}, 409)
    return redirect(
        url_for("tickets.ticket_page", launch_id=launch_id, ticket_id=ticket_id), code=303
    )


@bp.post("/l/<launch_id>/tickets/<rowid:ticket_id>/notes")
def add_note_form(launch_id: str, ticket_id: int) -> BaseResponse | tuple[str, int]:
    launch = request_launch()
    form = _form("body", "channel", "direction")
    try:
        svc.add_note(get_db(), launch, ticket_id, **NoteCreateSchema().load_note(form))
    except ValidationError as exc:
        return _detail_with_errors(launch, ticket_id, _errors_text(exc), 422)
    except svc.TransitionError as exc:
        return _detail_with_errors(launch, ticket_id, {"body": exc.message}, 409)
    fallback = url_for("tickets.ticket_page", launch_id=launch_id, ticket_id=ticket_id)
    return _back(launch_id, fallback + "#notes")
