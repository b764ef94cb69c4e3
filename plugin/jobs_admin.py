"""Tasks in the sidebar and for staff: create follow-ups and referrals, see every task's
state, retry, finish work-list items, the jobs admin page and the demo outbox.

Everything is under ``/l/<launch_id>/``: the caller must own an active launch, and sees
only its registration's tasks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, jsonify, render_template, request
from flask.wrappers import Response
from sqlalchemy import select

from plugin.crypto import get_vault
from plugin.db import get_db
from plugin.errors import AppError, NotFound
from plugin.launch import current_launch
from plugin.models import CareTask, OutboundMessage

bp = Blueprint("jobs_admin", __name__, url_prefix="/l/<launch_id>")

FOLLOW_UP_CHANNELS = ("phone", "sms", "email")
URGENCIES = ("routine", "urgent", "asap", "stat")


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


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise AppError("send a JSON object", code="invalid_body")
    return data


def _due(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        due = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise AppError("due_at must be an ISO 8601 date-time", code="invalid_due") from exc
    if due.tzinfo is None:
        raise AppError("due_at needs a UTC offset", code="invalid_due")
    return due


def _task(launch_id: str, task_id: int) -> CareTask:
    launch = current_launch(launch_id)
    task = get_db().get(CareTask, task_id)
    if task is None or task.registration_id != launch.registration_id:
        raise NotFound("no such task")
    return task


@bp.get("/tasks")
def list_tasks(launch_id: str) -> Response:
    launch = current_launch(launch_id)
    query = select(CareTask).where(CareTask.registration_id == launch.registration_id)
    patient = request.args.get("patient") or launch.patient_ref
    if patient:
        query = query.where(CareTask.patient_ref == patient)
    if request.args.get("status"):
        query = query.where(CareTask.status == request.args["status"])
    rows = get_db().scalars(query.order_by(CareTask.id.desc()).limit(200))
    return jsonify({"tasks": [task_json(t) for t in rows]})


@bp.post("/tasks")
def create(launch_id: str) -> tuple[Response, int]:
    from jobs.outbox import create_task, dispatch

    launch = current_launch(launch_id)
    body = _body()
    kind = body.get("kind")
    patient = body.get("patient") or launch.patient_ref
    if not patient:
        raise AppError("no patient in context", code="no_patient")
    reason = str(body.get("reason") or "").strip()
    if not reason:
        raise AppError("a reason is required", code="invalid_reason")
    if kind == "follow-up":
        channel = body.get("channel", "phone")
        if channel not in FOLLOW_UP_CHANNELS:
            raise AppError("channel must be phone, sms or email", code="invalid_channel")
        if not (body.get("assignee") or body.get("group")):
            raise AppError("an assignee or a group is required", code="invalid_assignee")
        payload = {"reason": reason, "channel": channel, "group": body.get("group")}
    elif kind == "referral":
        target = body.get("target")
        if not isinstance(target, dict) or not any(
            target.get(k) for k in ("specialty", "organization", "practitioner")
        ):
            raise AppError(
                "target needs a specialty, organization or practitioner", code="invalid_target"
            )
        urgency = body.get("urgency", "routine")
        if urgency not in URGENCIES:
            raise AppError("urgency must be routine, urgent, asap or stat", code="invalid_urgency")
        payload = {
            "reason": reason,
            "target": {k: target.get(k) for k in ("specialty", "organization", "practitioner")},
            "urgency": urgency,
            "appointment_ref": body.get("appointment"),
        }
    else:
        raise AppError("kind must be follow-up or referral", code="invalid_kind")
    session = get_db()
    task = create_task(
        session,
        registration_id=launch.registration_id,
        kind=kind,
        patient_ref=patient,
        payload=payload,
        due_at=_due(body.get("due_at")),
        launch_session_id=launch.id,
        created_by=launch.fhir_user,
        assignee=body.get("assignee"),
    )
    assert task is not None
    session.commit()
    dispatch([task.id])
    return jsonify(task_json(task)), 201


@bp.post("/tasks/<int:task_id>/retry")
def retry(launch_id: str, task_id: int) -> Response:
    from jobs.status import retry as do_retry

    task = _task(launch_id, task_id)
    if not do_retry(current_app._get_current_object(), [task.id]):  # type: ignore[attr-defined]
        raise AppError(
            "only failed or waiting-for-authorization tasks can be retried",
            status=409,
            code="not_retryable",
        )
    get_db().expire_all()
    return jsonify(task_json(_task(launch_id, task_id)))


@bp.post("/tasks/<int:task_id>/complete")
def complete(launch_id: str, task_id: int) -> Response:
    task = _task(launch_id, task_id)
    if task.kind != "follow-up" or task.status != "waiting":
        raise AppError(
            "only follow-ups on a work list can be completed", status=409, code="not_waiting"
        )
    from plugin.timeutil import utcnow

    task.status = "done"
    task.finished_at = utcnow()
    note = str((request.get_json(silent=True) or {}).get("note") or "").strip()
    task.status_note = f"Completed: {note}" if note else "Completed."
    get_db().commit()
    return jsonify(task_json(task))


@bp.get("/worklist")
def worklist(launch_id: str) -> Response:
    launch = current_launch(launch_id)
    assignee = request.args.get("assignee") or launch.fhir_user
    query = select(CareTask).where(
        CareTask.registration_id == launch.registration_id,
        CareTask.kind == "follow-up",
        CareTask.status == "waiting",
    )
    if request.args.get("group"):
        query = query.where(CareTask.payload["group"].as_string() == request.args["group"])
    elif assignee:
        query = query.where(CareTask.assignee == assignee)
    rows = get_db().scalars(query.order_by(CareTask.due_at, CareTask.id).limit(500))
    return jsonify({"assignee": assignee, "tasks": [task_json(t) for t in rows]})


@bp.get("/jobs/status")
def status_json(launch_id: str) -> Response:
    from jobs.status import snapshot

    current_launch(launch_id)
    return jsonify(snapshot(current_app._get_current_object()))  # type: ignore[attr-defined]


@bp.get("/jobs")
def admin_page(launch_id: str) -> str:
    from jobs.status import snapshot

    current_launch(launch_id)
    snap = snapshot(current_app._get_current_object())  # type: ignore[attr-defined]
    return render_template("jobs/admin.html", snap=snap, launch_id=launch_id)


@bp.get("/jobs/outbox")
def outbox_page(launch_id: str) -> str:
    launch = current_launch(launch_id)
    if current_app.config["ENV"] not in ("demo", "test", "development"):
        raise NotFound("the outbox page exists in the demo only")
    vault = get_vault()
    rows = get_db().scalars(
        select(OutboundMessage)
        .where(OutboundMessage.registration_id == launch.registration_id)
        .order_by(OutboundMessage.id.desc())
        .limit(100)
    )
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
