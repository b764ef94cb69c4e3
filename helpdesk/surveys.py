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
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, NamedTuple, TypedDict, cast

from flask import Flask
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    String,
    Table,
    bindparam,
    func,
    insert,
    literal,
    null,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session

from fhir_mappers import survey as mapper
from helpdesk import stamps
from helpdesk.access import PatientScope
from helpdesk.models import CareTask, EhrRegistration, SurveyInvite, SurveyResponse, Ticket
from helpdesk.survey_policy import blocker_of, write_back_entry
from helpdesk.tasks import insert_task, job_id_sql, new_task, queued_task_values
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


# --- the public page: an invitation by its link token, recording an answer ---------------
#
# A burst of patients answering at once is this module's hot path, so both run a few
# Core statements built once (a statement object keeps its cache key: executing it again
# skips SQLAlchemy's statement construction) instead of the ORM's identity map and unit
# of work. tests/survey/test_answer_costs.py counts the statements.

_invite = cast(Table, SurveyInvite.__table__)
_registration = cast(Table, EhrRegistration.__table__)
_response = cast(Table, SurveyResponse.__table__)
_task = cast(Table, CareTask.__table__)


class LinkInvite(NamedTuple):
    """What the public page needs of an invitation, and whether its EHR takes the
    answer back (``survey_policy.writeback_blocker``), read in one query."""

    id: str
    registration_id: int
    patient_ref: str
    language: str
    timezone: str | None
    status: str
    expires_at: dt.datetime | None
    visit_at: dt.datetime | None
    clinic_name: str | None
    writeback_blocker: str | None


_BY_TOKEN = (
    select(
        _invite.c.id,
        _invite.c.registration_id,
        _invite.c.patient_ref,
        _invite.c.language,
        _invite.c.timezone,
        _invite.c.status,
        _invite.c.expires_at,
        _invite.c.visit_at,
        _invite.c.clinic_name,
        _registration.c.allow_writes,
        # Only the write-back entry of the check report, not the whole report.
        write_back_entry(_registration.c.capabilities),
    )
    .outerjoin(_registration, _registration.c.id == _invite.c.registration_id)
    .where(_invite.c.token_hash == bindparam("token_hash"))
)


def find_by_token(session: Session, token: str) -> LinkInvite | None:
    """The invitation of a link token (one indexed look-up by the token's hash); None for
    an unknown or absurd token."""
    if not token or len(token) > 128:
        return None
    row = session.connection().execute(_BY_TOKEN, {"token_hash": hash_token(token)}).first()
    if row is None:
        return None
    return LinkInvite(
        id=row.id,
        registration_id=row.registration_id,
        patient_ref=row.patient_ref,
        language=row.language,
        timezone=row.timezone,
        status=row.status,
        expires_at=row.expires_at,
        visit_at=row.visit_at,
        clinic_name=row.clinic_name,
        writeback_blocker=(
            "The EHR is no longer registered."
            if row.allow_writes is None
            else blocker_of(bool(row.allow_writes), row.write_back)
        ),
    )


class NotAnswerable(Exception):
    """The invitation was answered (or expired) between the page load and the POST."""


def writeback_key(response_id: int) -> str:
    """The dedupe key of an answer's write-back task: one task per answer."""
    return f"survey-writeback:{response_id}"


def _writeback_key_sql(response_id: ColumnElement[int]) -> ColumnElement[str]:
    # writeback_key in SQL, for the answer's row id chosen in the same statement.
    return literal("survey-writeback:", String) + response_id.cast(String)


class Answered(NamedTuple):
    """A recorded answer: its row, and the ``survey-writeback`` task (with the job id of
    its first attempt written on it) whose job to enqueue after the caller's commit (None:
    nothing follows the answer)."""

    response_id: int
    writeback_task_id: int | None


_CLAIM = (
    update(_invite)
    .where(
        _invite.c.id == bindparam("invite_id"),
        _invite.c.status == "sent",
        _invite.c.expires_at > bindparam("now"),
    )
    .values(status="answered", answered_at=bindparam("now"), updated_at=bindparam("now"))
)
_INSERT_RESPONSE = insert(_response).returning(_response.c.id)
# The columns record_answer gives an answer and a queued task (the statement names them).
_RESPONSE_COLUMNS = (
    "invite_id",
    "answers",
    "csat",
    "nps",
    "comment",
    "contact_ok",
    "submitted_at",
    "writeback_status",
    "writeback_error",
)
_TASK_COLUMNS = tuple(queued_task_values(registration_id=0, kind="", patient_ref=None))


def _param(prefix: str, column: ColumnElement[Any]) -> BindParameter[Any]:
    # Prefixed: SQLAlchemy adds a parameter named like a column of the UPDATE in the first
    # CTE to its SET clause (survey_invite has registration_id, status, created_at, ...).
    return bindparam(f"{prefix}_{column.name}", type_=column.type)


