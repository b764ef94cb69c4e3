"""``caredesk survey ...``: publish the Questionnaire, request a survey, export answers."""

from __future__ import annotations

import sys

import click
from flask import current_app

from helpdesk import ehr as ehr_bridge
from helpdesk import surveys as domain
from helpdesk.access import PatientScope
from helpdesk.db import get_store
from helpdesk.models import EhrRegistration
from helpdesk.registry import find
from helpdesk.timeutil import utcnow
from jobs import outbox
from plugin.cli import cli, with_appcontext
from plugin.csvout import write_csv
from smart_launch.errors import FatalFhirError, SmartError


@cli.group(help="Patient satisfaction surveys.")
def survey() -> None:
    pass


def _registration(session, key: str) -> EhrRegistration:  # type: ignore[no-untyped-def]
    row = find(session, key)
    if row is None:
        raise click.UsageError(f"no registered EHR {key!r} (see `caredesk ehr list`)")
    return row


@survey.command(
    "publish",
    help="Create the CSAT Questionnaire on the EHR (backend services) unless it is there. "
    "EHRs that do not accept Questionnaire writes keep working: responses reference the "
    "canonical URL.",
)
@click.argument("ehr")
@with_appcontext
def publish(ehr: str) -> None:
    questionnaire = domain.questionnaire()
    canonical = f"{questionnaire['url']}|{questionnaire['version']}"
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        with get_store().session() as session:
            client = ehr_bridge.fhir_client(app, _registration(session, ehr))
        found = client.search("Questionnaire", {"url": canonical})
        if found.get("entry"):
            resource = found["entry"][0].get("resource") or {}
            click.echo(f"already published: Questionnaire/{resource.get('id')} ({canonical})")
            return
        body = {k: v for k, v in questionnaire.items() if k != "id"}
        status, created = client.create(body, if_none_exist=f"url={canonical}")
    except FatalFhirError as exc:
        if exc.status in (403, 405):
            click.echo(
                f"The EHR does not accept Questionnaire writes ({exc.message}). Nothing to do: "
                f"QuestionnaireResponses will reference {canonical}."
            )
            return
        raise click.ClickException(exc.message) from exc
    except SmartError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"published: Questionnaire/{created.get('id')} ({canonical}), HTTP {status}")


@survey.command("request", help="Queue the survey invitation for a fulfilled appointment.")
@click.argument("ehr")
@click.option("--appointment", required=True, help="Appointment reference, e.g. Appointment/123.")
@with_appcontext
def request_(ehr: str, appointment: str) -> None:
    if not appointment.startswith("Appointment/"):
        raise click.UsageError("--appointment must look like Appointment/<id>")
    with get_store().session() as session:
        row = _registration(session, ehr)
        task = domain.request_survey(
            session,
            current_app,
            registration_id=row.id,
            appointment_ref=appointment,
            patient_ref=None,
            now=utcnow(),
            requested_by="cli",
        )
        session.flush()
        task_id = task.id if task is not None else None
    if task_id is None:
        click.echo("already requested for this appointment")
        return
    outbox.dispatch([task_id], app=current_app._get_current_object())  # type: ignore[attr-defined]
    click.echo(f"queued survey invitation task {task_id}")


@survey.command("export", help="Write stored answers as CSV (default: the ones not written back).")
@click.argument("ehr")
@click.option(
    "--status",
    default="not-supported",
    show_default=True,
    type=click.Choice(["all", "pending", "written", "not-supported", "failed"]),
    help="Write-back status to export.",
)
@with_appcontext
def export(ehr: str, status: str) -> None:
    with get_store().session() as session:
        row = _registration(session, ehr)
        rows = domain.export_rows(
            session,
            PatientScope.whole_registration(row.id),
            status=None if status == "all" else status,
        )
    if not rows:
        click.echo("no answers to export", err=True)
        return
    columns = list(rows[0])
    write_csv(sys.stdout, columns, ([r[c] for c in columns] for r in rows))
