"""A task's state as a sentence a clinician reads at a glance: "Call due today 3:00 PM CST
· attempt 1 of 3", "Referral sent to the EHR · waiting for an appointment"."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

from fhir_mappers.fhirutil import parse_datetime
from fhir_mappers.flags import call_overdue
from helpdesk.tasks import CALL_ATTEMPTS, GAVE_UP, can_retry
from plugin.timewords import when_words

_FOLLOW_UP = {"phone": "Call", "sms": "Text message", "email": "Email"}


def task_sentence(task: Mapping[str, Any], *, now: dt.datetime, tz: ZoneInfo) -> str:
    """``task`` is a row as ``plugin.context.task_rows`` gives it."""
    kind = task.get("kind")
    status = str(task.get("status") or "")
    due_raw = task.get("due_at")
    due = when_words(due_raw, now=now, tz=tz) if due_raw else ""
    due_at = parse_datetime(due_raw, dt.UTC) if isinstance(due_raw, str) else due_raw
    overdue = due_at is not None and due_at < now
    if status == "failed":
        return _failed(task)
    if status == "needs-authorization":
        return "Waiting for the EHR's permission: reopen CareDesk from the chart, then retry"
    if kind == "follow-up":
        channel = str(task.get("channel") or "phone")
        calls = int(task.get("calls") or 0)
        if channel == "phone" or status == "waiting":
            what = "Call" if channel == "phone" else f"Call after the {channel_word(channel)}"
            late = call_overdue(due_at, now)
            when = f"overdue since {due}" if late else f"due {due}" if due else "due now"
            return f"{what} {when} · attempt {calls + 1} of {CALL_ATTEMPTS}"
        return f"{_FOLLOW_UP.get(channel, 'Message')} to the patient goes {due or 'now'}"
    if kind == "referral":
        if status == "waiting":
            return "Referral sent to the EHR · waiting for an appointment"
        return "Referral being sent to the EHR"
    if kind == "survey-invite":
        return (
            f"Survey invitation goes {due}"
            if due and not overdue
            else "Survey invitation going out"
        )
    if kind == "survey-writeback":
        return "Survey answer being written to the chart"
    if kind == "reminder":
        return f"Visit reminder goes {due}" if due and not overdue else "Visit reminder going out"
    return f"{str(kind).replace('-', ' ').capitalize()} in progress"


def channel_word(channel: str) -> str:
    return {"sms": "text message", "email": "email", "phone": "call"}.get(channel, channel)


def _failed(task: Mapping[str, Any]) -> str:
    error = str(task.get("last_error") or "")
    what = {
        "follow-up": "Follow-up",
        "referral": "Referral",
        "survey-invite": "Survey invitation",
        "reminder": "Reminder",
    }.get(str(task.get("kind")), "Task")
    if error.startswith(GAVE_UP):
        return f"{what} failed: the EHR or the message service kept failing; retry later"
    return f"{what} could not be done"


def is_lasting(task: Mapping[str, Any]) -> bool:
    """A failed row whose reason a retry will not cure (helpdesk.tasks.can_retry, the rule
    the retry endpoint and the jobs page follow too)."""
    status = str(task.get("status") or "")
    return status == "failed" and not can_retry(status, str(task.get("last_error") or ""))
