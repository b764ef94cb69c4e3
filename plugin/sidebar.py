"""The sidebar: what a clinician in the EHR sees of one patient.

Pages render server-side in one pass after the FHIR reads (which go out together), so
nothing shifts as parts load and everything works without JavaScript.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Blueprint, Response, make_response, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from helpdesk import ehr
from helpdesk.audit import audit
from helpdesk.db import get_db
from helpdesk.errors import AppError
from helpdesk.tickets import ACTIVE_STATUSES, TicketFilters, list_tickets
from helpdesk.timeutil import utcnow
from plugin import context as ctx
from plugin.csrf import check_csrf
from plugin.launch import current_launch
from plugin.navigation import back

bp = Blueprint("sidebar", __name__)
log = logging.getLogger("caredesk.sidebar")

_PATIENT_REF = re.compile(r"^Patient/[A-Za-z0-9\-.]{1,256}$")


@bp.get("/l/<launch_id>/")
def home(launch_id: str) -> BaseResponse | str:
    launch = current_launch(launch_id)
    if not launch.patient_ref:
        return redirect(url_for("board.board", launch_id=launch.id))
    return _patient_page(launch, launch.patient_ref)


@bp.get("/l/<launch_id>/patient/<path:patient_ref>")
def patient(launch_id: str, patient_ref: str) -> str:
    """A patient opened from the board (a launch without patient context)."""
    launch = current_launch(launch_id)
    if not _PATIENT_REF.match(patient_ref):
        raise AppError("That is not a patient reference.", status=404, code="not_found")
    return _patient_page(launch, patient_ref)


def _patient_page(launch: Any, patient_ref: str) -> str:
    context = ctx.fetch_context(
        launch, patient_ref=patient_ref, use_cache=request.args.get("refresh") != "1"
    )
    audit(
        "read",
        launch=launch,
        patient_ref=patient_ref,
        entity=patient_ref,
        detail={"view": "sidebar"},
    )
    visits = context.get("visits") or []
    tickets = list_tickets(
        get_db(), launch, TicketFilters(status=ACTIVE_STATUSES, patient=patient_ref)
    ).items
    return render_template(
        "sidebar.html",
        launch=launch,
        c=context,
        tickets=tickets,
        patient_ref=patient_ref,
        here=request.path,
        surveyable=[v for v in visits if v.get("status") == "fulfilled"][:3],
        upcoming=[v for v in visits if v.get("timing") in ("today", "upcoming")],
        recent=[v for v in visits if v.get("timing") == "past"][:5],
        # The EHR shows its own banner when it says so; from the board there is none.
        show_banner=patient_ref != launch.patient_ref
        or (launch.context or {}).get("need_patient_banner") is not False,
        from_board=patient_ref != launch.patient_ref,
        has_style=bool((launch.context or {}).get("smart_style_url")),
    )


def _back(launch_id: str) -> BaseResponse:
    fallback = url_for("sidebar.home", launch_id=launch_id)
    return back(launch_id, request.form.get("next"), fallback)


@bp.post("/l/<launch_id>/actions/task")
def queue_task_form(launch_id: str) -> BaseResponse:
    """The sidebar's follow-up and referral forms (no JavaScript needed)."""
    from marshmallow import ValidationError

    from helpdesk.tasks import queue_task
    from jobs import outbox
    from plugin.errors import field_messages
    from plugin.launched import viewer_zone
    from plugin.schemas import load_task_create

    launch = current_launch(launch_id)
    check_csrf(launch)
    fields = (
        "kind",
        "reason",
        "due",
        "assignee",
        "channel",
        "patient",
        "specialty",
        "organization",
        "practitioner",
        "urgency",
        "appointment",
    )
    body = {k: v.strip() for k in fields if (v := request.form.get(k, "")) and v.strip()}
    if body.get("patient") == launch.patient_ref:
        body.pop("patient")
    try:
        task = queue_task(get_db(), launch, load_task_create(body), tz=viewer_zone())
    except ValidationError as exc:
        messages = field_messages(exc)
        text = "; ".join(
            f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in messages.items()
        )
        raise AppError(
            f"The task was not queued. {text}", status=422, code="validation_error"
        ) from exc
    outbox.dispatch([task.id])
    ctx.invalidate(launch_id)
    return _back(launch_id)


@bp.post("/l/<launch_id>/actions/survey")
def send_survey(launch_id: str) -> BaseResponse:
    """ "Send survey" for a fulfilled visit: queues the invitation job (once per visit)."""
    from flask import current_app

    from helpdesk.surveys import request_survey
    from jobs import outbox

    launch = current_launch(launch_id)
    check_csrf(launch)
    appointment = request.form.get("appointment", "")
    patient_ref = request.form.get("patient") or launch.patient_ref
    if not re.match(r"^Appointment/[A-Za-z0-9\-.]{1,256}$", appointment) or not (
        patient_ref and _PATIENT_REF.match(patient_ref)
    ):
        raise AppError("Choose a visit to ask about.", status=422, code="validation_error")
    db = get_db()
    task = request_survey(
        db,
        current_app._get_current_object(),  # type: ignore[attr-defined]
        registration_id=launch.registration_id,
        appointment_ref=appointment,
        patient_ref=patient_ref,
        now=utcnow(),
        requested_by=launch.fhir_user,
        launch_session_id=launch.id,
    )
    db.commit()
    if task is not None:
        outbox.dispatch([task.id])
        audit("survey.request", launch=launch, patient_ref=patient_ref, entity=appointment)
    ctx.invalidate(launch_id)
    return _back(launch_id)


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
def ehr_style(launch_id: str) -> Response:
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