def _prefixed(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{name}": value for name, value in values.items()}


def _record_statement(*, with_task: bool) -> Select[tuple[int, int | None]]:
    """``record_answer``'s three statements and the task's job id as one PostgreSQL
    statement (data-modifying CTEs): the claim, the answer, and (``with_task``) its
    write-back task, whose id the database picks first so that the job id goes in with the
    row. One round trip to the store, not four; no row when the claim found nothing."""
    claimed = _CLAIM.returning(_invite.c.id).cte("claimed")
    response = (
        insert(_response)
        .from_select(
            list(_RESPONSE_COLUMNS),
            select(
                claimed.c.id,
                *(_param("response", _response.c[c]) for c in _RESPONSE_COLUMNS[1:]),
            ),
            include_defaults=False,
        )
        .returning(_response.c.id)
        .cte("response")
    )
    if not with_task:
        return select(response.c.id, null().label("task_id"))
    task_id = func.nextval(func.pg_get_serial_sequence(_task.name, "id"))
    new = select(task_id.label("id"), response.c.id.label("response_id")).cte("new_task")
    task = (
        insert(_task)
        .from_select(
            ["id", "job_id", "payload", "dedupe_key", *_TASK_COLUMNS],
            select(
                new.c.id,
                job_id_sql(new.c.id, 1),
                func.json_build_object("response_id", new.c.response_id),
                _writeback_key_sql(new.c.response_id),
                *(_param("task", _task.c[c]) for c in _TASK_COLUMNS),
            ),
            include_defaults=False,
        )
        .returning(_task.c.id)
        .cte("task")
    )
    return select(response.c.id, task.c.id.label("task_id")).outerjoin(task, true())


_RECORD_WITH_TASK = _record_statement(with_task=True)
_RECORD_ANSWER_ONLY = _record_statement(with_task=False)


def record_answer(
    session: Session,
    invite: LinkInvite,
    answers: mapper.Answers,
    *,
    now: dt.datetime,
) -> Answered:
    """Store the answer and the task that follows it, in the caller's transaction: claim
    the invitation, insert the answer, insert the task with its first job id (one
    statement on PostgreSQL, ``_record_statement``; four on SQLite).

    Single use is enforced by one conditional UPDATE, so two simultaneous POSTs of the
    same link record one answer (the loser gets ``NotAnswerable``).

    What follows an answer is one ``survey-writeback`` task: its job opens service
    recovery first (``open_recovery``: a low score's ticket and follow-up call, once) and
    then writes the QuestionnaireResponse. The patient's request stores the answer and
    nothing more, so a burst of answers costs the store little; the ticket appears when
    the job runs, seconds later. An EHR that cannot take the write still gets the task
    when the answer needs recovery (the job marks the write-back "not supported"); the
    answer is marked so at once.
    """
    blocker = invite.writeback_blocker
    with_task = not blocker or mapper.needs_recovery(answers.csat, answers.nps)
    response = {
        "invite_id": invite.id,
        "answers": answers.to_json(),
        "csat": answers.csat,
        "nps": answers.nps,
        "comment": answers.comment,
        "contact_ok": answers.contact_ok,
        "submitted_at": now,
        "writeback_status": "not-supported" if blocker else "pending",
        "writeback_error": blocker,
    }
    conn = session.connection()
    # Core statements, which the session's flush does not see: the patient's change stamp
    # moves with the commit (``_answer_noted``), so a sidebar showing their invitation
    # shows the answer.
    if conn.dialect.name == "postgresql":
        params = {"now": now, "invite_id": invite.id, **_prefixed("response", response)}
        if with_task:
            task = queued_task_values(
                registration_id=invite.registration_id,
                kind=WRITEBACK_KIND,
                patient_ref=invite.patient_ref,
            )
            params.update(_prefixed("task", task))
        statement = _RECORD_WITH_TASK if with_task else _RECORD_ANSWER_ONLY
        row = conn.execute(statement, params).first()
        if row is None:
            raise NotAnswerable(invite.id)
        _answer_noted(session, invite)
        return Answered(int(row.id), None if row.task_id is None else int(row.task_id))
    claimed = conn.execute(_CLAIM, {"invite_id": invite.id, "now": now})
    if claimed.rowcount != 1:
        raise NotAnswerable(invite.id)
    _answer_noted(session, invite)
    response_id = int(conn.execute(_INSERT_RESPONSE, response).scalar_one())
    if not with_task:
        return Answered(response_id, None)
    task_id = insert_task(
        session,
        registration_id=invite.registration_id,
        kind=WRITEBACK_KIND,
        patient_ref=invite.patient_ref,
        payload={"response_id": response_id},
        dedupe_key=writeback_key(response_id),
    )
    return Answered(response_id, task_id)


def _answer_noted(session: Session, invite: LinkInvite) -> None:
    stamps.note(session, patients=[(invite.registration_id, invite.patient_ref)])


class Recovery(NamedTuple):
    """What ``open_recovery`` opened: the ticket, and the follow-up call when the patient
    agreed to be contacted."""

    ticket: Ticket
    follow_up: CareTask | None


class _About(TypedDict):
    registration_id: int
    patient_ref: str | None


def _about(invite: SurveyInvite) -> _About:
    """Whom the rows that follow an answer are about: the invitation's patient, in its
    registration."""
    return {"registration_id": invite.registration_id, "patient_ref": invite.patient_ref}


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
        **_about(invite),
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
        **_about(invite),
        kind=FOLLOW_UP_KIND,
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
    """The QuestionnaireResponse for a stored answer.

    Not validated with fhir.resources here (6% of a write-back job's instructions, for a
    resource CareDesk builds itself from answers the survey form accepted):
    ``tests/survey/test_writeback_resource.py`` proves that every answer the form can
    accept, in every language, with and without an encounter, builds a valid R4B
    resource. An EHR that refuses it anyway answers 4xx, which fails the job loudly with
    the EHR's OperationOutcome on the row.
    """
    return mapper.questionnaire_response(
        response.answers,
        response_forms(invite.language),
        identifier_system=identifier_system,
        invite_id=invite.id,
        patient_ref=invite.patient_ref,
        encounter_ref=invite.encounter_ref,
        authored=response.submitted_at,
    )


@lru_cache(maxsize=16)
def response_forms(language: str | None) -> mapper.ResponseForms:
    """What every QuestionnaireResponse in ``language`` takes from CareDesk's
    Questionnaire, read once per process and language (reading it twice per write-back
    job was a twentieth of the job's instructions)."""
    return mapper.response_forms(questionnaire(), language)


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
