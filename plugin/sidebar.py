"""The clinician's sidebar: one patient's page and its actions, inside the EHR.

The page is sent at once with what CareDesk knows without the EHR (open requests, the
actions) and the EHR's sections fill as their reads arrive (``plugin.context``); with
JavaScript off, a section still loading offers a link that waits for it. Every action
answers in place: a confirmation at the top on success, or the same page with the form,
its input and a message at the field on failure; never an error page instead of the
sidebar. A launch with a patient is locked to that patient: nothing here shows or acts
on another one.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Blueprint, current_app, make_response, redirect, render_template, request, url_for
from marshmallow import ValidationError
from werkzeug.wrappers import Response as BaseResponse

from fhir_mappers.fhirutil import parse_datetime
from helpdesk import duephrase, ehr, messaging
from helpdesk import tasks as task_svc
from helpdesk.access import NoPatient, OtherPatient, scope_of
from helpdesk.audit import audit
from helpdesk.db import get_db
from helpdesk.errors import AppError
from helpdesk.models import CareTask, LaunchSession, SurveyInvite, Ticket
from helpdesk.tickets import TicketFilters, create_ticket, sla_hours
from helpdesk.timeutil import utcnow
from plugin import context as ctx
from plugin.csrf import check_csrf
from plugin.forms import due_fields, form_values, resolve_due
from plugin.launch import current_launch
from plugin.launched import viewer_zone
from plugin.navigation import back
from plugin.tasktext import is_lasting, task_sentence
from plugin.timewords import date_words, when_words
from smart_launch.errors import NeedsAuthorization

bp = Blueprint("sidebar", __name__)
log = logging.getLogger("caredesk.sidebar")

_PATIENT_REF = re.compile(r"^Patient/[A-Za-z0-9\-.]{1,64}$")
_APPOINTMENT_REF = re.compile(r"^Appointment/[A-Za-z0-9\-.]{1,256}$")
# How long the page waits for the EHR before it is sent with loading sections instead.
FIRST_PAINT_SECONDS = 0.1
ACTIONS = ("ticket", "followup", "referral", "survey")


class Form:
    """An action's form as the user left it: which one, what they typed, what is wrong."""

    def __init__(
        self,
        action: str,
        values: dict[str, str] | None = None,
        errors: dict[str, str] | None = None,
    ) -> None:
        self.action = action
        self.values = values or {}
        self.errors = errors or {}

    def get(self, name: str, default: str = "") -> str:
        return self.values.get(name, default)


def _check_patient(launch: LaunchSession, patient_ref: str) -> None:
    """The lock (``helpdesk.access``): a launch with a patient works on that patient only,
    one without works within its EHR grant (403 otherwise); a refusal is audited."""
    try:
        scope_of(launch).check(patient_ref)
    except OtherPatient:
        audit(
            "read",
            launch=launch,
            patient_ref=launch.patient_ref,
            entity=patient_ref,
            outcome="denied",
            detail={"view": "sidebar", "reason": "other patient"},
        )
        raise


@bp.get("/l/<launch_id>/")
def home(launch_id: str) -> BaseResponse | tuple[str, int]:
    launch = current_launch(launch_id)
    if not launch.patient_ref:
        return redirect(url_for("board.board", launch_id=launch.id))
    return _page(launch, launch.patient_ref)


@bp.get("/l/<launch_id>/patient/<path:patient_ref>")
def patient(launch_id: str, patient_ref: str) -> BaseResponse | tuple[str, int]:
    """A patient opened from the board (a launch without patient context only)."""
    launch = current_launch(launch_id)
    if not _PATIENT_REF.match(patient_ref):
        raise AppError("That is not a patient reference.", status=404, code="not_found")
    _check_patient(launch, patient_ref)
    return _page(launch, patient_ref)


def _patient_of_request(launch: LaunchSession) -> str:
    """The patient a form or fragment is about: the launch's, or (board launches) the one
    the page named."""
    named = (request.values.get("patient") or "").strip()
    if launch.patient_ref:
        _check_patient(launch, named or launch.patient_ref)
        return launch.patient_ref
    if not _PATIENT_REF.match(named):
        raise NoPatient("Open a patient from the board first.")
    _check_patient(launch, named)
    return named


