"""`caredesk jobs ...`: task state, retries, sweeps and the cron schedule."""

from __future__ import annotations

import json

import click

from plugin.cli import flask_app, jobs, with_appcontext


@jobs.command("status", help="Counts per state and queue, oldest waiting, failures.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_appcontext
def status(as_json: bool) -> None:
    from jobs.status import snapshot

    snap = snapshot(flask_app())
    if as_json:
        click.echo(json.dumps(snap, indent=2))
        return
    click.echo(
        "tasks by state: "
        + (", ".join(f"{k} {v}" for k, v in sorted(snap["by_state"].items())) or "none")
    )
    for queue, counts in sorted(snap["by_queue"].items()):
        click.echo(f"  queue {queue}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for name, info in snap["rq"].items():
        click.echo(f"rq {name}: {info}")
    oldest = snap["oldest_waiting"]
    click.echo(
        f"oldest waiting: task {oldest['task_id']} ({oldest['kind']}) since {oldest['since']}"
        if oldest
        else "oldest waiting: none"
    )
    if snap["failures"]:
        click.echo("failures:")
        for f in snap["failures"]:
            click.echo(
                f"  task {f['task_id']} {f['kind']} after {f['attempts']} attempt(s): {f['error']}"
            )


@jobs.command("retry", help="Retry one task (by id) or every failed task (--failed).")
@click.argument("task_id", required=False, type=int)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed task.")
@with_appcontext
def retry(task_id: int | None, all_failed: bool) -> None:
    from jobs.status import failed_ids
    from jobs.status import retry as do_retry

    if (task_id is None) == (not all_failed):
        raise click.UsageError("give a task id or --failed (not both)")
    ids = failed_ids(flask_app()) if all_failed else [int(task_id or 0)]
    done = do_retry(flask_app(), ids)
    if task_id is not None and not done:
        raise click.ClickException(f"task {task_id} is not failed or waiting for authorization")
    click.echo(
        f"re-queued {len(done)} task(s)" + (f": {', '.join(map(str, done))}" if done else "")
    )


@jobs.command("sweep", help="Re-enqueue tasks whose job vanished; recover dead workers' tasks.")
@with_appcontext
def sweep() -> None:
    from jobs.outbox import sweep as do_sweep

    click.echo(json.dumps(do_sweep(flask_app()).to_json()))


@jobs.command("remind", help="Sweep upcoming appointments now and queue due reminders.")
@with_appcontext
def remind() -> None:
    from jobs.reminders import sweep_all

    for result in sweep_all(flask_app()):
        click.echo(
            f"registration {result.registration_id}: {result.seen} appointments, "
            f"{result.queued} reminders queued"
        )


@jobs.command("check-referrals", help="Check open referrals for an appointment now.")
@with_appcontext
def check_referrals() -> None:
    from jobs.referral import check_referrals as do_check

    click.echo(json.dumps(do_check(flask_app())))


@jobs.command(
    "close-referral",
    help="Close an open referral by hand: done (dealt with outside CareDesk) or --cancelled; "
    "its ServiceRequest and Task in the EHR get the matching status where writes are allowed.",
)
@click.argument("task_id", type=int)
@click.option("--cancelled", is_flag=True, help="No longer wanted (ServiceRequest revoked).")
@click.option("--note", default="", help="Why, for the row (no patient details).")
@with_appcontext
def close_referral(task_id: int, cancelled: bool, note: str) -> None:
    from jobs.errors import TaskError
    from jobs.referral import close_referral as do_close

    try:
        task = do_close(
            flask_app(), task_id, outcome="cancelled" if cancelled else "completed", note=note
        )
    except TaskError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"referral {task.id}: {task.status}. {task.status_note}")


@jobs.command("cron", help="Run the cron schedule (reminder sweep, task sweep, referral check).")
@with_appcontext
def cron() -> None:
    from jobs.schedule import build_cron

    scheduler = build_cron(flask_app())
    click.echo(f"cron {scheduler.name}: {len(scheduler.get_jobs())} entries", err=True)
    scheduler.start()  # type: ignore[no-untyped-call]
