"""Patient satisfaction surveys: invitations, answers, write-back, service recovery.

Two job kinds (``jobs.tasks`` runs them from ``CareTask`` rows):

- ``survey-invite``: payload ``{"appointment_ref"}`` (first run: reads the visit from the
  EHR, applies the fatigue/opt-out/sampling rules and quiet hours, creates the
  ``SurveyInvite``) or ``{"invite_id"}`` (a send that had to wait for the morning).
- ``survey-writeback``: payload ``{"response_id"}``: one QuestionnaireResponse per answer,
  never two: search by identifier first, then create with ``If-None-Exist``.

Everything else here is called by the web edge (``plugin.survey``, the sidebar): requesting
a survey, recording an answer (and opening a recovery ticket), the sidebar's summary.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

# Imported with the module, not per call: the worker imports handler modules before it
# forks, and building the R4B models was the costliest part of each write-back.
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from flask import Flask
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fhir_mappers import survey as mapper
from fhir_mappers.fhirutil import parse_datetime, reference_of, zone
from jobs import outbox
from jobs.tasks import handler
from plugin.models import CareTask, EhrRegistration, SurveyInvite, SurveyResponse, Ticket
from smart_launch.errors import FatalFhirError
from smart_launch.fhir import parallel

log = logging.getLogger("caredesk.jobs.survey")

INVITE_KIND = "survey-invite"
WRITEBACK_KIND = "survey-writeback"
FOLLOW_UP_KIND = "follow-up"
MESSAGE_TEMPLATE = "survey-invite"
TIMEZONE_EXT = "http://hl7.org/fhir/StructureDefinition/timezone"
CONTACT_RESTRICTION_URL = "https://caredesk.example/fhir/StructureDefinition/contact-restriction"
# Restriction codes that mean "no surveys": an explicit survey opt-out, or no contact at all.
SURVEY_OPT_OUT_CODES = frozenset({"no-survey", "no-contact"})
# An invitation whose send time is this close is sent now rather than rescheduled.
SEND_SLACK = dt.timedelta(minutes=1)
# The invitation was sent (or could have been answered): these count against fatigue.
_SENT_STATUSES = ("sent", "answered", "expired")
_WRITE_BACK_FEATURE = "survey write-back"


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


# --- invitation policy (pure) -----------------------------------------------------------


def parse_quiet_hours(spec: str | None) -> tuple[dt.time, dt.time] | None:
    """``"21:00-08:00"`` -> (21:00, 08:00); empty -> None. Raises ValueError on garbage."""
    if not spec or not str(spec).strip():
        return None
    start_text, sep, end_text = str(spec).partition("-")
    if not sep:
        raise ValueError(f"quiet hours must look like 21:00-08:00, not {spec!r}")
    start, end = dt.time.fromisoformat(start_text.strip()), dt.time.fromisoformat(end_text.strip())
    return (start, end) if start != end else None


def _is_quiet(local: dt.datetime, quiet: tuple[dt.time, dt.time]) -> bool:
    start, end = quiet
    t = local.timetz().replace(tzinfo=None)
    if start < end:
        return start <= t < end
    return t >= start or t < end  # the window spans midnight


def send_time(
    earliest: dt.datetime, tz: dt.tzinfo, quiet: tuple[dt.time, dt.time] | None
) -> dt.datetime:
    """The first moment at or after ``earliest`` outside quiet hours in ``tz`` (aware UTC).

    Computed on the local wall clock, so a quiet window ending at 08:00 ends at 08:00 on
    both sides of a daylight-saving change.
    """
    if earliest.tzinfo is None:
        raise ValueError("earliest must be aware")
    local = earliest.astimezone(tz)
    if quiet is None or not _is_quiet(local, quiet):
        return earliest.astimezone(dt.UTC)
    end = quiet[1]
    candidate = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    if candidate <= local:
        candidate = candidate + dt.timedelta(days=1)
        candidate = candidate.replace(tzinfo=None).replace(tzinfo=tz)  # same wall clock
    return candidate.astimezone(dt.UTC)


def in_sample(appointment_ref: str, percent: int) -> bool:
    """Stable sampling: the same visit is always in or always out, across retries."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    digest = hashlib.sha256(appointment_ref.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 10_000 < percent * 100


def restriction_codes(patient: Mapping[str, Any]) -> frozenset[str]:
    found: set[str] = set()
    for ext in patient.get("extension") or []:
        if isinstance(ext, Mapping) and ext.get("url") == CONTACT_RESTRICTION_URL:
            code = (ext.get("valueCoding") or {}).get("code")
            if isinstance(code, str):
                found.add(code)
    return frozenset(found)