def _page_url(launch: LaunchSession, patient_ref: str, **args: Any) -> str:
    if patient_ref == launch.patient_ref:
        return url_for("sidebar.home", launch_id=launch.id, **args)
    return url_for("sidebar.patient", launch_id=launch.id, patient_ref=patient_ref, **args)


def _ended(launch: LaunchSession, exc: NeedsAuthorization) -> tuple[str, int]:
    """The EHR no longer honours this launch's grant (revoked, expired): one page that
    says what to do, and the launch is marked ended so no later load asks the EHR again."""
    log.info("launch ended by the EHR: %s", type(exc).__name__)
    launch.status = "ended"
    get_db().commit()
    audit("launch.ended", launch=launch, entity=f"LaunchSession/{launch.id}")
    return render_template("sidebar/ended.html"), 401


def _page(
    launch: LaunchSession,
    patient_ref: str,
    *,
    form: Form | None = None,
    status: int = 200,
) -> BaseResponse | tuple[str, int]:
    started, cpu_started = time.perf_counter(), time.thread_time()
    refresh = request.args.get("refresh") == "1"
    try:
        parts = ctx.start_patient(launch, patient_ref, use_cache=not refresh)
        wait = request.args.get("wait") == "1" or form is not None
        deadline = ctx.WAIT_SECONDS if wait else FIRST_PAINT_SECONDS
        # The store's rows are read while the EHR answers, so once it has answered only
        # the mapping is left (a page whose reads are done reads them in fetch_context,
        # where a cached context needs none).
        early = None if parts.done() else _Early.read(launch, patient_ref)
        waited = time.perf_counter()
        ready = _wait(parts, deadline)
        waited = time.perf_counter() - waited
        c = (
            ctx.fetch_context(
                launch,
                patient_ref=patient_ref,
                parts=parts,
                store=early.store if early is not None else None,
            )
            if ready
            else None
        )
        identity_ready = parts.patient.done()
        patient_res = ctx.wait_patient(parts, 0) if identity_ready else None
    except NeedsAuthorization as exc:
        return _ended(launch, exc)
    model = _model(
        launch, patient_ref, c=c, parts=parts, patient_res=patient_res, form=form, early=early
    )
    _audit_view(launch, patient_ref, model["tickets"])
    html = render_template("sidebar.html", **model)
    response = make_response(html, status)
    # What the page cost before its first byte, as the server measured it: time spent
    # waiting for the EHR, this thread's CPU, and the whole (which a busy machine also
    # inflates with time spent waiting for a CPU). Tests read these, not a browser's clock.
    ehr_ms = waited * 1000
    cpu_ms = (time.thread_time() - cpu_started) * 1000
    total_ms = (time.perf_counter() - started) * 1000
    response.headers["Server-Timing"] = (
        f"ehr;dur={ehr_ms:.1f}, cpu;dur={cpu_ms:.1f}, total;dur={total_ms:.1f}"
    )
    return response


@dataclass(frozen=True, kw_only=True)
class _Early:
    """What the page shows from the store, read while it waits for the EHR: the
    context's rows (``ctx.store_rows``: the open tickets among them) and the channels a
    STOP closed."""

    store: ctx.StoreRows
    stopped: dict[str, str]

    @classmethod
    def read(cls, launch: LaunchSession, patient_ref: str) -> _Early:
        return cls(
            store=ctx.store_rows(launch, patient_ref),
            stopped=messaging.stopped_channels(
                get_db(), launch.registration_id, patient_ref, viewer_zone()
            ),
        )


@dataclass(frozen=True, slots=True)
class TicketLine:
    """An open ticket as the page lists it (id, subject, status, priority, due time)."""

    id: int
    subject: str
    status: str
    priority: str
    due_at: dt.datetime | None


# As many as the ticket list's first page (``TicketFilters.per_page``).
TICKETS_SHOWN = TicketFilters().per_page


