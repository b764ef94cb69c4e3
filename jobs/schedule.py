"""The cron schedule, on RQ's built-in CronScheduler (no rq-scheduler).

`caredesk jobs cron` runs it; any number may run (RQ's cron keeps one schedule per
name). Each entry enqueues a plain function by path onto the task queue.
"""

from __future__ import annotations

from flask import Flask
from rq.cron import CronScheduler

from jobs.queue import get_queue_state


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

    cron.register(
        reminders.sweep_reminders_job,
        queue,
        interval=int(app.config["REMINDER_SWEEP_SECONDS"]),
        job_timeout=1800,
        name="reminder-sweep",
    )
    cron.register(
        outbox.sweep_job, queue, interval=int(app.config["TASK_SWEEP_SECONDS"]), name="task-sweep"
    )
    cron.register(
        referral.check_referrals_job,
        queue,
        interval=int(app.config["REFERRAL_CHECK_SECONDS"]),
        job_timeout=1800,
        name="referral-check",
    )
    cron.register(
        survey_sweep.sweep_surveys_job,
        queue,
        interval=int(app.config.get("SURVEY_SWEEP_SECONDS") or 900),
        job_timeout=1800,
        name="survey-sweep",
    )
    cron.register(maintenance.prune_launches_job, queue, interval=3600, name="launch-prune")
    cron.register(
        outreach.sweep_outreach_job,
        queue,
        interval=int(app.config["OUTREACH_SWEEP_SECONDS"]),
        job_timeout=1800,
        name="insurance-outreach",
    )
    cron.register(
        inbound.escalate_overdue_job,
        queue,
        interval=int(app.config["ESCALATION_SWEEP_SECONDS"]),
        name="ticket-escalation",
    )
    if app.config.get("IMAP_HOST"):
        cron.register(
            mailbox.poll_job,
            queue,
            interval=int(app.config["IMAP_POLL_SECONDS"]),
            job_timeout=600,
            name="imap-poll",
        )
    return cron
