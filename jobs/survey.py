"""The survey jobs: ``survey-invite`` and ``survey-writeback`` (``jobs.tasks`` runs them
from ``CareTask`` rows).

- ``survey-invite``: payload ``{"appointment_ref"}`` (first run: reads the visit from the
  EHR, applies the fatigue/opt-out/sampling rules and quiet hours, creates the
  ``SurveyInvite``) or ``{"invite_id"}`` (a send that had to wait for the morning).
- ``survey-writeback``: payload ``{"response_id"}``: what follows an answer. Service
  recovery for a low score first (a ticket and, with consent, a follow-up call; once per
  answer, committed before the EHR is called), then one QuestionnaireResponse per answer,
  never two: search by identifier first, then create with ``If-None-Exist``.

The rules they apply are ``helpdesk.survey_policy``; the rows and the resource they write
are ``helpdesk.surveys``.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from zoneinfo import ZoneInfo

from flask import Flask
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session, joinedload, load_only

from fhir_mappers import survey as mapper
from fhir_mappers.appointment import patients_of
from fhir_mappers.bundle import search_entries
from fhir_mappers.contact import preferred_language, restrictions_of
from fhir_mappers.fhirutil import (
    get_list,
    get_str,
    parse_datetime,
    reference_of,
    resource_id,
    resource_zone,
    zone,
)
from fhir_mappers.names import resource_name
from helpdesk import i18n, stamps
from helpdesk.models import CareTask, EhrRegistration, SigningKey, SurveyInvite, SurveyResponse
from helpdesk.survey_policy import (
    SEND_SLACK,
    SURVEY_OPT_OUT_CODES,
    blocker_of,
    fatigued,
    in_sample,
    parse_quiet_hours,
    send_time,
    write_back_entry,
)
from helpdesk.surveys import (
    INVITE_KIND,
    WRITEBACK_KIND,
    build_questionnaire_response,
    new_link_token,
    open_recovery,
    questionnaire,
    survey_link,
    writeback_key,
)
from helpdesk.tasks import new_task
from helpdesk.tickets import sla_hours
from jobs import outbox
from jobs.errors import TaskError
from jobs.tasks import handler
from smart_launch.errors import FatalFhirError
from smart_launch.fhir import parallel

log = logging.getLogger("caredesk.jobs.survey")

MESSAGE_TEMPLATE = "survey-invite"
TIMEZONE_EXT = "http://hl7.org/fhir/StructureDefinition/timezone"


def restriction_codes(patient: Mapping[str, Any]) -> frozenset[str]:
    # One reading of contact restrictions (valueCode or valueCoding), the sidebar's.
    return frozenset(restrictions_of(patient))


def _ext_zone(resource: object) -> ZoneInfo | None:
    # One reading of the timezone extension (fhir_mappers), the sidebar's.
    return resource_zone(resource)


@dataclass(frozen=True)
class _Visit:
    appointment_ref: str
    patient_ref: str
    status: str
    end: dt.datetime | None
    location_ref: str | None
    location_name: str | None
    practitioner_ref: str | None
    practitioner_name: str | None


def _visit(appointment: Mapping[str, Any], tz: dt.tzinfo) -> _Visit:
    refs: dict[str, tuple[str | None, str | None]] = {}
    for part in get_list(appointment, "participant"):
        actor = part.get("actor")
        ref = reference_of(actor)
        display = actor.get("display") if isinstance(actor, Mapping) else None
        if ref is not None and ref.type and ref.type not in refs:
            refs[ref.type] = (ref.key, display if isinstance(display, str) else None)
    patient = refs.get("Patient", (None, None))[0]
    if patient is None:
        raise FatalFhirError("The appointment names no patient; no survey can be sent.")
    end = parse_datetime(get_str(appointment, "end"), tz) or parse_datetime(
        get_str(appointment, "start"), tz
    )
    location = refs.get("Location", (None, None))
    practitioner = refs.get("Practitioner", (None, None))
    return _Visit(
        appointment_ref=f"Appointment/{resource_id(appointment)}",
        patient_ref=patient,
        status=get_str(appointment, "status") or "",
        end=end,
        location_ref=location[0],
        location_name=location[1],
        practitioner_ref=practitioner[0],
        practitioner_name=practitioner[1],
    )


def _read(client: Any, ref: str | None) -> dict[str, Any] | None:
    """Read a referenced resource; None when there is no reference or the EHR refuses.

    Only for context that makes the invitation nicer (clinic name, time zone); the
    appointment and the patient themselves are read with errors propagating.
    """
    if not ref or "/" not in ref:
        return None
    rtype, rid = ref.split("/", 1)
    try:
        found: dict[str, Any] = client.read(rtype, rid)
        return found
    except FatalFhirError as exc:
        log.info("could not read %s for a survey invitation: HTTP %s", rtype, exc.status)
        return None


def _encounter_for(client: Any, appointment_ref: str) -> str | None:
    try:
        bundle = client.search("Encounter", {"appointment": appointment_ref, "_count": "1"})
    except FatalFhirError as exc:
        log.info("Encounter search by appointment refused: HTTP %s", exc.status)
        return None
    for resource in search_entries(bundle, expect="Encounter")[0]:
        if get_str(resource, "resourceType") == "Encounter" and (rid := resource_id(resource)):
            return f"Encounter/{rid}"
    return None


def _skip(invite: SurveyInvite, task: CareTask, reason: str) -> None:
    invite.status = "skipped"
    invite.skip_reason = reason
    task.status_note = f"survey not sent: {reason}"
    log.info("survey invitation %s skipped: %s", invite.id, reason)


@handler(INVITE_KIND)
def send_invitation(task: CareTask, ctx: Any) -> None:
    """Create (or finish) one survey invitation. See the module docstring."""
    if task.payload.get("invite_id"):
        _send_waiting(task, ctx, str(task.payload["invite_id"]))
    else:
        _first_run(task, ctx, str(task.payload["appointment_ref"]))


def _first_run(task: CareTask, ctx: Any, appointment_ref: str) -> None:
    app: Flask = ctx.app
    session: Session = ctx.session
    now: dt.datetime = ctx.now
    existing = session.scalars(
        select(SurveyInvite).where(
            SurveyInvite.registration_id == task.registration_id,
            SurveyInvite.appointment_ref == appointment_ref,
        )
    ).first()
    if existing is not None:
        return  # an earlier attempt got this far and committed; nothing left to do here
    client = ctx.fhir()
    fallback_tz = ZoneInfo(str(app.config["VIEWER_TIMEZONE"]))
    rtype, rid = appointment_ref.split("/", 1)
    appointment = client.read(rtype, rid)
    visit = _visit(appointment, fallback_tz)
    if task.patient_ref and task.patient_ref not in patients_of(appointment):
        # Asked for one patient (a launch from that patient's chart) about another
        # patient's visit: never invite someone the asker could not see.
        raise TaskError("the visit is not the patient's this survey was asked for; not sent")
    if visit.status != "fulfilled":
        task.status_note = f"survey not sent: the appointment is {visit.status or 'unknown'}"
        return
    # Location, patient, encounter (and the practitioner when the reference carries no
    # display) depend only on the appointment: one wave, not round trips in a row.
    # A real third-party server sent references without display: the CSAT report then
    # grouped by "Practitioner/a9…" unless the name is read from the Practitioner.
    results = parallel(
        [
            lambda: _read(client, visit.location_ref),
            lambda: client.read("Patient", visit.patient_ref.split("/", 1)[1]),
            lambda: _encounter_for(client, appointment_ref),
            lambda: None if visit.practitioner_name else _read(client, visit.practitioner_ref),
        ],
        max_workers=4,
    )
    for result in results:
        if isinstance(result, Exception):
            raise result  # the patient read failed (the others return None on refusal)
    location = cast(dict[str, Any] | None, results[0])
    patient = cast(dict[str, Any], results[1])
    encounter_ref = cast(str | None, results[2])
    practitioner = cast(dict[str, Any] | None, results[3])
    tz = _ext_zone(patient) or _ext_zone(location) or fallback_tz
    if visit.end is not None:
        visit = _visit(appointment, tz)  # re-read a local time without offset in the right zone
    invite = SurveyInvite(
        id=uuid.uuid4().hex,
        registration_id=task.registration_id,
        patient_ref=visit.patient_ref,
        appointment_ref=appointment_ref,
        encounter_ref=encounter_ref,
        location_ref=visit.location_ref,
        practitioner_ref=visit.practitioner_ref,
        clinic_name=(location or {}).get("name") or visit.location_name,
        practitioner_name=visit.practitioner_name
        or (resource_name(practitioner, {}) if practitioner else None),
        language=mapper.pick_language(questionnaire(), preferred_language(patient)),
        timezone=getattr(tz, "key", None),
        visit_at=visit.end,
        status="pending",
    )
    session.add(invite)
    if restriction_codes(patient) & SURVEY_OPT_OUT_CODES:
        _skip(invite, task, "opted-out")
        return
    if not in_sample(appointment_ref, int(app.config["SURVEY_SAMPLE_PERCENT"])):
        _skip(invite, task, "not-sampled")
        return
    days = int(app.config["SURVEY_FATIGUE_DAYS"])
    reg_id, patient_ref = task.registration_id, visit.patient_ref
    if fatigued(session, registration_id=reg_id, patient_ref=patient_ref, now=now, days=days):
        _skip(invite, task, "fatigue")
        return
    delay = dt.timedelta(minutes=int(app.config["SURVEY_DELAY_MINUTES"]))
    earliest = max((visit.end or now) + delay, now)
    when = send_time(earliest, tz, parse_quiet_hours(app.config.get("SURVEY_QUIET_HOURS")))
    invite.send_at = when
    if when > now + SEND_SLACK:
        waiting = new_task(
            session,
            registration_id=task.registration_id,
            kind=INVITE_KIND,
            patient_ref=visit.patient_ref,
            payload={"invite_id": invite.id},
            due_at=when,
            dedupe_key=f"survey-send:{invite.id}",
            launch_session_id=task.launch_session_id,
        )
        task.status_note = "survey invitation waits for the end of quiet hours"
        # The waiting task must exist (committed) before its job is enqueued.
        session.commit()
        if waiting is not None:
            outbox.dispatch([waiting.id], app=app)
        return
    _deliver(invite, task, ctx, patient)


def _send_waiting(task: CareTask, ctx: Any, invite_id: str) -> None:
    session: Session = ctx.session
    invite = session.get(SurveyInvite, invite_id)
    if invite is None or invite.status != "pending":
        return  # already sent (a retry after the commit) or skipped
    app: Flask = ctx.app
    days = int(app.config["SURVEY_FATIGUE_DAYS"])
    if fatigued(
        session,
        registration_id=invite.registration_id,
        patient_ref=invite.patient_ref,
        now=ctx.now,
        days=days,
        exclude_id=invite.id,
    ):
        _skip(invite, task, "fatigue")
        return
    client = ctx.fhir()
    patient = client.read("Patient", invite.patient_ref.split("/", 1)[1])
    if restriction_codes(patient) & SURVEY_OPT_OUT_CODES:
        _skip(invite, task, "opted-out")
        return
    _deliver(invite, task, ctx, patient)


def _deliver(invite: SurveyInvite, task: CareTask, ctx: Any, patient: dict[str, Any]) -> None:
    from jobs.outbound import NoReachableChannel, OptedOut

    app: Flask = ctx.app
    now: dt.datetime = ctx.now
    token, digest = new_link_token()
    days = int(app.config["SURVEY_LINK_DAYS"])
    tz = zone(invite.timezone) or ZoneInfo(str(app.config["VIEWER_TIMEZONE"]))
    # Set before sending: ctx.send commits the message row at once, and the link in that
    # message must already be valid (a retry after the send re-uses the sent message).
    invite.token_hash = digest
    invite.status = "sent"
    invite.sent_at = now
    invite.expires_at = now + dt.timedelta(days=days)
    params: dict[str, Any] = {
        "link": survey_link(app, token),
        "expires": i18n.long_date(invite.expires_at.astimezone(tz).date(), invite.language),
    }
    if invite.clinic_name:
        params["clinic"] = invite.clinic_name
    try:
        result = ctx.send(
            patient=patient,
            channel=None,
            template=MESSAGE_TEMPLATE,
            language=invite.language,
            params=params,
        )
    except NoReachableChannel as exc:
        invite.token_hash = None
        invite.sent_at = None
        invite.expires_at = None
        # A STOP the patient texted is an opt-out like the EHR's no-survey restriction.
        _skip(invite, task, "opted-out" if isinstance(exc, OptedOut) else "unreachable")
        task.status_note = f"survey not sent: {exc}"
        return
    invite.channel = result.channel
    task.fhir_refs = {**(task.fhir_refs or {}), "survey_invite": invite.id}


# --- the write-back job -----------------------------------------------------------------


def _id_from(body: Mapping[str, Any]) -> str | None:
    if isinstance(body.get("id"), str):
        return str(body["id"])
    location = body.get("location")
    if isinstance(location, str) and "/QuestionnaireResponse/" in location:
        return location.split("/QuestionnaireResponse/", 1)[1].split("/")[0]
    return None


# Built once per process, not per job (as jobs.tasks' claim): the answer, its invitation
# and the registration with its signing keys, each with only the columns the write-back
# reads (the answer and the resource it makes, service recovery, the FHIR client), and of
# the registration's check report only its write-back entry. All of them was 61 columns,
# among them the whole report and every key's public JWK as JSON decoded on every job
# (issue 16). A column left out is still read if some path asks for it, in a query of its
# own (tests/jobs/test_job_costs.py counts the queries of a job).
_ANSWER = (
    select(
        SurveyResponse,
        SurveyInvite,
        EhrRegistration,
        write_back_entry(EhrRegistration.capabilities),
    )
    .join(SurveyInvite, SurveyInvite.id == SurveyResponse.invite_id)
    .join(EhrRegistration, EhrRegistration.id == SurveyInvite.registration_id)
    .options(
        load_only(
            SurveyResponse.answers,
            SurveyResponse.csat,
            SurveyResponse.nps,
            SurveyResponse.contact_ok,
            SurveyResponse.submitted_at,
            SurveyResponse.writeback_status,
            SurveyResponse.fhir_id,
        ),
        load_only(
            SurveyInvite.registration_id,
            SurveyInvite.patient_ref,
            SurveyInvite.encounter_ref,
            SurveyInvite.language,
            SurveyInvite.visit_at,
            SurveyInvite.clinic_name,
            SurveyInvite.practitioner_name,
        ),
        # What helpdesk.ehr.to_registration reads, and allow_writes.
        load_only(
            EhrRegistration.iss,
            EhrRegistration.client_id,
            EhrRegistration.client_type,
            EhrRegistration.scopes,
            EhrRegistration.client_secret_enc,
            EhrRegistration.backend_client_id,
            EhrRegistration.backend_scopes,
            EhrRegistration.frame_origins,
            EhrRegistration.allow_writes,
        ),
        joinedload(EhrRegistration.signing_keys).load_only(
            SigningKey.kid, SigningKey.alg, SigningKey.private_key_enc, SigningKey.retired_at
        ),
    )
    .where(SurveyResponse.id == bindparam("response_id"))
)


def _by_answer(row: Any) -> object:
    return row[0]


_RESPONSES = cast(Table, SurveyResponse.__table__)
# The answer written back: its row's UPDATE, which goes with the task's outcome.
_WRITTEN = (
    update(_RESPONSES)
    .where(_RESPONSES.c.id == bindparam("written_response"))
    .values(
        writeback_status="written",
        fhir_id=bindparam("written_fhir_id"),
        written_at=bindparam("written_when", type_=_RESPONSES.c.written_at.type),
        writeback_error=None,
    )
)


@handler(WRITEBACK_KIND)
def write_back(task: CareTask, ctx: Any) -> None:
    """What follows a survey answer: service recovery for a low score, then the
    QuestionnaireResponse in the EHR; each exactly once."""
    session: Session = ctx.session
    # The answer, its invitation and the registration with its signing keys (what the
    # FHIR client needs, found by ``ctx.registration`` in the session) in one query.
    found = (
        session.execute(_ANSWER, {"response_id": int(task.payload["response_id"])})
        # Unique by the answer (the keys' joined rows repeat it): the report's entry is
        # JSON, which Python cannot hash.
        .unique(_by_answer)
        .one_or_none()
    )
    if found is None:
        raise FatalFhirError("The survey response no longer exists.")
    response, invite, registration, write_back_feature = found
    # The answer names no patient; its invitation does: a flush of the answer (a failed
    # or refused write) moves their change stamp, not everyone's.
    stamps.owned(session, response, invite.registration_id, invite.patient_ref)
    # Recovery first, committed before the EHR is asked anything: an EHR that is down,
    # slow or refusing neither delays the ticket nor, on a retry, opens it twice.
    opened = open_recovery(session, invite, response, sla=sla_hours(ctx.app.config))
    if opened is not None:
        pending = outbox.prepare([t for t in (opened.follow_up,) if t is not None], app=ctx.app)
        session.commit()
        outbox.enqueue(pending, app=ctx.app)
    if response.writeback_status == "written" and response.fhir_id:
        return
    # survey_policy.writeback_blocker's answer, from the registration's one entry.
    blocker = blocker_of(registration.allow_writes, write_back_feature)
    if blocker:
        _not_supported(response, task, blocker)
        return
    system = str(ctx.app.config["SURVEY_IDENTIFIER_SYSTEM"])
    resource = build_questionnaire_response(response, invite, identifier_system=system)
    query = f"{system}|{invite.id}"
    client = ctx.fhir()
    try:
        existing: list[dict[str, Any]] = []
        if not _first_write(task, response):
            # Search first: an earlier run may have created the resource and died (or
            # timed out) before it could say so, and EHRs without conditional create
            # (Epic) ignore If-None-Exist.
            found = client.search("QuestionnaireResponse", {"identifier": query})
            existing = [
                e.get("resource") or {}
                for e in found.get("entry") or []
                if (e.get("resource") or {}).get("resourceType") == "QuestionnaireResponse"
            ]
        if existing:
            fhir_id = _id_from(existing[0])
        else:
            _status, body = client.create(resource, if_none_exist=f"identifier={query}")
            fhir_id = _id_from(body)
    except FatalFhirError as exc:
        if exc.status in (403, 405) and not _is_auth_problem(exc):
            _not_supported(response, task, exc.message)
            return
        response.writeback_status = "failed"
        response.writeback_error = exc.message
        # Keep the reason on the row although the task fails (run_task rolls nothing back
        # that is already committed).
        session.commit()
        raise
    # Written with the task's outcome (one statement on PostgreSQL), not flushed apart.
    ctx.write_with_outcome(
        _WRITTEN,
        {"written_response": response.id, "written_fhir_id": fhir_id, "written_when": ctx.now},
        # Its patient's stamp moves (the answer is ``stamps.owned`` by its invitation's).
        rows=(response,),
    )
    task.fhir_refs = {
        **(task.fhir_refs or {}),
        "QuestionnaireResponse": f"QuestionnaireResponse/{fhir_id}" if fhir_id else None,
    }


def _first_write(task: CareTask, response: SurveyResponse) -> bool:
    """The first attempt of the only write-back task of this answer (the unique dedupe
    key ``helpdesk.surveys.record_answer`` gives it): nothing can have been written for
    it yet, so it creates at once and saves the EHR a search round trip."""
    return task.attempts == 1 and task.dedupe_key == writeback_key(response.id)


def _is_auth_problem(exc: FatalFhirError) -> bool:
    # A 403 for a missing scope is fixable by granting it; a 405 means the server has no
    # such interaction at all. Only the latter is "not supported".
    # The EHR's own words (smart_launch keeps them apart from ours) say which it was.
    return exc.status == 403 and "scope" in (exc.ehr_text or "").lower()


def _not_supported(response: SurveyResponse, task: CareTask, reason: str) -> None:
    response.writeback_status = "not-supported"
    response.writeback_error = reason
    task.status_note = "the EHR cannot take QuestionnaireResponse writes: kept in CareDesk"
