"""``caredesk survey ...``: publish the Questionnaire, request a survey, export answers."""

from __future__ import annotations

import sys
from urllib.parse import urlencode

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
from plugin.cli import survey, with_appcontext
from plugin.csvout import write_csv
from smart_launch.errors import FatalFhirError, SmartError
from smart_launch.fhir import find_canonical
from smart_launch.scopes import missing_scopes


def _registration(session, key: str) -> EhrRegistration:  # type: ignore[no-untyped-def]
    row = find(session, key)
    if row is None:
        raise click.UsageError(f"no registered EHR {key!r} (see `caredesk ehr list`)")
    return row


@survey.command(
    "publish",
    help="Create the CSAT Questionnaire on the EHR (backend services) unless it is there "
    "(found by url and version). EHRs that do not accept Questionnaire writes keep "
    "working: responses reference the canonical URL. Exit code 1 when CareDesk's own "
    "registration (backend client or scopes) is what stands in the way.",
)
@click.argument("ehr")
@with_appcontext
def publish(ehr: str) -> None:
    questionnaire = domain.questionnaire()
    url, version = str(questionnaire["url"]), str(questionnaire["version"])
    canonical = f"{url}|{version}"
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    with get_store().session() as session:
        row = _registration(session, ehr)
        slug, scopes = row.slug, row.backend_scopes or ""
        try:
            client = ehr_bridge.fhir_client(app, row)
        except SmartError as exc:
            raise click.ClickException(_whose_fault(exc, slug)) from exc
    try:
        # Searched by url and version as two parameters: a server without canonical
        # `url=X|V` search takes the pipe as part of the url, finds nothing, and every
        # publish made another copy.
        found = find_canonical(client, "Questionnaire", url, version)
    except FatalFhirError as exc:
        if exc.status in (401, 403):
            raise click.ClickException(_search_refused(exc, slug, scopes)) from exc
        raise click.ClickException(_whose_fault(exc, slug)) from exc
    except SmartError as exc:
        raise click.ClickException(_whose_fault(exc, slug)) from exc
    if found is not None:
        click.echo(f"already published: Questionnaire/{found.get('id')} ({canonical})")
        return
    body = {k: v for k, v in questionnaire.items() if k != "id"}
    try:
        status, created = client.create(
            body, if_none_exist=urlencode({"url": url, "version": version})
        )
    except FatalFhirError as exc:
        missing = missing_scopes("system/Questionnaire.c", scopes)
        if exc.status in (401, 403) and missing:
            raise click.ClickException(
                f"CareDesk's backend scopes for {slug!r} do not include Questionnaire create "
                f"(registered: {scopes or 'none'}), so the EHR refused it (HTTP {exc.status}). "
                f"Add system/Questionnaire.crs to the registration's backend scopes "
                f"(caredesk ehr update {slug} --backend-scopes ...) and to CareDesk's backend "
                "client in the EHR."
            ) from exc
        if exc.status in (403, 405):
            # Epic: Questionnaire is read-only. Nothing is wrong on either side.
            click.echo(
                f"The EHR does not accept Questionnaire writes ({exc.message}). Nothing to do: "
                f"QuestionnaireResponses will reference {canonical}."
            )
            return
        raise click.ClickException(_whose_fault(exc, slug)) from exc
    except SmartError as exc:
        raise click.ClickException(_whose_fault(exc, slug)) from exc
    click.echo(f"published: Questionnaire/{created.get('id')} ({canonical}), HTTP {status}")


def _search_refused(exc: FatalFhirError, slug: str, scopes: str) -> str:
    """A 401/403 on CareDesk's own *search*: not the EHR refusing writes. Usually the
    registration's backend scopes lack Questionnaire read; else the EHR's registration of
    CareDesk's backend client does not grant it."""
    if missing_scopes("system/Questionnaire.rs", scopes):
        return (
            f"CareDesk's backend scopes for {slug!r} do not include Questionnaire read "
            f"(registered: {scopes or 'none'}), so the EHR refused CareDesk's search for the "
            f"Questionnaire (HTTP {exc.status}). Add system/Questionnaire.crs to the "
            f"registration's backend scopes (caredesk ehr update {slug} --backend-scopes ...) "
            "and to CareDesk's backend client in the EHR."
        )
    return (
        f"The EHR refused CareDesk's search for the Questionnaire (HTTP {exc.status}) although "
        f"the registration's backend scopes include Questionnaire read: CareDesk's backend "
        f"client in the EHR is probably not granted it. {exc.message}"
    )


def _whose_fault(exc: SmartError, slug: str) -> str:
    """The error's own message, led by whose side must act."""
    lead = {
        "caredesk": f"CareDesk's registration {slug!r} needs fixing:",
        "ehr": "The EHR refused or failed:",
        "network": "The EHR could not be reached:",
    }[exc.party]
    return f"{lead} {exc.message}"


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
