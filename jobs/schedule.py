"""The cron schedule, on RQ's built-in CronScheduler (no rq-scheduler).

`caredesk jobs cron` runs it; any number may run (RQ's cron keeps one schedule per
name). Each entry enqueues a plain function by path onto the task queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from rq.cron import CronScheduler

from jobs.queue import get_queue_state

# The job timeout of a sweep that pages through everything one EHR holds.
EHR_WIDE = 1800


def build_cron(app: Flask, *, logging_level: str | int = "INFO") -> CronScheduler:
    """``logging_level``: RQ's own lines (each registration, each enqueue); the demo keeps
    them at WARNING so they do not scroll its printed URL away."""
    state = get_queue_state(app)
    queue = str(app.config.get("TASK_QUEUE") or "default")
    cron = CronScheduler(
        connection=state.connection, name="caredesk-cron", logging_level=logging_level
    )
    from jobs import (
        inbound,
        mailbox,
        maintenance,
        outbox,
        outreach,
        referral,
        reminders,
        survey_sweep,
    )

    cfg = app.config
    # name, job, every how many seconds, job timeout (None: RQ's default)
    entries: list[tuple[str, Callable[[], object], Any, int | None]] = [
        ("reminder-sweep", reminders.sweep_reminders_job, cfg["REMINDER_SWEEP_SECONDS"], EHR_WIDE),
        ("task-sweep", outbox.sweep_job, cfg["TASK_SWEEP_SECONDS"], None),
        ("referral-check", referral.check_referrals_job, cfg["REFERRAL_CHECK_SECONDS"], EHR_WIDE),
        (
            "survey-sweep",
            survey_sweep.sweep_surveys_job,
            cfg.get("SURVEY_SWEEP_SECONDS") or 900,
            EHR_WIDE,
        ),
        ("launch-prune", maintenance.prune_launches_job, 3600, None),
        (
            "insurance-outreach",
            outreach.sweep_outreach_job,
            cfg["OUTREACH_SWEEP_SECONDS"],
            EHR_WIDE,
        ),
        ("ticket-escalation", inbound.escalate_overdue_job, cfg["ESCALATION_SWEEP_SECONDS"], None),
    ]
    if cfg.get("IMAP_HOST"):
        entries.append(("imap-poll", mailbox.poll_job, cfg["IMAP_POLL_SECONDS"], 600))
    for name, job, seconds, job_timeout in entries:
        cron.register(job, queue, interval=int(seconds), job_timeout=job_timeout, name=name)
    return cron