def ticket_lines(rows: Sequence[Mapping[str, Any]]) -> list[TicketLine]:
    """The patient's open tickets from the context's rows (``ctx.store_rows``, which the
    page has read or holds cached: open ones, most urgent first, as the ticket list
    orders them), the list's first page of them. The page neither counts nor lists them
    in the store again."""
    return [
        TicketLine(
            id=int(r["id"]),
            subject=str(r.get("subject") or ""),
            status=str(r.get("status") or ""),
            priority=str(r.get("priority") or ""),
            due_at=parse_datetime(r.get("due_at"), dt.UTC),
        )
        for r in rows[:TICKETS_SHOWN]
    ]


def _audit_view(
    launch: LaunchSession, patient_ref: str, tickets: Sequence[TicketLine], **detail: Any
) -> None:
    """One audit row per sidebar response: the patient, and the tickets it listed."""
    audit(
        "read",
        launch=launch,
        patient_ref=patient_ref,
        entity=patient_ref,
        detail={"view": "sidebar", **detail, "tickets": [t.id for t in tickets]},
    )


def _wait(parts: ctx.PatientParts, seconds: float) -> bool:
    from concurrent.futures import wait

    wait([parts.patient, parts.rest], timeout=seconds)
    return parts.done()


def _identity_model(
    launch: LaunchSession,
    patient_ref: str,
    *,
    c: dict[str, Any] | None,
    parts: ctx.PatientParts,
    patient_res: dict[str, Any] | None,
    now: dt.datetime,
    tz: Any,
) -> dict[str, Any]:
    """What sidebar/_identity.html needs (the identity part's whole model: it reads no
    store rows and shows no tickets, tasks or channels)."""
    from fhir_mappers.context import _jsonable
    from fhir_mappers.patient import to_contact

    contact: dict[str, Any] | None = None
    identity_as_of: dt.datetime | None = None
    if c is not None:
        contact = c.get("contact")
    elif patient_res is not None:
        contact = _jsonable(to_contact(patient_res, now=now.astimezone(tz)))
    if contact is None:
        # Not read yet in this launch (a slow EHR) or the EHR failed: the identity this
        # EHR gave lately, said to be that, until this launch's own read replaces it.
        known = ctx.known_identity(launch, patient_ref, parts)
        if known is not None:
            contact = _jsonable(to_contact(known[0], now=now.astimezone(tz)))
            identity_as_of = known[1]
    from_board = patient_ref != launch.patient_ref
    return {
        "launch": launch,
        "contact": contact,
        "identity_error": ctx.patient_error(parts),
        "identity_loading": not parts.patient.done(),
        "identity_as_of": identity_as_of,
        "wait_url": _page_url(launch, patient_ref, wait="1"),
        "retry_url": _page_url(launch, patient_ref, refresh="1", wait="1"),
        "compact_identity": not from_board
        and (launch.context or {}).get("need_patient_banner") is False,
        "when": lambda value: when_words(value, now=now, tz=tz),
    }


