"""My calls: the follow-up calls waiting for a person, and logging how each went.

The follow-up job only puts a call on a work list (``jobs.followup``); this page ends it.
Each call is logged as reached, left voicemail, no answer or wrong number; an unanswered
call sets the next attempt, and the third one (or "done") ends the task. The rules are
``helpdesk.tasks``'; this module only shows them. Under a launch with a patient the list
holds that patient's calls only (the patient lock); a launch without one lists the
user's calls for every patient, with names read in one `_id=` search per 50 patients.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from fhir_mappers.fhirutil import get_str
from fhir_mappers.patient import to_contact
from helpdesk import duephrase
from helpdesk import tasks as task_svc
from helpdesk.audit import audit_many
from helpdesk.db import get_db
from helpdesk.models import CallAttempt, CareTask, LaunchSession
from helpdesk.timeutil import utcnow
from plugin import context as ctx
from plugin.csrf import check_csrf
from plugin.forms import due_fields, form_values, resolve_due
from plugin.launch import current_launch
from plugin.launched import viewer_zone
from plugin.tasktext import task_sentence
from plugin.timewords import when_words
from smart_launch.errors import NeedsAuthorization
from smart_launch.fhir import parallel

bp = Blueprint("calls", __name__)
log = logging.getLogger("caredesk.calls")


def _patients(launch: LaunchSession, refs: list[str]) -> dict[str, dict[str, Any]]:
    """The Patients the calls are for: the launch's own from the sidebar's reads, others
    (launches without a patient) in `_id=` searches of up to 50, all at once."""
    if not refs:
        return {}
    if launch.patient_ref:
        found = ctx.patient_resource(launch, launch.patient_ref)
        return {launch.patient_ref: found} if found else {}
    client = ctx._client(launch)  # noqa: SLF001 - the one client factory of the context module
    ids = [ref.split("/", 1)[1] for ref in refs]
    chunks = [ids[i : i + ctx.CHUNK] for i in range(0, len(ids), ctx.CHUNK)]
    results = parallel(
        [partial(client.search, "Patient", [("_id", ",".join(chunk))]) for chunk in chunks]
    )
    out: dict[str, dict[str, Any]] = {}
    for result in results:
        if isinstance(result, NeedsAuthorization):
            raise result
        if isinstance(result, Exception):
            log.info("call list: patients unavailable: %s", type(result).__name__)
            continue
        for resource in ctx._entries(result)[0]:  # noqa: SLF001
            rid = get_str(resource, "id")
            if rid:
                out[f"Patient/{rid}"] = resource
    return out


def _render(
    launch: LaunchSession,
    *,
    form: dict[str, Any] | None = None,
    status: int = 200,
    ok: str | None = None,
) -> tuple[str, int]:
    db = get_db()
    tz = viewer_zone()
    now = utcnow()
    mine = request.values.get("all") != "1"
    tasks = task_svc.open_calls(db, launch, mine=mine)
    calls = task_svc.calls_of(db, [t.id for t in tasks])
    try:
        patients = _patients(launch, sorted({t.patient_ref for t in tasks if t.patient_ref}))
        own = ctx.patient_resource(launch, launch.patient_ref) if launch.patient_ref else None
    except NeedsAuthorization:
        patients, own = {}, None
        return render_template("sidebar/ended.html"), 401
    local_now = now.astimezone(tz)
    rows = []
    for task in tasks:
        resource = patients.get(task.patient_ref or "")
        contact = to_contact(resource, now=local_now) if resource else None
        row = {
            "id": task.id,
            "kind": task.kind,
            "status": task.status,
            "due_at": task.due_at,
            "channel": (task.payload or {}).get("channel") or "phone",
            "calls": len(calls[task.id]),
        }
        rows.append(
            {
                "task": task,
                "sentence": task_sentence(row, now=now, tz=tz),
                "reason": (task.payload or {}).get("reason"),
                "contact": contact,
                "patient_ref": task.patient_ref,
                "patient_read": resource is not None,
                "calls": calls[task.id],
                "last_attempt": len(calls[task.id]) + 1 >= task_svc.CALL_ATTEMPTS,
            }
        )
    audit_many(
        "read",
        [
            {
                "launch": launch,
                "patient_ref": ref,
                "entity": "CareTask",
                "detail": {"view": "calls"},
            }
            for ref in sorted({t.patient_ref for t in tasks if t.patient_ref})
        ],
    )
    own_contact = to_contact(own, now=local_now) if own else None
    html = render_template(
        "calls.html",
        launch=launch,
        rows=rows,
        mine=mine,
        ok=ok,
        form=form or {},
        outcomes=task_svc.CALL_OUTCOMES,
        attempts=task_svc.CALL_ATTEMPTS,
        quick=duephrase.quick_choices(now=now, tz=tz),
        when=lambda value: when_words(value, now=now, tz=tz),
        contact=_jsonable(own_contact) if own_contact else None,
        identity_loading=False,
        identity_error=None if own or not launch.patient_ref else "the EHR did not answer",
        compact_identity=(launch.context or {}).get("need_patient_banner") is False,
        has_style=bool((launch.context or {}).get("smart_style_url")),
        wait_url=url_for("calls.calls_page", launch_id=launch.id),
        retry_url=url_for("calls.calls_page", launch_id=launch.id),
    )
    return html, status


def _jsonable(value: Any) -> Any:
    from fhir_mappers.context import _jsonable as to_json

    return to_json(value)


@bp.get("/l/<launch_id>/calls")
def calls_page(launch_id: str) -> tuple[str, int]:
    launch = current_launch(launch_id)
    ok = None
    done = request.args.get("ok", "")
    kind, _, raw = done.partition(":")
    if raw.isdigit():
        ok = _confirmation(launch, kind, int(raw))
    return _render(launch, ok=ok)


def _confirmation(launch: LaunchSession, kind: str, row_id: int) -> str | None:
    db = get_db()
    tz = viewer_zone()
    now = utcnow()
    if kind == "call":
        attempt = db.get(CallAttempt, row_id)
        task = db.get(CareTask, attempt.task_id) if attempt else None
        if attempt is None or task is None or task.registration_id != launch.registration_id:
            return None
        if launch.patient_ref and task.patient_ref != launch.patient_ref:
            return None
        said = task_svc.CALL_OUTCOMES[attempt.outcome]
        if attempt.next_due_at is not None:
            nxt = when_words(attempt.next_due_at, now=now, tz=tz)
            return f"Call {attempt.attempt} logged: {said.lower()}. Next attempt {nxt}."
        # The last call: say the task is over, and what is left to do (never the outcome
        # twice, as "reached. Reached the patient." did).
        end = {
            "reached": f"Task #{task.id} is done.",
            "wrong-number": f"Correct the patient's phone in the EHR; task #{task.id} is done.",
        }.get(attempt.outcome, f"Not reached after {attempt.attempt} calls; task #{task.id} ends.")
        return f"Call {attempt.attempt} logged: {said.lower()}. {end}"
    if kind == "done":
        task = db.get(CareTask, row_id)
        if task is None or task.registration_id != launch.registration_id:
            return None
        if launch.patient_ref and task.patient_ref != launch.patient_ref:
            return None
        return f"Call task #{task.id} marked done: no more calls."
    return None


def _back(launch: LaunchSession, ok: str) -> BaseResponse:
    args: dict[str, Any] = {"ok": ok}
    if request.form.get("all") == "1":
        args["all"] = "1"
    return redirect(url_for("calls.calls_page", launch_id=launch.id, **args), 303)


@bp.post("/l/<launch_id>/calls/<rowid:task_id>/log")
def log_call(launch_id: str, task_id: int) -> BaseResponse | tuple[str, int]:
    launch = current_launch(launch_id)
    check_csrf(launch)
    values = form_values("outcome", *due_fields("next_due"), "note")
    outcome = values.get("outcome", "")
    errors: dict[str, str] = {}
    next_due = None
    # The next attempt matters only when this call neither reached anyone nor ended the
    # task; the service says which (it counts the calls).
    if outcome in ("voicemail", "no-answer"):
        try:
            next_due, _ = resolve_due(values, "next_due")
        except duephrase.DuePhraseError as exc:
            errors["next_due"] = str(exc)
    if not errors:
        try:
            attempt = task_svc.log_call(
                get_db(),
                launch,
                task_id,
                outcome=outcome,
                next_due=next_due,
                note=values.get("note"),
            )
        except task_svc.CallRefused as exc:
            errors[exc.field] = exc.message
        else:
            return _back(launch, f"call:{attempt.id}")
    form = {"task_id": task_id, "values": values, "errors": errors}
    return _render(launch, form=form, status=422)


@bp.post("/l/<launch_id>/calls/<rowid:task_id>/done")
def finish(launch_id: str, task_id: int) -> BaseResponse | tuple[str, int]:
    launch = current_launch(launch_id)
    check_csrf(launch)
    try:
        task = task_svc.finish_call(get_db(), launch, task_id)
    except task_svc.CallRefused as exc:
        form = {"task_id": task_id, "values": {}, "errors": {"outcome": exc.message}}
        return _render(launch, form=form, status=422)
    return _back(launch, f"done:{task.id}")