def preferred_language(patient: Mapping[str, Any]) -> str | None:
    comms = [c for c in patient.get("communication") or [] if isinstance(c, Mapping)]
    chosen = next((c for c in comms if c.get("preferred") is True), comms[0] if comms else None)
    if chosen is None:
        return None
    for coding in (chosen.get("language") or {}).get("coding") or []:
        code = coding.get("code") if isinstance(coding, Mapping) else None
        if isinstance(code, str) and code:
            return code
    return None


def _ext_zone(resource: Mapping[str, Any] | None) -> ZoneInfo | None:
    for ext in (resource or {}).get("extension") or []:
        if isinstance(ext, Mapping) and ext.get("url") == TIMEZONE_EXT:
            return zone(ext.get("valueCode"))
    return None


def fatigued(
    session: Session,
    *,
    registration_id: int,
    patient_ref: str,
    now: dt.datetime,
    days: int,
    exclude_id: str | None = None,
) -> bool:
    """True when the patient was already invited within the fatigue window."""
    query = select(SurveyInvite.id).where(
        SurveyInvite.registration_id == registration_id,
        SurveyInvite.patient_ref == patient_ref,
        SurveyInvite.status.in_(_SENT_STATUSES),
        SurveyInvite.sent_at >= now - dt.timedelta(days=days),
    )
    if exclude_id:
        query = query.where(SurveyInvite.id != exclude_id)
    return session.scalars(query.limit(1)).first() is not None


# --- write-back capability --------------------------------------------------------------


def writeback_blocker(reg: EhrRegistration) -> str | None:
    """Why this EHR cannot take QuestionnaireResponse writes, or None when it can (or
    when ``caredesk ehr check`` has not run: then the write is tried and a refusal is
    recorded as not supported)."""
    if not reg.allow_writes:
        return "This EHR is registered read-only."
    feature = ((reg.capabilities or {}).get("features") or {}).get(_WRITE_BACK_FEATURE)
    if isinstance(feature, Mapping) and feature.get("works") is False:
        missing = ", ".join(str(b) for b in feature.get("blocked_by") or []) or "capabilities"
        return f"The EHR check found no support for: {missing}."
    return None


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
    patient's time zone). The caller commits, then ``outbox.dispatch([task.id])``.
    """
    delay = dt.timedelta(minutes=int(app.config["SURVEY_DELAY_MINUTES"]))
    due = max((fulfilled_at or now) + delay, now)
    return outbox.create_task(
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


# --- the invitation job -----------------------------------------------------------------


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
    for part in appointment.get("participant") or []:
        actor = part.get("actor") if isinstance(part, Mapping) else None
        ref = reference_of(actor)
        display = actor.get("display") if isinstance(actor, Mapping) else None
        if ref is not None and ref.type and ref.type not in refs:
            refs[ref.type] = (ref.key, display if isinstance(display, str) else None)
    patient = refs.get("Patient", (None, None))[0]
    if patient is None:
        raise FatalFhirError("The appointment names no patient; no survey can be sent.")
    end = parse_datetime(appointment.get("end"), tz) or parse_datetime(appointment.get("start"), tz)
    location = refs.get("Location", (None, None))
    practitioner = refs.get("Practitioner", (None, None))
    return _Visit(
        appointment_ref=f"Appointment/{appointment.get('id')}",
        patient_ref=patient,
        status=str(appointment.get("status") or ""),
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
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Encounter" and resource.get("id"):
            return f"Encounter/{resource['id']}"
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
    if visit.status != "fulfilled":
        task.status_note = f"survey not sent: the appointment is {visit.status or 'unknown'}"
        return
    # Location, patient and encounter depend only on the appointment: one wave, not three
    # round trips in a row.
    location, patient, encounter_ref = parallel(
        [
            lambda: _read(client, visit.location_ref),
            lambda: client.read("Patient", visit.patient_ref.split("/", 1)[1]),
            lambda: _encounter_for(client, appointment_ref),
        ],
        max_workers=3,
    )
    for result in (location, patient, encounter_ref):
        if isinstance(result, Exception):
            raise result  # the patient read failed (the others return None on refusal)
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
        practitioner_name=visit.practitioner_name,
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
        waiting = outbox.create_task(
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
    from jobs.outbound import NoReachableChannel

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
        "expires": invite.expires_at.astimezone(tz).date().isoformat(),
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
    except NoReachableChannel:
        invite.token_hash = None
        invite.sent_at = None
        invite.expires_at = None
        _skip(invite, task, "unreachable")
        return
    invite.channel = result.channel
    task.fhir_refs = {**(task.fhir_refs or {}), "survey_invite": invite.id}


# --- recording an answer (the web edge calls this) --------------------------------------


class NotAnswerable(Exception):
    """The invitation was answered (or expired) between the page load and the POST."""


def record_answer(
    session: Session,
    invite: SurveyInvite,
    answers: mapper.Answers,
    *,
    now: dt.datetime,
) -> tuple[SurveyResponse, list[int]]:
    """Store the answer, open service recovery if needed, queue the write-back.

    Returns the response and the ids of the CareTasks to dispatch after the caller's
    commit. Single use is enforced by one conditional UPDATE, so two simultaneous POSTs
    of the same link record one answer.
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
    session.add(response)
    session.flush()
    task_ids: list[int] = []
    reg = session.get(EhrRegistration, invite.registration_id)
    blocker = writeback_blocker(reg) if reg is not None else "The EHR is no longer registered."
    if blocker:
        response.writeback_status = "not-supported"
        response.writeback_error = blocker
    else:
        task = outbox.create_task(
            session,
            registration_id=invite.registration_id,
            kind=WRITEBACK_KIND,
            patient_ref=invite.patient_ref,
            payload={"response_id": response.id},
            dedupe_key=f"survey-writeback:{response.id}",
        )
        if task is not None:
            session.flush()  # the id is what gets dispatched
            task_ids.append(task.id)
    if mapper.needs_recovery(answers.csat, answers.nps):
        task_ids.extend(_open_recovery(session, invite, response))
    return response, task_ids


