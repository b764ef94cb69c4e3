"""Tasks in the sidebar and for staff: retry, finish work-list items, the work list, the
jobs admin page and the demo outbox. (Creating and listing tasks is the JSON API's:
``/api/l/<launch_id>/tasks``.)

Everything is under ``/l/<launch_id>/``: the caller must own an active launch, and sees
only what ``helpdesk.access`` lets it see: its registration's tasks, counts and
messages, and only its patient's when it was launched from a chart (another patient's
task is 404 by id).
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, current_app, jsonify, render_template, request, url_for
from flask.wrappers import Response
from sqlalchemy import func, select
from werkzeug.wrappers import Response as BaseResponse

from helpdesk import tasks as task_svc
from helpdesk.access import scope_of
from helpdesk.crypto import get_vault
from helpdesk.db import get_db
from helpdesk.errors import AppError, NotFound
from helpdesk.models import CareTask, LaunchSession
from helpdesk.tasks import retry_refusal
from helpdesk.timeutil import utcnow
from jobs.status import QueueHealth
from plugin.csrf import check_csrf
from plugin.launch import current_launch
from plugin.navigation import back
from plugin.rowjson import columns
from plugin.timewords import when_words

bp = Blueprint("jobs_admin", __name__, url_prefix="/l/<launch_id>")


def task_json(task: CareTask) -> dict[str, Any]:
    refusal = retry_refusal(task)
    return {
        **columns(
            task,
            "id",
            "kind",
            "status",
            "status_note",
            "assignee",
            "due_at",
            "attempts",
            "max_attempts",
            "last_error",
            "fhir_refs",
            "created_at",
            "finished_at",
        ),
        "patient": task.patient_ref,
        "can_retry": refusal is None,
        "retry_refusal": refusal,
    }


def _task(launch_id: str, task_id: int) -> CareTask:
    return task_svc.get_task(get_db(), current_launch(launch_id), task_id)


def _answer(launch_id: str, task: CareTask) -> BaseResponse:
    """A form post from the sidebar goes back to it; an API call gets the task as JSON."""
    if request.form:
        from plugin.context import invalidate

        invalidate(launch_id)
        return back(
            launch_id, request.form.get("next"), url_for("sidebar.home", launch_id=launch_id)
        )
    return jsonify(task_json(task))


@bp.post("/tasks/<rowid:task_id>/retry")
def retry(launch_id: str, task_id: int) -> BaseResponse:
    from jobs.status import retry as do_retry

    check_csrf(current_launch(launch_id))
    task = _task(launch_id, task_id)
    # The rule the sidebar and the jobs page offer Retry by (helpdesk.tasks.can_retry):
    # a lasting failure is refused here too, with what to do instead, so a stale page or
    # a hand-made request cannot queue work that fails the same way again.
    refusal = retry_refusal(task)
    if refusal is not None:
        raise AppError(refusal, status=409, code="not_retryable")
    if not do_retry(current_app._get_current_object(), [task.id]):  # type: ignore[attr-defined]
        raise AppError(
            "only failed or waiting-for-authorization tasks can be retried",
            status=409,
            code="not_retryable",
        )
    get_db().expire_all()
    return _answer(launch_id, _task(launch_id, task_id))


@bp.post("/tasks/<rowid:task_id>/complete")
def complete(launch_id: str, task_id: int) -> BaseResponse:
    check_csrf(current_launch(launch_id))
    task = _task(launch_id, task_id)
    if task.kind != "follow-up" or task.status != "waiting":
        raise AppError(
            "only follow-ups on a work list can be completed", status=409, code="not_waiting"
        )
    from helpdesk.timeutil import utcnow

    task.status = "done"
    task.finished_at = utcnow()
    body = request.get_json(silent=True)
    # A JSON body that is not an object (an array, a number) carries no note.
    fields = body if isinstance(body, dict) else request.form
    note = str(fields.get("note") or "").strip()
    task.status_note = f"Completed: {note}" if note else "Completed."
    get_db().commit()
    return _answer(launch_id, task)


@bp.get("/worklist")
def worklist(launch_id: str) -> Response:
    launch = current_launch(launch_id)
    assignee = request.args.get("assignee") or launch.fhir_user
    rows = task_svc.worklist(
        get_db(), launch, assignee=assignee, group=request.args.get("group") or None
    )
    return jsonify({"assignee": assignee, "tasks": [task_json(t) for t in rows]})


@bp.get("/jobs/status")
def status_json(launch_id: str) -> Response:
    from jobs.status import snapshot

    scope = scope_of(current_launch(launch_id))
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return jsonify(snapshot(app, scope=scope))


# The jobs page's filters: a state in words -> the task statuses it covers.
STATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "unfinished": ("Not finished yet", ("queued", "scheduled", "running", "needs-authorization")),
    "failed": ("Failed", ("failed",)),
    "waiting": ("Waiting for a person", ("waiting",)),
    "done": ("Done", ("done",)),
    "cancelled": ("Cancelled", ("cancelled",)),
}
KINDS = {
    "follow-up": "Follow-up",
    "referral": "Referral",
    "reminder": "Visit reminder",
    "survey-invite": "Survey invitation",
    "survey-writeback": "Survey answer to the chart",
}
PAGE_SIZE = 200


def retryable(task: CareTask) -> bool:
    """Offer Retry only where it can succeed (helpdesk.tasks.can_retry, the sidebar's rule
    and the retry endpoint's). A refusal that will come back the same (no channel, a 4xx
    from the EHR) is shown with its reason and what to do instead, not a button."""
    return retry_refusal(task) is None


def state_words(task: CareTask, *, now: datetime, tz: ZoneInfo) -> str:
    when = partial(when_words, now=now, tz=tz)
    status = task.status
    if status == "queued":
        return "Queued: waiting for a worker to start it"
    if status == "scheduled":
        return f"Scheduled for {when(task.due_at)}" if task.due_at else "Scheduled"
    if status == "running":
        return f"Running since {when(task.started_at)}" if task.started_at else "Running"
    if status == "waiting":
        if task.kind == "referral":
            return "Sent to the EHR; waiting for an appointment"
        return "On a work list: waiting for a call"
    if status == "done":
        return f"Done {when(task.finished_at)}" if task.finished_at else "Done"
    if status == "failed":
        at = f" {when(task.finished_at)}" if task.finished_at else ""
        return f"Failed{at}" + ("" if retryable(task) else ": not for retrying")
    if status == "needs-authorization":
        return "Needs the EHR's permission again: reopen CareDesk from the EHR, then retry"
    if status == "cancelled":
        return "Cancelled"
    return status


def queue_words(health: QueueHealth, counts: dict[str, int]) -> list[str]:
    """Whether work is getting done, in sentences: first whether anything can run, then
    this EHR's tasks on their way (counted from the store: RQ's own queues are shared by
    every EHR and not shown to one)."""
    unfinished = sum(counts.get(s, 0) for s in STATES["unfinished"][1])
    if health.error:
        lines = [
            f"The job queue cannot be reached ({health.error}). Tasks are kept in the store "
            "and are sent once it is back."
        ]
    elif health.workers == 0:
        lines = [
            "No worker is running: queued tasks wait until one is started (the command "
            "“caredesk worker”)."
            if unfinished
            else "No worker is running (nothing is waiting for one)."
        ]
    else:
        lines = [f"{health.workers} worker{'s' if health.workers != 1 else ''} running."]
    lines.append(
        f"{counts.get('queued', 0)} waiting to start, {counts.get('running', 0)} running, "
        f"{counts.get('scheduled', 0)} scheduled for later, "
        f"{counts.get('needs-authorization', 0)} waiting for the EHR's permission."
    )
    return lines


def _scope(launch: LaunchSession) -> list[Any]:
    """The tasks the launch may see (helpdesk.access: its EHR, and a chart's launch its
    own patient's only)."""
    return list(scope_of(launch).where(CareTask.registration_id, CareTask.patient_ref))


@bp.get("/jobs")
def admin_page(launch_id: str) -> str:
    from jobs.status import queue_health

    launch = current_launch(launch_id)
    db = get_db()
    state = request.args.get("state") or ""
    kind = request.args.get("kind") or ""
    if state not in STATES:
        state = ""
    if kind not in KINDS:
        kind = ""
    where = _scope(launch)
    counts: dict[str, int] = {
        status: count
        for status, count in db.execute(
            select(CareTask.status, func.count()).where(*where).group_by(CareTask.status)
        )
    }
    filtered = list(where)
    if state:
        filtered.append(CareTask.status.in_(STATES[state][1]))
    if kind:
        filtered.append(CareTask.kind == kind)
    total = db.scalar(select(func.count()).select_from(CareTask).where(*filtered)) or 0
    tasks = db.scalars(
        select(CareTask).where(*filtered).order_by(CareTask.id.desc()).limit(PAGE_SIZE)
    ).all()
    oldest = db.scalars(
        select(CareTask)
        .where(*where, CareTask.status.in_(STATES["unfinished"][1]))
        .order_by(CareTask.created_at)
        .limit(1)
    ).first()
    tz = ZoneInfo(str(current_app.config["VIEWER_TIMEZONE"]))
    now = utcnow()
    retried = request.args.get("retried", "")
    confirmation = None
    if retried.isdigit():
        task = db.get(CareTask, int(retried))
        if task is not None and scope_of(launch).sees(task.registration_id, task.patient_ref):
            confirmation = (
                f"Task #{task.id} ({KINDS.get(task.kind, task.kind).lower()}) is queued again: "
                f"{state_words(task, now=now, tz=tz)}."
            )
    here = url_for(
        "jobs_admin.admin_page", launch_id=launch.id, state=state or None, kind=kind or None
    )
    return render_template(
        "jobs/admin.html",
        launch=launch,
        tasks=tasks,
        total=total,
        state_counts={k: sum(counts.get(s, 0) for s in v[1]) for k, v in STATES.items()},
        states=STATES,
        kinds=KINDS,
        state=state,
        kind=kind,
        oldest=oldest,
        queue_lines=queue_words(queue_health(current_app._get_current_object()), counts),  # type: ignore[attr-defined]
        retryable=retryable,
        retry_refusal=retry_refusal,
        state_words=lambda t: state_words(t, now=now, tz=tz),
        when=lambda v: when_words(v, now=now, tz=tz),
        confirmation=confirmation,
        next_after_retry=lambda t: f"{here}{'&' if '?' in here else '?'}retried={t.id}",
    )


_URL = re.compile(r"https?://[^\s<>\"']+")


def linked(text: str) -> list[tuple[str, bool]]:
    """``text`` cut into (part, is_link): the outbox shows survey links as links (Jinja
    escapes every part; only http(s) URLs become links, trailing punctuation stays text)."""
    parts: list[tuple[str, bool]] = []
    at = 0
    for found in _URL.finditer(text):
        url = found.group(0).rstrip(".,;:!?)")
        if found.start() > at:
            parts.append((text[at : found.start()], False))
        parts.append((url, True))
        at = found.start() + len(url)
    if at < len(text):
        parts.append((text[at:], False))
    return parts


@bp.get("/jobs/outbox")
def outbox_page(launch_id: str) -> str:
    """What the demo would have sent: emails as emails, texts as texts (no subject)."""
    launch = current_launch(launch_id)
    if current_app.config["ENV"] not in ("demo", "test", "development"):
        raise NotFound("the outbox page exists in the demo only")
    vault = get_vault()
    rows = task_svc.outbound_messages(get_db(), launch)
    tz = ZoneInfo(str(current_app.config["VIEWER_TIMEZONE"]))
    now = utcnow()
    messages = [
        {
            **columns(m, "id", "task_id", "channel", "adapter", "language"),
            "to": vault.decrypt(m.to_enc),
            # A text message has no subject line, whatever its template rendered.
            "subject": vault.decrypt_optional(m.subject_enc) if m.channel == "email" else None,
            "parts": linked(vault.decrypt(m.body_enc)),
            "at": when_words(m.created_at, now=now, tz=tz),
        }
        for m in rows
    ]
    return render_template(
        "jobs/outbox.html", messages=messages, launch=launch, launch_id=launch_id
    )