def _model(
    launch: LaunchSession,
    patient_ref: str,
    *,
    c: dict[str, Any] | None,
    parts: ctx.PatientParts,
    patient_res: dict[str, Any] | None,
    form: Form | None,
    early: _Early | None = None,
) -> dict[str, Any]:
    """Everything sidebar.html and its fragments need."""
    tz = viewer_zone()
    now = utcnow()
    identity = _identity_model(
        launch, patient_ref, c=c, parts=parts, patient_res=patient_res, now=now, tz=tz
    )
    if c is not None:
        ticket_rows = c["tickets"]
    elif early is not None:
        ticket_rows = early.store.tickets
    else:
        ticket_rows = ctx.ticket_rows(launch, patient_ref)
    tickets = ticket_lines(ticket_rows)
    if c is not None:
        tasks = c["tasks"]
    else:
        tasks = early.store.tasks if early is not None else ctx.task_rows(launch, patient_ref)
    visits_for_survey = []
    invites = c.get("survey_invites", {}) if c is not None else {}
    if c is not None:
        for v in c.get("recent") or []:
            if v.get("status") == "fulfilled" and v.get("appointment_id"):
                ref = f"Appointment/{v['appointment_id']}"
                visits_for_survey.append({"visit": v, "ref": ref, "invite": invites.get(ref)})
    from_board = patient_ref != launch.patient_ref
    practitioner_query = (request.args.get("rf_q") or "").strip()[:100]
    practitioner_choices: list[dict[str, str]] | None = None
    if practitioner_query:
        try:
            practitioner_choices = ctx.practitioners_named(launch, practitioner_query)
        except NeedsAuthorization:
            raise
        except Exception as exc:  # noqa: BLE001 - the picker says the search failed
            log.info("practitioner search failed: %s", type(exc).__name__)
            practitioner_choices = None
    ok = _confirmation(launch, patient_ref, request.args.get("ok") or "", patient_res)
    open_action = form.action if form else (request.args.get("open") or "")
    if practitioner_query:
        open_action = "referral"
    return {
        **identity,
        "c": c,
        "tickets": tickets,
        "tasks": tasks,
        "patient_ref": patient_ref,
        "here": _page_url(launch, patient_ref),
        "page_url": _page_url(launch, patient_ref),
        "patient_param": patient_ref if from_board else "",
        "surveyable": visits_for_survey,
        "from_board": from_board,
        "has_style": bool((launch.context or {}).get("smart_style_url")),
        "channels": task_svc.channel_options(
            patient_res,
            now=now,
            stopped=_stopped(launch, patient_ref, c, early, tz),
        )
        if (patient_res is not None or parts.patient.done())
        else None,
        "quick": duephrase.quick_choices(now=now, tz=tz),
        "form": form or Form(""),
        "open_action": open_action,
        "ok": ok,
        "practitioner_query": practitioner_query,
        "practitioner_choices": practitioner_choices,
        "lasting": {t["id"] for t in tasks if is_lasting(t)},
        "me": launch.fhir_user,
        "now": now,
        "tz": tz,
        "day": lambda value: date_words(value, now=now, tz=tz) or str(value),
        "is_past": lambda value: (m := parse_datetime(value, dt.UTC)) is not None and m <= now,
        "task_sentence": lambda task: task_sentence(task, now=now, tz=tz),
    }


def _stopped(
    launch: LaunchSession,
    patient_ref: str,
    c: dict[str, Any] | None,
    early: _Early | None,
    tz: Any,
) -> dict[str, str]:
    """The channels a STOP closed: from the context's messaging part when the page has
    one (cached with it), else read."""
    if c is not None and c.get("messaging") is not None:
        return messaging.stopped_in_summary(c["messaging"], tz)
    if early is not None:
        return early.stopped
    return messaging.stopped_channels(get_db(), launch.registration_id, patient_ref, tz)


def _confirmation(
    launch: LaunchSession, patient_ref: str, ok: str, patient_res: dict[str, Any] | None
) -> str | None:
    """The sentence that confirms the action just done, read back from its row (the URL
    carries a row id only, never patient data)."""
    kind, _, raw = ok.partition(":")
    if not raw.isdigit():
        return None
    db = get_db()
    tz = viewer_zone()
    now = utcnow()
    if kind == "ticket":
        ticket = db.get(Ticket, int(raw))
        if (
            ticket
            and ticket.registration_id == launch.registration_id
            and ticket.patient_ref == patient_ref
        ):
            due = f" · due {when_words(ticket.due_at, now=now, tz=tz)}" if ticket.due_at else ""
            return f"Ticket #{ticket.id} opened{due}."
        return None
    task = db.get(CareTask, int(raw))
    if (
        task is None
        or task.registration_id != launch.registration_id
        or task.patient_ref != patient_ref
    ):
        return None
    payload = task.payload or {}
    if kind == "task" and task.kind == "follow-up":
        channel = str(payload.get("channel") or "phone")
        what = {"phone": "Call", "sms": "Text message follow-up", "email": "Email follow-up"}[
            channel
        ]
        due = when_words(task.due_at, now=now, tz=tz) if task.due_at else "now"
        return f"{what} queued for {due} (task #{task.id})."
    if kind == "task" and task.kind == "referral":
        target = payload.get("target") or {}
        named = ctx.known_name(launch.registration_id, str(target.get("practitioner") or ""))
        to = named or target.get("specialty") or "the chosen service"
        return f"Referral to {to} queued (task #{task.id}): it is sent to the EHR now."
    if kind == "channel":
        words = task_svc.CHANNEL_WORDS.get(str(payload.get("channel")), "another channel").lower()
        return f"Follow-up sent again by {words} (task #{task.id})."
    if kind == "survey":
        invite = db.scalars(
            select_invite(launch.registration_id, str(payload.get("appointment_ref") or ""))
        ).first()
        if invite is not None and invite.status == "sent" and invite.channel:
            route = task_svc.survey_route(patient_res, now=now)
            to = f" to {route.to}" if route.to and route.channel == invite.channel else ""
            return f"Survey sent by {_channel_name(invite.channel)}{to}."
        route = task_svc.survey_route(patient_res, now=now)
        when = (
            "now"
            if task.due_at is None or task.due_at <= now
            else when_words(task.due_at, now=now, tz=tz)
        )
        if route.channel:
            verb = "Survey goes" if when != "now" else "Survey is being sent"
            at = f" {when}" if when != "now" else ""
            return f"{verb} by {_channel_name(route.channel)} to {route.to}{at}."
        return "Survey queued."
    return None


