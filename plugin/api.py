"""The sidebar's JSON API (under ``/api/``). The same ticket operations as HTML forms
are ``plugin.ticket_pages``.

Every route names its launch in the path; ``plugin.launched.authenticate`` checks it (and
the CSRF token of a state-changing request) before any view runs.

The views are flask-smorest's: ``arguments`` loads the query or JSON body with a
``plugin.schemas`` class before the view runs (a failure is the one 422 shape of
``plugin.errors``), ``response`` dumps the answer with one, ``alt_response`` lists the
errors an operation can answer; ``plugin.openapi`` builds ``/api/openapi.json`` from
these same declarations.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any, NoReturn, TypeVar

import flask
from flask import Response, jsonify, url_for
from flask_smorest import Blueprint, current_api
from marshmallow import Schema, ValidationError
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from helpdesk import tasks as task_svc
from helpdesk import tickets as svc
from helpdesk.access import patient_for
from helpdesk.audit import audit, audit_many
from helpdesk.db import get_db
from helpdesk.errors import AppError
from helpdesk.models import CareTask, Ticket
from helpdesk.timeutil import utcnow
from jobs import outbox
from plugin import board_data
from plugin import context as ctx
from plugin.launched import authenticate, request_launch, sla, viewer_zone
from plugin.schemas import (
    BoardQuerySchema,
    BoardSchema,
    ContextQuerySchema,
    ContextSchema,
    ErrorSchema,
    NoteCreateSchema,
    NoteSchema,
    TaskCreateSchema,
    TaskListQuerySchema,
    TaskListSchema,
    TaskSchema,
    TicketCreateSchema,
    TicketDetailSchema,
    TicketListQuerySchema,
    TicketPageSchema,
    TicketUpdateSchema,
)

log = logging.getLogger("caredesk.api")

F = TypeVar("F", bound=Callable[..., Any])


class _Parser(FlaskParser):
    """webargs' Flask parser, answering in CareDesk's error shape.

    A body must be JSON (415 otherwise) that parses (400 ``invalid_json``); the schema's
    own ``unknown`` setting holds in every location (webargs would drop unknown query
    parameters silently); a validation failure reaches ``plugin.errors`` as the
    ``ValidationError`` it is (422 with the messages per field).
    """

    DEFAULT_UNKNOWN_BY_LOCATION: dict[str, str | None] = {}

    def load_json(self, req: flask.Request, schema: Schema) -> Any:
        if not is_json_request(req):
            raise AppError(
                "Send a JSON body (Content-Type: application/json).",
                status=415,
                code="unsupported_media_type",
            )
        try:
            return core.parse_json(req.get_data(cache=True))
        # RecursionError: "[[[[..." nested deeper than the parser's stack.
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise AppError("The body is not valid JSON.", code="invalid_json") from exc

    def handle_error(
        self,
        error: ValidationError,
        req: flask.Request,
        schema: Schema,
        *,
        error_status_code: int | None,
        error_headers: Any,
    ) -> NoReturn:
        # webargs namespaces the messages under the location ({"json": {...}}); the API's
        # 422 has always named the fields themselves.
        namespaced: Any = error.messages
        messages: Any = next(iter(namespaced.values())) if namespaced else namespaced
        raise ValidationError(messages, error.field_name) from error


class _ApiBlueprint(Blueprint):  # type: ignore[misc]
    ARGUMENTS_PARSER = _Parser()


bp = _ApiBlueprint("api", __name__, url_prefix="/api", description="The sidebar's JSON API.")
bp.before_request(authenticate)

# Writes need the launch's CSRF token as well as its cookie (reads: the document's default).
_WRITE: list[dict[str, list[str]]] = [{"browserCookie": [], "csrfToken": []}]

ERROR_TEXT = {
    400: "The body is not valid JSON (`invalid_json`).",
    401: "No active launch for this browser (launch again from the EHR).",
    403: "Missing or wrong CSRF token (`X-CSRF-Token`), or a patient this launch may not see.",
    404: "No such item for this launch.",
    409: "Not possible in the item's current state.",
    415: "The body is not JSON (`Content-Type: application/json`).",
    422: "Invalid input; `error.fields` has the messages per field.",
    502: "The EHR failed or answered unexpectedly.",
}


def errors(*statuses: int) -> Callable[[F], F]:
    """Document the errors a view answers, each in the one error shape."""

    def decorate(view: F) -> F:
        for status in statuses:
            view = bp.alt_response(status, schema=ErrorSchema, description=ERROR_TEXT[status])(view)
        return view

    return decorate


# --- serialization -------------------------------------------------------------------------


def ticket_data(ticket: Ticket, *, now: datetime, detail: bool = False) -> dict[str, Any]:
    """A ticket with what the API derives from it, for ``TicketSchema`` to dump."""
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
    return data


# --- tickets -------------------------------------------------------------------------------


@bp.get("/l/<launch_id>/tickets", tags=["tickets"])
@bp.arguments(TicketListQuerySchema, location="query")
@bp.response(200, TicketPageSchema)
@errors(401, 403, 422)
def list_tickets(query: dict[str, Any], launch_id: str) -> dict[str, Any]:
    """List tickets of this EHR

    Filters combine; most urgent (soonest due) first. Writes an audit event per patient
    shown.
    """
    page = svc.list_tickets(
        get_db(),
        request_launch(),
        svc.TicketFilters(
            status=tuple(query.get("status", ())),
            patient=query.get("patient"),
            category=query.get("category"),
            assignee=query.get("assignee"),
            page=query["page"],
            per_page=query["per_page"],
        ),
    )
    now = utcnow()
    return {
        "items": [ticket_data(t, now=now) for t in page.items],
        "total": page.total,
        "page": page.page,
        "per_page": page.per_page,
    }


def _ticket_links() -> dict[str, Any]:
    """OpenAPI links from a ticket in an answer to what can be done with it next (clients
    and schemathesis' stateful phase follow them)."""
    path = "#/paths/~1api~1l~1{launch_id}~1tickets~1{ticket_id}"
    params = {"launch_id": "$request.path.launch_id", "ticket_id": "$response.body#/id"}
    return {
        "ReadTicket": {"operationRef": f"{path}/get", "parameters": params},
        "ChangeTicket": {"operationRef": f"{path}/patch", "parameters": params},
        "AddNote": {"operationRef": f"{path}~1notes/post", "parameters": params},
    }


@bp.post("/l/<launch_id>/tickets", tags=["tickets"])
@bp.doc(security=_WRITE, responses={201: {"links": _ticket_links()}})
@bp.arguments(TicketCreateSchema)
@bp.response(
    201,
    TicketDetailSchema,
    headers={"Location": {"description": "The ticket's URL.", "schema": {"type": "string"}}},
)
@errors(400, 401, 403, 415, 422)
def create_ticket(data: dict[str, Any], launch_id: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Open a ticket

    The ticket is due after its category's SLA. A launch with patient context opens
    tickets for that patient only.
    """
    ticket = svc.create_ticket(get_db(), request_launch(), sla=sla(), **data)
    location = url_for("api.get_ticket", launch_id=launch_id, ticket_id=ticket.id)
    return ticket_data(ticket, now=utcnow(), detail=True), {"Location": location}


@bp.get("/l/<launch_id>/tickets/<rowid:ticket_id>", tags=["tickets"])
@bp.response(200, TicketDetailSchema)
@errors(401, 404)
def get_ticket(launch_id: str, ticket_id: int) -> dict[str, Any]:
    """Read a ticket with its notes"""
    ticket = svc.get_ticket(get_db(), request_launch(), ticket_id)
    return ticket_data(ticket, now=utcnow(), detail=True)


@bp.patch("/l/<launch_id>/tickets/<rowid:ticket_id>", tags=["tickets"])
@bp.doc(security=_WRITE, responses={200: {"links": _ticket_links()}})
@bp.arguments(TicketUpdateSchema)
@bp.response(200, TicketDetailSchema)
@errors(400, 401, 403, 404, 409, 415, 422)
def update_ticket(changes: dict[str, Any], launch_id: str, ticket_id: int) -> dict[str, Any]:
    """Change a ticket

    Status changes follow the allowed transitions (see `allowed_transitions` on the
    ticket); a disallowed one is 409. A category change moves the due time to the new
    category's SLA unless `due_at` is given.
    """
    ticket = svc.update_ticket(get_db(), request_launch(), ticket_id, changes, sla=sla())
    return ticket_data(ticket, now=utcnow(), detail=True)


@bp.post("/l/<launch_id>/tickets/<rowid:ticket_id>/notes", tags=["tickets"])
@bp.doc(security=_WRITE)
@bp.arguments(NoteCreateSchema)
@bp.response(201, NoteSchema)
@errors(400, 401, 403, 404, 409, 415, 422)
def add_note(data: dict[str, Any], launch_id: str, ticket_id: int) -> Any:
    """Add a note (a call, message or internal remark) to a ticket

    A non-internal channel needs a direction (inbound or outbound). A closed ticket takes
    no notes (409).
    """
    data.setdefault("direction", "internal")
    return svc.add_note(get_db(), request_launch(), ticket_id, **data)


# --- tasks ---------------------------------------------------------------------------------


@bp.get("/l/<launch_id>/tasks", tags=["tasks"])
@bp.arguments(TaskListQuerySchema, location="query")
@bp.response(200, TaskListSchema)
@errors(401, 403, 422)
def list_tasks(query: dict[str, Any], launch_id: str) -> dict[str, Any]:
    """Follow-up and referral tasks of this launch's patient

    Newest first, with their job state (status, attempts, last_error).
    """
    return {"items": task_svc.list_tasks(get_db(), request_launch(), **query)}


@bp.post("/l/<launch_id>/tasks", tags=["tasks"])
@bp.doc(security=_WRITE)
@bp.arguments(TaskCreateSchema)
@bp.response(201, TaskSchema)
@errors(400, 401, 403, 415, 422)
def create_task(data: dict[str, Any], launch_id: str) -> CareTask:
    """Queue a follow-up or a referral

    The task row is stored first, then its job is queued; the answer is the row with its
    state. A follow-up's `due` phrase is read in the viewer's time zone.
    """
    db = get_db()
    launch = request_launch()
    patient_resource = None
    if data.get("kind") == "follow-up":
        # The channel must be one the patient can receive (helpdesk.tasks' rule); the
        # Patient comes from the sidebar's reads when fresh. The lock is checked first,
        # so no other patient's record is ever read here.
        patient = patient_for(launch, data.get("patient"))
        patient_resource = ctx.patient_resource(launch, patient)
    task = task_svc.queue_task(
        db, launch, data, tz=viewer_zone(), patient_resource=patient_resource
    )
    # The row is committed; its job comes second (the sweeper covers a failed enqueue).
    outbox.dispatch([task.id])
    db.refresh(task)
    return task


# --- context and board (built by plugin.context and plugin.board_data; passed through) --


@bp.get("/l/<launch_id>/context", tags=["context"])
@bp.arguments(ContextQuerySchema, location="query")
@bp.response(200, ContextSchema)
@errors(401, 409, 422, 502)
def context(query: dict[str, Any], launch_id: str) -> Response:
    """The launched patient's help-desk context

    Contact, visits, insurance, open tickets and tasks, read live from the EHR. Parts
    that could not be fetched are listed in `unavailable`.
    """
    launch = request_launch()
    if not launch.patient_ref:
        raise AppError(
            "This launch has no patient; open CareDesk from a chart.",
            status=409,
            code="no_patient",
        )
    fetch = ctx.fetch_context
    data = fetch(launch, use_cache=False) if query["refresh"] else fetch(launch)
    audit("context.read", launch=launch, entity=launch.patient_ref)
    return jsonify(data)


@bp.get("/l/<launch_id>/board", tags=["board"])
@bp.arguments(BoardQuerySchema, location="query")
@bp.response(200, BoardSchema)
@errors(401, 422, 502)
def board(query: dict[str, Any], launch_id: str) -> Response:
    """The day board: appointments with flags"""
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
    refs: Sequence[str | None] = sorted(
        {str(r["patient_ref"]) for r in data.get("rows") or () if r.get("patient_ref")}
    )
    detail = {"date": day.isoformat()}
    audit_many(
        "board.read",
        [
            {"launch": launch, "patient_ref": ref, "entity": "Appointment", "detail": detail}
            for ref in refs or [None]  # a day without patients is a read too
        ],
    )
    return jsonify(data)


# --- the OpenAPI document ------------------------------------------------------------------


@bp.get("/openapi.json", tags=["meta"])
@bp.doc(
    security=[],
    responses={
        "200": {
            "description": "An OpenAPI 3 document.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
def openapi_json() -> Response:
    """This document"""
    document: dict[str, Any] = current_api.spec.to_dict()
    return jsonify(document)
