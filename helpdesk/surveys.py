"""Patient satisfaction surveys, the store's side: link tokens, requesting an invitation,
recording an answer, service recovery, the QuestionnaireResponse for an answer, and
what the sidebar and exports show. The jobs that send invitations and write answers back
are ``jobs.survey``; the public page is ``plugin.survey``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

# Imported with the module, not per call: the worker imports handler modules before it
# forks, and building the R4B models was the costliest part of each write-back.
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from flask import Flask
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fhir_mappers import survey as mapper
from helpdesk.access import PatientScope
from helpdesk.models import CareTask, EhrRegistration, SurveyInvite, SurveyResponse, Ticket
from helpdesk.survey_policy import writeback_blocker
from helpdesk.tasks import new_task
from helpdesk.tickets import DEFAULT_SLA_HOURS, open_ticket

INVITE_KIND = "survey-invite"
WRITEBACK_KIND = "survey-writeback"
FOLLOW_UP_KIND = "follow-up"
DATA = Path(__file__).resolve().parent / "data"
QUESTIONNAIRE_FILE = DATA / "questionnaire-csat.json"


# --- tokens ------------------------------------------------------------------------------


def hash_token(token: str) -> str:
    """SHA-256 of a link token: the only form in which a token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_link_token() -> tuple[str, str]:
    """A random link token (256 bits, URL-safe) and its hash."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def survey_link(app: Flask, token: str) -> str:
    base = app.config.get("SURVEY_PUBLIC_URL") or app.config.get("PUBLIC_URL")
    if not base:
        raise RuntimeError(
            "CAREDESK_SURVEY_PUBLIC_URL (or CAREDESK_PUBLIC_URL) is not set: survey links "
            "sent by jobs need an address patients can open."
        )
    return f"{str(base).rstrip('/')}/s/{token}"


# --- requesting a survey (cron sweep, sidebar) -------------------------------------------


def request_survey(
    session: Session,
    app: Flask,
    *,
    registration_id: int,
    appointment_ref: str,
    patient_ref: str | None,
    now: dt.datetime,
    fulfilled_at: dt.datetime | None = None,
    requested_by: str | None = None,
    launch_session_id: str | None = None,
) -> CareTask | None:
    """Queue the invitation job for a fulfilled appointment; None if it was already queued.

    Due after the configured delay (quiet hours are applied by the job, which knows the
    patient's time zone). The caller commits, then ``jobs.outbox.dispatch([task.id])``.
    """
    delay = dt.timedelta(minutes=int(app.config["SURVEY_DELAY_MINUTES"]))
    due = max((fulfilled_at or now) + delay, now)
    return new_task(
        session,
        registration_id=registration_id,
        kind=INVITE_KIND,
        patient_ref=patient_ref,
        payload={"appointment_ref": appointment_ref},
        due_at=due,
        dedupe_key=f"survey-invite:{registration_id}:{appointment_ref}",
        launch_session_id=launch_session_id,
        created_by=requested_by,
    )


# --- recording an answer (the web edge calls this) --------------------------------------


class NotAnswerable(Exception):
    """The invitation was answered (or expired) between the page load and the POST."""


def writeback_key(response_id: int) -> str:
    """The dedupe key of an answer's write-back task: one task per answer."""
    return f"survey-writeback:{response_id}"


def record_answer(
    session: Session,
    invite: SurveyInvite,
    answers: mapper.Answers,
    *,
    now: dt.datetime,
) -> tuple[SurveyResponse, list[CareTask]]:
    """Store the answer and queue the work that follows it, in the caller's transaction.

    Returns the response and the CareTasks whose jobs to enqueue after the caller's
    commit (``jobs.outbox.prepare`` before it, ``enqueue`` after). Single use is enforced
    by one conditional UPDATE, so two simultaneous POSTs of the same link record one
    answer.

    What follows an answer is one ``survey-writeback`` task: its job opens service
    recovery first (``open_recovery``: a low score's ticket and follow-up call, once) and
    then writes the QuestionnaireResponse. The patient's request stores the answer and
    nothing more, so a burst of answers costs the store little; the ticket appears when
    the job runs, seconds later. An EHR that cannot take the write still gets the task
    when the answer needs recovery (the job marks the write-back "not supported").
    """
    claimed = session.execute(
        update(SurveyInvite)
        .where(
            SurveyInvite.id == invite.id,
            SurveyInvite.status == "sent",
            SurveyInvite.expires_at > now,
        )
        .values(status="answered", answered_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        raise NotAnswerable(invite.id)
    response = SurveyResponse(
        invite_id=invite.id,
        answers=answers.to_json(),
        csat=answers.csat,
        nps=answers.nps,
        comment=answers.comment,
        contact_ok=answers.contact_ok,
        submitted_at=now,
    )
    reg = session.get(EhrRegistration, invite.registration_id)
    blocker = writeback_blocker(reg) if reg is not None else "The EHR is no longer registered."
    if blocker:
        response.writeback_status = "not-supported"
        response.writeback_error = blocker
    session.add(response)
    session.flush()
    if blocker and not mapper.needs_recovery(answers.csat, answers.nps):
        return response, []
    task = new_task(
        session,
        registration_id=invite.registration_id,
        kind=WRITEBACK_KIND,
        patient_ref=invite.patient_ref,
        payload={"response_id": response.id},
        dedupe_key=writeback_key(response.id),
        new_key=True,  # the response was made just now
    )
    session.flush()  # the ids are what the jobs carry
    return response, [] if task is None else [task]


class Recovery(NamedTuple):
    """What ``open_recovery`` opened: the ticket, and the follow-up call when the patient
    agreed to be contacted."""

    ticket: Ticket
    follow_up: CareTask | None


def open_recovery(
    session: Session,
    invite: SurveyInvite,
    response: SurveyResponse,
    *,
    sla: Mapping[str, float] = DEFAULT_SLA_HOURS,
) -> Recovery | None:
    """Service recovery for an unhappy answer (CSAT <= 2 or NPS <= 6): a high-priority
    ``feedback`` ticket linked to the response and, when the patient agreed to be
    contacted, a follow-up call task. Once per answer: nothing is opened when the answer
    needs none or its ticket exists (a retried or repeated write-back job), and the
    unique ticket-per-response index refuses a second one from a concurrent run. The SLA
    clock starts when the patient answered. Returns what was opened (None: nothing); the
    caller commits, then dispatches the follow-up."""
    if not mapper.needs_recovery(response.csat, response.nps):
        return None
    opened = session.scalar(
        select(Ticket.id).where(Ticket.survey_response_id == response.id).limit(1)
    )
    if opened is not None:
        return None
    scores = []
    if response.csat is not None:
        scores.append(f"CSAT {response.csat}/5")
    if response.nps is not None:
        scores.append(f"NPS {response.nps}/10")
    visit = invite.visit_at.date().isoformat() if invite.visit_at else "a recent visit"
    consent = (
        "The patient agreed to be contacted."
        if response.contact_ok
        else "The patient did not agree to be contacted: do not call about this survey."
    )
    ticket = open_ticket(
        session,
        registration_id=invite.registration_id,
        patient_ref=invite.patient_ref,
        subject=f"Low satisfaction after {visit} ({', '.join(scores)})",
        description=(
            f"Survey answer at {invite.clinic_name or 'the clinic'}"
            f"{' with ' + invite.practitioner_name if invite.practitioner_name else ''}. "
            f"{consent} See the survey response for the patient's comment."
        ),
        priority="high",
        category="feedback",
        source="survey",
        survey_response_id=response.id,
        sla=sla,
        now=response.submitted_at,
    )
    if not response.contact_ok:
        return Recovery(ticket, None)
    task = new_task(
        session,
        registration_id=invite.registration_id,
        kind=FOLLOW_UP_KIND,
        patient_ref=invite.patient_ref,
        payload={
            "ticket_id": ticket.id,
            "survey_response_id": response.id,
            "reason": "survey-recovery",
            "channel": "phone",
        },
        dedupe_key=f"survey-recovery:{response.id}",
        created_by="survey",
    )
    session.flush()  # the id is what the job carries
    return Recovery(ticket, task)


# --- the Questionnaire and the QuestionnaireResponse --------------------------------------


@cache
def questionnaire() -> dict[str, Any]:
    """CareDesk's CSAT Questionnaire (package data; `caredesk survey publish` puts it in
    the EHR). Cached: callers must not change it."""
    data: dict[str, Any] = json.loads(QUESTIONNAIRE_FILE.read_text(encoding="utf-8"))
    return data


def build_questionnaire_response(
    response: SurveyResponse, invite: SurveyInvite, *, identifier_system: str
) -> dict[str, Any]:
    """The QuestionnaireResponse for a stored answer, validated as FHIR R4B."""
    resource = mapper.to_questionnaire_response(
        response.answers,
        questionnaire=questionnaire(),
        identifier_system=identifier_system,
        invite_id=invite.id,
        patient_ref=invite.patient_ref,
        encounter_ref=invite.encounter_ref,
        authored=response.submitted_at,
        language=invite.language,
    )
    # A validation error here is our bug, not the EHR's: let it fail the job loudly.
    QuestionnaireResponse.model_validate(resource)
    return resource


# --- what the sidebar and the exports show ------------------------------------------------


def latest_for_patient(
    session: Session, scope: PatientScope, patient_ref: str
) -> dict[str, Any] | None:
    """The patient's most recent survey answer, for the sidebar; None if never answered.
    403 (``OtherPatient``) when ``scope`` may not see the patient."""
    scope.check(patient_ref)
    row = session.execute(
        select(SurveyResponse, SurveyInvite)
        .join(SurveyInvite, SurveyInvite.id == SurveyResponse.invite_id)
        .where(
            *scope.where(SurveyInvite.registration_id, SurveyInvite.patient_ref),
            SurveyInvite.patient_ref == patient_ref,
        )
        .order_by(SurveyResponse.submitted_at.desc(), SurveyResponse.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    response, invite = row
    ticket_id = session.scalars(
        select(Ticket.id).where(Ticket.survey_response_id == response.id).limit(1)
    ).first()
    return {
        "response_id": response.id,
        "invite_id": invite.id,
        "submitted_at": response.submitted_at,
        "visit_at": invite.visit_at,
        "clinic": invite.clinic_name,
        "practitioner": invite.practitioner_name,
        "csat": response.csat,
        "nps": response.nps,
        "comment": response.comment,
        "contact_ok": response.contact_ok,
        "needs_recovery": mapper.needs_recovery(response.csat, response.nps),
        "ticket_id": ticket_id,
        "writeback_status": response.writeback_status,
        "fhir_id": response.fhir_id,
    }


def sent_invitations(
    session: Session, scope: PatientScope
) -> list[tuple[SurveyInvite, SurveyResponse | None]]:
    """Invitations that went out (answered and expired included), each with its answer
    when there is one: what the CSAT report counts."""
    query = (
        select(SurveyInvite, SurveyResponse)
        .outerjoin(SurveyResponse, SurveyResponse.invite_id == SurveyInvite.id)
        .where(
            *scope.where(SurveyInvite.registration_id, SurveyInvite.patient_ref),
            SurveyInvite.sent_at.is_not(None),
            SurveyInvite.status.in_(("sent", "answered", "expired")),
        )
    )
    return [(invite, response) for invite, response in session.execute(query)]


def export_rows(
    session: Session, scope: PatientScope, *, status: str | None
) -> list[dict[str, Any]]:
    """Stored answers for export (e.g. the ones an EHR could not take), oldest first."""
    query = (
        select(SurveyResponse, SurveyInvite)
        .join(SurveyInvite, SurveyInvite.id == SurveyResponse.invite_id)
        .where(*scope.where(SurveyInvite.registration_id, SurveyInvite.patient_ref))
        .order_by(SurveyResponse.submitted_at, SurveyResponse.id)
    )
    if status:
        query = query.where(SurveyResponse.writeback_status == status)
    rows = []
    for response, invite in session.execute(query):
        rows.append(
            {
                "invitation_id": invite.id,
                "patient": invite.patient_ref,
                "encounter": invite.encounter_ref or "",
                "appointment": invite.appointment_ref or "",
                "visit_at": invite.visit_at.isoformat() if invite.visit_at else "",
                "clinic": invite.clinic_name or "",
                "practitioner": invite.practitioner_name or "",
                "submitted_at": response.submitted_at.isoformat(),
                "csat": "" if response.csat is None else response.csat,
                "nps": "" if response.nps is None else response.nps,
                "contact_ok": ""
                if response.contact_ok is None
                else str(response.contact_ok).lower(),
                "comment": response.comment or "",
                "writeback_status": response.writeback_status,
                "fhir_id": response.fhir_id or "",
            }
        )
    return rows