def _open_recovery(session: Session, invite: SurveyInvite, response: SurveyResponse) -> list[int]:
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
    ticket = Ticket(
        registration_id=invite.registration_id,
        patient_ref=invite.patient_ref,
        subject=f"Low satisfaction after {visit} ({', '.join(scores)})",
        description=(
            f"Survey answer at {invite.clinic_name or 'the clinic'}"
            f"{' with ' + invite.practitioner_name if invite.practitioner_name else ''}. "
            f"{consent} See the survey response for the patient's comment."
        ),
        status="open",
        priority="high",
        category="feedback",
        source="survey",
        survey_response_id=response.id,
    )
    session.add(ticket)
    session.flush()
    if not response.contact_ok:
        return []
    task = outbox.create_task(
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
    if task is None:
        return []
    session.flush()
    return [task.id]


# --- the write-back job -----------------------------------------------------------------


@cache
def questionnaire() -> dict[str, Any]:
    from fixtures.population import load_questionnaire

    return load_questionnaire()


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


def _id_from(body: Mapping[str, Any]) -> str | None:
    if isinstance(body.get("id"), str):
        return str(body["id"])
    location = body.get("location")
    if isinstance(location, str) and "/QuestionnaireResponse/" in location:
        return location.split("/QuestionnaireResponse/", 1)[1].split("/")[0]
    return None


@handler(WRITEBACK_KIND)
def write_back(task: CareTask, ctx: Any) -> None:
    """Create the QuestionnaireResponse for one answer, exactly once."""
    session: Session = ctx.session
    response = session.get(SurveyResponse, int(task.payload["response_id"]))
    if response is None:
        raise FatalFhirError("The survey response no longer exists.")
    if response.writeback_status == "written" and response.fhir_id:
        return
    invite = session.get(SurveyInvite, response.invite_id)
    assert invite is not None  # a foreign key
    blocker = writeback_blocker(ctx.registration)
    if blocker:
        _not_supported(response, task, blocker)
        return
    system = str(ctx.app.config["SURVEY_IDENTIFIER_SYSTEM"])
    resource = build_questionnaire_response(response, invite, identifier_system=system)
    query = f"{system}|{invite.id}"
    client = ctx.fhir()
    try:
        # Search first: EHRs without conditional create (Epic) ignore If-None-Exist, and a
        # retry after a timeout whose create did succeed must find it, not add a second.
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
    response.writeback_status = "written"
    response.fhir_id = fhir_id
    response.written_at = ctx.now
    response.writeback_error = None
    task.fhir_refs = {
        **(task.fhir_refs or {}),
        "QuestionnaireResponse": f"QuestionnaireResponse/{fhir_id}" if fhir_id else None,
    }


def _is_auth_problem(exc: FatalFhirError) -> bool:
    # A 403 for a missing scope is fixable by granting it; a 405 means the server has no
    # such interaction at all. Only the latter is "not supported".
    return exc.status == 403 and "scope" in exc.message.lower()


def _not_supported(response: SurveyResponse, task: CareTask, reason: str) -> None:
    response.writeback_status = "not-supported"
    response.writeback_error = reason
    task.status_note = "the EHR cannot take QuestionnaireResponse writes: kept in CareDesk"


# --- what the sidebar and the reports show -----------------------------------------------


def latest_for_patient(
    session: Session, registration_id: int, patient_ref: str
) -> dict[str, Any] | None:
    """The patient's most recent survey answer, for the sidebar; None if never answered."""
    row = session.execute(
        select(SurveyResponse, SurveyInvite)
        .join(SurveyInvite, SurveyInvite.id == SurveyResponse.invite_id)
        .where(
            SurveyInvite.registration_id == registration_id,
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
