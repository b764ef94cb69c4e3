"""The cron schedule: every sweep on its configured interval, the EHR-wide ones with the
long job timeout, the mailbox only when one is configured."""

from __future__ import annotations

from jobs.schedule import build_cron

SWEEPS = {
    # name: (function, interval, job timeout)
    "reminder-sweep": ("jobs.reminders.sweep_reminders_job", 901, 1800),
    "task-sweep": ("jobs.outbox.sweep_job", 61, None),
    "referral-check": ("jobs.referral.check_referrals_job", 3601, 1800),
    "survey-sweep": ("jobs.survey_sweep.sweep_surveys_job", 902, 1800),
    "launch-prune": ("jobs.maintenance.prune_launches_job", 3600, None),
    "insurance-outreach": ("jobs.outreach.sweep_outreach_job", 86401, 1800),
    "ticket-escalation": ("jobs.inbound.escalate_overdue_job", 301, None),
}
INTERVALS = {
    "REMINDER_SWEEP_SECONDS": 901,
    "TASK_SWEEP_SECONDS": 61,
    "REFERRAL_CHECK_SECONDS": 3601,
    "SURVEY_SWEEP_SECONDS": 902,
    "OUTREACH_SWEEP_SECONDS": 86401,
    "ESCALATION_SWEEP_SECONDS": 301,
    "IMAP_POLL_SECONDS": 62,
}


def _registered(app) -> dict[str, tuple[str, int | None, int | None]]:  # type: ignore[no-untyped-def]
    with app.app_context():
        cron = build_cron(app)
    return {
        job.name: (job.func_name, job.interval, job.job_options.get("job_timeout"))
        for job in cron.get_jobs()
    }


def test_cron_runs_every_sweep_on_its_configured_interval(make_app) -> None:
    app = make_app(**INTERVALS)
    assert _registered(app) == SWEEPS


def test_cron_polls_the_mailbox_only_when_one_is_configured(make_app) -> None:
    app = make_app(IMAP_HOST="127.0.0.1", **INTERVALS)
    assert _registered(app) == {**SWEEPS, "imap-poll": ("jobs.mailbox.poll_job", 62, 600)}