def select_invite(registration_id: int, appointment_ref: str) -> Any:
    from sqlalchemy import select

    return select(SurveyInvite).where(
        SurveyInvite.registration_id == registration_id,
        SurveyInvite.appointment_ref == appointment_ref,
    )


def _channel_name(channel: str | None) -> str:
    return {"sms": "SMS", "email": "email", "phone": "phone"}.get(channel or "", channel or "")


def _done(launch: LaunchSession, patient_ref: str, ok: str) -> BaseResponse:
    """Back to the patient's page with the confirmation (Post/Redirect/Get)."""
    return redirect(_page_url(launch, patient_ref, ok=ok), code=303)


def _messages(exc: ValidationError) -> dict[str, str]:
    raw: dict[str, Any] = exc.normalized_messages()  # type: ignore[no-untyped-call]
    return {
        str(k): " ".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in raw.items()
    }


@bp.post("/l/<launch_id>/actions/ticket")
def new_ticket(launch_id: str) -> BaseResponse | tuple[str, int]:
    """ "New ticket" in the sidebar: confirmed in place, or the form back with messages."""
    from plugin.schemas import TicketCreateSchema

    launch = current_launch(launch_id)
    check_csrf(launch)
    patient_ref = _patient_of_request(launch)
    values = form_values("subject", "description", "category", "priority")
    if "subject" not in values:
        form = Form("ticket", values, {"subject": "Say in a few words what the ticket is about."})
        return _page(launch, patient_ref, form=form, status=422)
    try:
        data = TicketCreateSchema().load({**values, "patient": patient_ref})
        ticket = create_ticket(get_db(), launch, sla=sla_hours(current_app.config), **data)
    except ValidationError as exc:
        return _page(launch, patient_ref, form=Form("ticket", values, _messages(exc)), status=422)
    return _done(launch, patient_ref, f"ticket:{ticket.id}")


@bp.post("/l/<launch_id>/actions/task")
def queue_task_form(launch_id: str) -> BaseResponse | tuple[str, int]:
    """The sidebar's follow-up and referral forms (no JavaScript needed)."""
    from helpdesk.tasks import queue_task
    from jobs import outbox
    from plugin.errors import field_messages
    from plugin.schemas import load_task_create

    launch = current_launch(launch_id)
    check_csrf(launch)
    patient_ref = _patient_of_request(launch)
    kind = request.form.get("kind", "")
    action = "followup" if kind == "follow-up" else "referral"
    values = form_values(
        "kind",
        "reason",
        *due_fields("due"),
        "assignee",
        "channel",
        "specialty",
        "organization",
        "practitioner",
        "urgency",
        "appointment",
    )
    body: dict[str, Any] = {
        k: v for k, v in values.items() if k not in (*due_fields("due"), "assignee")
    }
    body["patient"] = patient_ref
    errors: dict[str, str] = {}
    if kind == "follow-up":
        if values.get("assignee") == "me" and launch.fhir_user:
            body["assignee"] = launch.fhir_user
        try:
            _, words = resolve_due(values, "due")
            body["due"] = words
        except duephrase.DuePhraseError as exc:
            errors["due"] = str(exc)
    if not values.get("reason"):
        errors["reason"] = (
            "Say what the call is about." if kind == "follow-up" else "Say why you refer."
        )
    if errors:
        return _page(launch, patient_ref, form=Form(action, values, errors), status=422)
    resource = ctx.patient_resource(launch, patient_ref) if kind == "follow-up" else None
    try:
        task = queue_task(
            get_db(),
            launch,
            load_task_create(body),
            tz=viewer_zone(),
            patient_resource=resource,
        )
    except ValidationError as exc:
        messages = {
            k: " ".join(map(str, v)) if isinstance(v, list) else str(v)
            for k, v in field_messages(exc).items()
        }
        return _page(launch, patient_ref, form=Form(action, values, messages), status=422)
    # The row is committed; its job comes second (the sweeper covers a failed enqueue).
    outbox.dispatch([task.id])
    return _done(launch, patient_ref, f"task:{task.id}")


