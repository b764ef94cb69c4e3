"""Tasks in the sidebar and for staff: retry, finish work-list items, the work list, the
jobs admin page and the demo outbox. (Creating and listing tasks is the JSON API's:
``/api/l/<launch_id>/tasks``.)

Everything is under ``/l/<launch_id>/``: the caller must own an active launch, and sees
only what ``helpdesk.access`` lets it see: its registration's tasks, counts and
messages, and only its patient's when it was launched from a chart (another patient's
task is 404 by id).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, render_template, request, url_for
from flask.wrappers import Response
from werkzeug.wrappers import Response as BaseResponse

from helpdesk import tasks as task_svc
from helpdesk.access import scope_of
from helpdesk.crypto import get_vault
from helpdesk.db import get_db
from helpdesk.errors import AppError, NotFound
from helpdesk.models import CareTask
from plugin.csrf import check_csrf
from plugin.launch import current_launch
from plugin.navigation import back

bp = Blueprint("jobs_admin", __name__, url_prefix="/l/<launch_id>")


def task_json(task: CareTask) -> dict[str, Any]:
    return {
        "id": task.id,
        "kind": task.kind,
        "status": task.status,
        "status_note": task.status_note,
        "patient": task.patient_ref,
        "assignee": task.assignee,
        "due_at": task.due_at.isoformat() if task.due_at else None,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "last_error": task.last_error,
        "fhir_refs": task.fhir_refs,
        "can_retry": task.status in ("failed", "needs-authorization"),
        "created_at": task.created_at.isoformat(),
        "finished_at": task.finished_at.isoformat() if task.finished_at else None,
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


@bp.get("/jobs")
def admin_page(launch_id: str) -> str:
    from jobs.status import snapshot

    scope = scope_of(current_launch(launch_id))
    snap = snapshot(current_app._get_current_object(), scope=scope)  # type: ignore[attr-defined]
    return render_template("jobs/admin.html", snap=snap, launch_id=launch_id)


@bp.get("/jobs/outbox")
def outbox_page(launch_id: str) -> str:
    launch = current_launch(launch_id)
    if current_app.config["ENV"] not in ("demo", "test", "development"):
        raise NotFound("the outbox page exists in the demo only")
    vault = get_vault()
    rows = task_svc.outbound_messages(get_db(), launch)
    messages = [
        {
            "id": m.id,
            "task_id": m.task_id,
            "channel": m.channel,
            "adapter": m.adapter,
            "language": m.language,
            "to": vault.decrypt(m.to_enc),
            "subject": vault.decrypt_optional(m.subject_enc),
            "body": vault.decrypt(m.body_enc),
            "at": m.created_at.isoformat(),
        }
        for m in rows
    ]
    return render_template("jobs/outbox.html", messages=messages, launch_id=launch_id)
