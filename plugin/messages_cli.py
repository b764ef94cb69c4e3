"""`caredesk inbound ...`: read the clinic's mailbox now, escalate overdue tickets now,
run the insurance outreach sweep now (the cron runs each on its own schedule)."""

from __future__ import annotations

import json

import click

from plugin.cli import flask_app, inbound, with_appcontext


@inbound.command("poll", help="Take new mail from the IMAP mailbox (CAREDESK_IMAP_*) now.")
@click.option("--limit", type=int, default=None, help="Most messages to take (IMAP_BATCH).")
@with_appcontext
def poll(limit: int | None) -> None:
    from jobs.mailbox import poll as poll_mailbox

    click.echo(json.dumps(poll_mailbox(flask_app(), limit=limit).to_json()))


@inbound.command("escalate", help="Apply the escalation rules to overdue tickets now.")
@with_appcontext
def escalate() -> None:
    from jobs.inbound import escalate_overdue

    click.echo(json.dumps({"escalated": escalate_overdue(flask_app())}))


@inbound.command("outreach", help="Queue insurance outreach for coverages ending soon, now.")
@with_appcontext
def outreach() -> None:
    from jobs.outreach import sweep_all

    click.echo(json.dumps({"queued": sum(s.queued for s in sweep_all(flask_app()))}))


@inbound.command("rules", help="Print the automation rules as CareDesk reads them.")
@with_appcontext
def rules() -> None:
    from helpdesk.automation import load_rules

    loaded = load_rules(flask_app().config)
    click.echo(
        json.dumps({"source": loaded.source, "rules": loaded.raw.get("rules", [])}, indent=2)
    )