@bp.post("/l/<launch_id>/actions/survey")
def send_survey(launch_id: str) -> BaseResponse | tuple[str, int]:
    """ "Send survey" for a completed visit: once per visit, only to a channel the patient
    can receive, and now when the visit ended longer ago than the usual delay."""
    from helpdesk.surveys import request_survey
    from jobs import outbox

    launch = current_launch(launch_id)
    check_csrf(launch)
    patient_ref = _patient_of_request(launch)
    appointment = request.form.get("appointment", "")
    if not _APPOINTMENT_REF.match(appointment):
        return _refuse(launch, patient_ref, appointment, "Choose a visit to ask about.")
    try:
        c = ctx.fetch_context(launch, patient_ref=patient_ref)
    except NeedsAuthorization as exc:
        return _ended(launch, exc)
    visit = next(
        (
            v
            for v in c.get("visits") or []
            if f"Appointment/{v.get('appointment_id')}" == appointment
        ),
        None,
    )
    if visit is None or visit.get("status") != "fulfilled":
        return _refuse(launch, patient_ref, appointment, "Not sent: that is not a completed visit.")
    now = utcnow()
    route = task_svc.survey_route(ctx.patient_resource(launch, patient_ref), now=now)
    if route.channel is None:
        return _refuse(launch, patient_ref, appointment, route.refusal or "Not sent.")
    ended = visit.get("end") or visit.get("start")
    db = get_db()
    task = request_survey(
        db,
        current_app._get_current_object(),  # type: ignore[attr-defined]
        registration_id=launch.registration_id,
        appointment_ref=appointment,
        patient_ref=patient_ref,
        now=now,
        # A visit that ended longer ago than the survey delay is asked about now.
        fulfilled_at=dt.datetime.fromisoformat(ended) if ended else None,
        requested_by=launch.fhir_user,
        launch_session_id=launch.id,
    )
    db.commit()
    if task is None:
        return _refuse(
            launch, patient_ref, appointment, "Already invited about that visit: see its status."
        )
    outbox.dispatch([task.id])
    audit("survey.request", launch=launch, patient_ref=patient_ref, entity=appointment)
    return _done(launch, patient_ref, f"survey:{task.id}")


def _refuse(
    launch: LaunchSession, patient_ref: str, appointment: str, message: str
) -> BaseResponse | tuple[str, int]:
    """The survey was not sent: the page again, the message at the visit's button."""
    form = Form("survey", {"appointment": appointment}, {"appointment": message})
    return _page(launch, patient_ref, form=form, status=422)


def _same(
    launch: LaunchSession, registration_id: int, row_patient: str | None, patient_ref: str
) -> bool:
    return registration_id == launch.registration_id and row_patient == patient_ref


@bp.post("/l/<launch_id>/tasks/<rowid:task_id>/channel")
def change_channel(launch_id: str, task_id: int) -> BaseResponse | tuple[str, int]:
    """A follow-up that failed for a lasting reason, sent again another way."""
    from jobs import outbox

    launch = current_launch(launch_id)
    check_csrf(launch)
    patient_ref = _patient_of_request(launch)
    channel = request.form.get("channel", "")
    parts = ctx.start_patient(launch, patient_ref)
    try:
        task = task_svc.change_channel(
            get_db(), launch, task_id, channel=channel, patient=ctx.wait_patient(parts)
        )
    except task_svc.ChannelRefused as exc:
        form = Form(f"channel-{task_id}", {"channel": channel}, {"channel": exc.message})
        return _page(launch, patient_ref, form=form, status=422)
    outbox.dispatch([task.id])
    return _done(launch, patient_ref, f"channel:{task.id}")


