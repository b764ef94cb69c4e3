"""The sidebar's JSON API (under ``/api/``). The same ticket operations as HTML forms
are ``plugin.ticket_pages``.

Every route names its launch in the path; ``plugin.launched.authenticate`` checks it (and
the CSRF token of a state-changing request) before any view runs.

Each JSON view carries its OpenAPI description (``@doc``); ``plugin.openapi`` walks the
URL map and builds ``/api/openapi.json`` from those and ``plugin.schemas``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from marshmallow import Schema, ValidationError

from helpdesk import tasks as task_svc
from helpdesk import tickets as svc
from helpdesk.audit import audit
from helpdesk.db import get_db
from helpdesk.errors import AppError
from helpdesk.logctx import current_request_id
from helpdesk.models import Ticket
from helpdesk.timeutil import utcnow
from jobs import outbox
from plugin import board_data
from plugin import context as ctx
from plugin.errors import field_messages
from plugin.launched import authenticate, request_launch, sla, viewer_zone
from plugin.schemas import (
    BoardQuerySchema,
    BoardSchema,
    ContextQuerySchema,
    ContextSchema,
    NoteCreateSchema,
    NoteSchema,
    TaskListQuerySchema,
    TaskListSchema,
    TaskSchema,
    TicketCreateSchema,
    TicketDetailSchema,
    TicketListQuerySchema,
    TicketPageSchema,
    TicketSchema,
    TicketUpdateSchema,
    load_task_create,
)

log = logging.getLogger("caredesk.api")

bp = Blueprint("api", __name__, url_prefix="/api")

F = TypeVar("F", bound=Callable[..., Any])


# --- OpenAPI metadata on views -------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    summary: str
    responses: Mapping[int, type[Schema] | str | None]
    description: str = ""
    tags: tuple[str, ...] = ()
    query: type[Schema] | None = None
    body: type[Schema] | str | None = None
    errors: tuple[int, ...] = field(default=())
    public: bool = False


def doc(**kwargs: Any) -> Callable[[F], F]:
    """Attach an OpenAPI description to a view (read by ``plugin.openapi``)."""

    def decorate(view: F) -> F:
        view.__openapi__ = Doc(**kwargs)  # type: ignore[attr-defined]
        return view

    return decorate


# --- authentication, CSRF and errors, for every route with a launch -----------------------

bp.before_request(authenticate)


@bp.errorhandler(ValidationError)
def _validation_failed(exc: ValidationError) -> tuple[Response, int]:
    # The one error shape (plugin.errors) plus the messages per field.
    messages = field_messages(exc)
    body = {
        "error": {
            "code": "validation_failed",
            "message": "Some fields are missing or invalid.",
            "request_id": current_request_id(),
            "fields": messages,
        }
    }
    return jsonify(body), 422


def _json_body() -> Any:
    if not request.is_json:
        raise AppError(
            "Send a JSON body (Content-Type: application/json).",
            status=415,
            code="unsupported_media_type",
        )
    data = request.get_json(silent=True)
    if data is None:
        raise AppError("The body is not valid JSON.", code="invalid_json")
    return data


# --- serialization -------------------------------------------------------------------------


def ticket_json(ticket: Ticket, *, now: datetime, detail: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": ticket.id,
        "patient_ref": ticket.patient_ref,
        "subject": ticket.subject,
        "description": ticket.description,
        "status": ticket.status,
        "priority": ticket.priority,
        "category": ticket.category,
        "assignee": ticket.assignee,
        "due_at": ticket.due_at,
        "overdue": svc.is_overdue(ticket, now),
        "allowed_transitions": list(svc.allowed_transitions(ticket.status)),
        "created_by": ticket.created_by,
        "source": ticket.source,
        "created_at": ticket.created_at,
        "updated_at": ticket.updated_at,
    }
    if detail:
        data["notes"] = ticket.notes
        out: dict[str, Any] = TicketDetailSchema().dump(data)
        return out
    dumped: dict[str, Any] = TicketSchema().dump(data)
    return dumped


# --- tickets -------------------------------------------------------------------------------

_TICKET_ERRORS = (401, 403, 404)


@bp.get("/l/<launch_id>/tickets")
@doc(
    summary="List tickets of this EHR",
    description="Filters combine; most urgent (soonest due) first. Writes an audit event "
    "per patient shown.",
    tags=("tickets",),
    query=TicketListQuerySchema,
    responses={200: TicketPageSchema},
    errors=(401, 422),
)
def list_tickets(launch_id: str) -> Response:
    query = TicketListQuerySchema().load(request.args.to_dict())
    page = svc.list_tickets(
        get_db(),
        request_launch(),
        svc.TicketFilters(
            status=query.get("status", ()),
            patient=query.get("patient"),
            category=query.get("category"),
            assignee=query.get("assignee"),
            page=query["page"],
            per_page=query["per_page"],
        ),
    )
    now = utcnow()
    return jsonify(
        {
            "items": [ticket_json(t, now=now) for t in page.items],
            "total": page.total,
            "page": page.page,
            "per_page": page.per_page,
        }
    )


@bp.post("/l/<launch_id>/tickets")
@doc(
    summary="Open a ticket",
    description="The ticket is due after its category's SLA. A launch with patient "
    "context opens tickets for that patient only.",
    tags=("tickets",),
    body=TicketCreateSchema,
    responses={201: TicketDetailSchema},
    errors=(401, 403, 415, 422),
)
def create_ticket(launch_id: str) -> tuple[Response, int, dict[str, str]]:
    data = TicketCreateSchema().load(_json_body())
    ticket = svc.create_ticket(get_db(), request_launch(), sla=sla(), **data)
    location = url_for("api.get_ticket", launch_id=launch_id, ticket_id=ticket.id)
    return jsonify(ticket_json(ticket, now=utcnow(), detail=True)), 201, {"Location": location}


@bp.get("/l/<launch_id>/tickets/<int:ticket_id>")
@doc(
    summary="Read a ticket with its notes",
    tags=("tickets",),
    responses={200: TicketDetailSchema},
    errors=(401, 404),
)
def get_ticket(launch_id: str, ticket_id: int) -> Response:
    ticket = svc.get_ticket(get_db(), request_launch(), ticket_id)
    return jsonify(ticket_json(ticket, now=utcnow(), detail=True))


@bp.patch("/l/<launch_id>/tickets/<int:ticket_id>")
@doc(
    summary="Change a ticket",
    description="Status changes follow the allowed transitions (see `allowed_transitions` "
    "on the ticket); a disallowed one is 409. A category change moves the due time to the "
    "new category's SLA unless `due_at` is given.",
    tags=("tickets",),
    body=TicketUpdateSchema,
    responses={200: TicketDetailSchema},
    errors=(401, 403, 404, 409, 415, 422),
)
def update_ticket(launch_id: str, ticket_id: int) -> Response:
    changes = TicketUpdateSchema().load(_json_body())
    ticket = svc.update_ticket(get_db(), request_launch(), ticket_id, changes, sla=sla())
    return jsonify(ticket_json(ticket, now=utcnow(), detail=True))


@bp.post("/l/<launch_id>/tickets/<int:ticket_id>/notes")
@doc(
    summary="Add a note (a call, message or internal remark) to a ticket",
    description="A non-internal channel needs a direction (inbound or outbound). A closed "
    "ticket takes no notes (409).",
    tags=("tickets",),
    body=NoteCreateSchema,
    responses={201: NoteSchema},
    errors=(401, 403, 404, 409, 415, 422),
)
def add_note(launch_id: str, ticket_id: int) -> tuple[Response, int]:
    data = NoteCreateSchema().load_note(_json_body())
    note = svc.add_note(get_db(), request_launch(), ticket_id, **data)
    return jsonify(NoteSchema().dump(note)), 201


# --- tasks ---------------------------------------------------------------------------------


@bp.get("/l/<launch_id>/tasks")
@doc(
    summary="Follow-up and referral tasks of this launch's patient",
    description="Newest first, with their job state (status, attempts, last_error).",
    tags=("tasks",),
    query=TaskListQuerySchema,
    responses={200: TaskListSchema},
    errors=(401, 422),
)
def list_tasks(launch_id: str) -> Response:
    query = TaskListQuerySchema().load(request.args.to_dict())
    tasks = task_svc.list_tasks(get_db(), request_launch(), **query)
    return jsonify({"items": TaskSchema(many=True).dump(tasks)})


@bp.post("/l/<launch_id>/tasks")
@doc(
    summary="Queue a follow-up or a referral",
    description="The task row is stored first, then its job is queued; the answer is the "
    "row with its state. A follow-up's `due` phrase is read in the viewer's time zone.",
    tags=("tasks",),
    body="TaskCreate",
    responses={201: TaskSchema},
    errors=(401, 403, 415, 422),
)
def create_task(launch_id: str) -> tuple[Response, int]:
    db = get_db()
    data = load_task_create(_json_body())
    task = task_svc.queue_task(db, request_launch(), data, tz=viewer_zone())
    # The row is committed; its job comes second (the sweeper covers a failed enqueue).
    outbox.dispatch([task.id])
    db.refresh(task)
    return jsonify(TaskSchema().dump(task)), 201


# --- context and board (built by plugin.context and plugin.board_data) ----------------


@bp.get("/l/<launch_id>/context")
@doc(
    summary="The launched patient's help-desk context",
    description="Contact, visits, insurance, open tickets and tasks, read live from the "
    "EHR. Parts that could not be fetched are listed in `unavailable`.",
    tags=("context",),
    query=ContextQuerySchema,
    responses={200: ContextSchema},
    errors=(401, 409, 422, 502),
)
def context(launch_id: str) -> Response:
    refresh = ContextQuerySchema().load(request.args.to_dict())["refresh"]
    launch = request_launch()
    if not launch.patient_ref:
        raise AppError(
            "This launch has no patient; open CareDesk from a chart.",
            status=409,
            code="no_patient",
        )
    fetch = ctx.fetch_context
    data = fetch(launch, use_cache=False) if refresh else fetch(launch)
    audit("context.read", launch=launch, entity=launch.patient_ref)
    return jsonify(data)


@bp.get("/l/<launch_id>/board")
@doc(
    summary="The day board: appointments with flags",
    tags=("board",),
    query=BoardQuerySchema,
    responses={200: BoardSchema},
    errors=(401, 422, 502),
)
def board(launch_id: str) -> Response:
    query = BoardQuerySchema().load(request.args.to_dict())
    launch = request_launch()
    day: date = query.get("date") or utcnow().astimezone(viewer_zone()).date()
    kwargs: dict[str, Any] = {
        "day": day,
        "location": query.get("location"),
        "practitioner": query.get("practitioner"),
    }
    if "sort" in query:
        kwargs["sort"] = query["sort"]
    data = board_data.fetch_board(launch, **kwargs)
    refs = sorted({str(r["patient_ref"]) for r in data.get("rows") or () if r.get("patient_ref")})
    detail = {"date": day.isoformat()}
    if not refs:
        audit("board.read", launch=launch, patient_ref=None, entity="Appointment", detail=detail)
    for ref in refs:
        audit("board.read", launch=launch, patient_ref=ref, entity="Appointment", detail=detail)
    return jsonify(data)


# --- the OpenAPI document ------------------------------------------------------------------


@bp.get("/openapi.json")
@doc(
    summary="This document",
    tags=("meta",),
    responses={200: "OpenApiDocument"},
    public=True,
)
def openapi_json() -> Response:
    from plugin.openapi import spec_for

    return jsonify(spec_for(current_app))