@bp.get("/l/<launch_id>/part/<name>")
def part(launch_id: str, name: str) -> BaseResponse | tuple[str, int]:
    """A section of the page, for the page's script to put in place once the EHR has
    answered: ``identity`` waits for the Patient only, ``sections`` for everything."""
    launch = current_launch(launch_id)
    patient_ref = _patient_of_request(launch)
    if name not in ("identity", "sections"):
        raise AppError("No such part.", status=404, code="not_found")
    try:
        parts = ctx.start_patient(launch, patient_ref, retry_failed=False)
        if name == "identity":
            ctx.wait_patient(parts)
            c = None
        else:
            c = ctx.fetch_context(launch, patient_ref=patient_ref, parts=parts)
        patient_res = ctx.wait_patient(parts, 0)
    except NeedsAuthorization as exc:
        html, status = _ended(launch, exc)
        response = make_response(html, status)
        response.headers["X-CareDesk-Ended"] = "1"
        return response
    if name == "identity":
        model = _identity_model(
            launch,
            patient_ref,
            c=None,
            parts=parts,
            patient_res=patient_res,
            now=utcnow(),
            tz=viewer_zone(),
        )
    else:
        model = _model(launch, patient_ref, c=c, parts=parts, patient_res=patient_res, form=None)
    # The identity part lists no tickets (and reads none).
    tickets = () if name == "identity" else model["tickets"]
    _audit_view(launch, patient_ref, tickets, part=name)
    template = "sidebar/_identity.html" if name == "identity" else "sidebar/_sections.html"
    response = make_response(render_template(template, **model))
    response.headers["Cache-Control"] = "no-store"
    return response


def _back(launch_id: str) -> BaseResponse:
    fallback = url_for("sidebar.home", launch_id=launch_id)
    return back(launch_id, request.form.get("next"), fallback)


_COLOR = re.compile(r"^(#[0-9a-fA-F]{3,8}|rgba?\([0-9.,\s%]+\)|[a-zA-Z]{3,20})$")
_FONT = re.compile(r"^[A-Za-z0-9 ,\-\"']{1,120}$")
STYLE_KEYS = {
    "color_background": "--cd-bg",
    "color_error": "--cd-bad",
    "color_highlight": "--cd-accent",
    "color_modal_backdrop": None,
    "color_success": "--cd-ok",
    "color_text": "--cd-fg",
    "dim_border_radius": None,
    "font_family_body": "--cd-font",
}


@bp.get("/l/<launch_id>/style.css")
def ehr_style(launch_id: str) -> BaseResponse:
    """The EHR's smart_style_url as CSS variables (CSP allows only same-origin styles).

    Fetched only from the registered EHR's own origin, and every value is checked against
    a strict pattern so an EHR cannot inject CSS.
    """
    launch = current_launch(launch_id)
    url = (launch.context or {}).get("smart_style_url")
    css = ""
    if url and _same_origin(url, launch.registration.iss):
        try:
            http = ehr.clients().http(launch.registration_id)
            answer = http.get(url, timeout=3, allow_redirects=False)
            style = answer.json() if answer.status_code == 200 else {}
        except (requests.RequestException, ValueError):
            style = {}
        rules = []
        for key, var in STYLE_KEYS.items():
            value = style.get(key) if isinstance(style, dict) else None
            if var and isinstance(value, str):
                pattern = _FONT if key.startswith("font") else _COLOR
                if pattern.match(value.strip()):
                    rules.append(f"  {var}: {value.strip()};")
        css = ":root {\n" + "\n".join(rules) + "\n}\n" if rules else ""
    response = make_response(css)
    response.mimetype = "text/css"
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


def _same_origin(url: str, iss: str) -> bool:
    a, b = urlsplit(url), urlsplit(iss)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc) and a.scheme in ("http", "https")
