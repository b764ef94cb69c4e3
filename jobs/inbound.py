"""Processing an inbound message (task kind ``inbound-message``; payload ``message_id``).

The message row was committed by the webhook or the IMAP poller before this task
existed. Here, in order:

1. an email that answers one of our threads (``In-Reply-To``/``References``, or the
   ``[CD-xxxxxxxx]`` token in its subject) belongs to that thread's ticket and patient;
2. otherwise the sender is looked up in the EHR with backend services
   (``Patient?phone=`` in E.164, ``Patient?email=``): one patient is a match, several or
   none leave the message in the unmatched queue for staff to pick (``helpdesk.messaging``);
3. carrier keywords: STOP records an opt-out (every later send honours it), START lifts
   it, HELP answers with the clinic's contact details;
4. "C" or "R" answering a reminder: C marks the patient's participation ``accepted`` on
   the Appointment where the EHR takes updates (else a task for staff), R opens a
   scheduling ticket with the appointment;
5. anything else goes on the patient's open conversation within the window, or a new
   ticket (routed by the automation rules; acknowledged outside clinic hours).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from fhir_mappers.board import patient_of
from fhir_mappers.fhirutil import parse_datetime
from helpdesk import automation, messaging
from helpdesk.crypto import get_vault
from helpdesk.models import CareTask, InboundMessage, OutboundMessage, Ticket
from helpdesk.tasks import new_task
from helpdesk.tickets import open_ticket, sla_hours
from jobs.context import JobContext
from jobs.errors import TaskError, TemporaryTaskError, split_reference
from jobs.outbound import NoReachableChannel
from jobs.tasks import handler
from smart_launch.errors import FatalFhirError
from smart_launch.fhir import FhirClient

log = logging.getLogger("caredesk.jobs.inbound")

KIND = "inbound-message"
# A "C" answers the last reminder sent within this time; older ones are history.
REPLY_WINDOW = timedelta(days=7)
OPEN_APPOINTMENT = ("booked", "pending", "proposed")
# What a reply to one of CareDesk's own messages is about (the ticket it opens).
REPLY_CATEGORY = {
    "appointment-reminder": "scheduling",
    "insurance-outreach": "insurance",
    "survey-invite": "feedback",
    "follow-up": "clinical-question",
}


def queue_processing(session: Session, message: InboundMessage) -> CareTask | None:
    """The task that processes a stored message (once per message: a retried delivery
    finds it). The caller commits, then dispatches."""
    return new_task(
        session,
        registration_id=message.registration_id,
        kind=KIND,
        patient_ref=None,
        payload={"message_id": message.id},
        dedupe_key=f"inbound:{message.id}",
        max_attempts=5,
    )


@handler(KIND)
def process(task: CareTask, ctx: JobContext) -> None:
    session = ctx.session
    message = session.get(InboundMessage, int(task.payload["message_id"]))
    if message is None:
        raise TaskError("the inbound message no longer exists")
    if message.status != "received":
        return  # an earlier attempt finished it
    vault = get_vault(ctx.app)
    body = vault.decrypt(message.body_enc)
    subject = vault.decrypt_optional(message.subject_enc)
    sender = vault.decrypt(message.sender_enc)
    words = messaging.first_line(body) if message.channel == "email" else body
    message.intent = messaging.classify(words)

    thread = None
    if message.channel == "email":
        thread = messaging.thread_by_headers(
            session, message.registration_id, message.in_reply_to
        ) or messaging.thread_by_token(session, message.registration_id, subject)
    ticket = session.get(Ticket, thread.ticket_id) if thread is not None else None
    if ticket is not None:
        message.patient_ref, message.match = ticket.patient_ref, "thread"
    elif message.match == "staff" and message.patient_ref:
        pass  # staff picked the patient in the unmatched queue: that is the match
    else:
        message.patient_ref, message.match, message.candidates = _match(ctx.fhir(), message, sender)
    task.patient_ref = message.patient_ref

    if message.intent in ("stop", "start"):
        _keyword(session, ctx, message, words)
        return
    if message.intent == "help":
        _help(ctx, message, sender, words)
        return
    if ticket is None and message.patient_ref is None:
        message.status = "unmatched"
        what = "email address" if message.channel == "email" else "number"
        message.outcome = (
            f"Several patients in the EHR have this {what}."
            if message.match == "several"
            else f"No patient in the EHR has this {what}."
        )
        message.result = "unmatched"
        log.info("inbound message %s unmatched (%s)", message.id, message.match)
        return
    if ticket is None and message.intent in ("confirm", "reschedule"):
        reminder = _last_reminder(session, message)
        if reminder is not None and _answer_reminder(ctx, message, reminder, body):
            return
    deliver_to_ticket(ctx, message, body, ticket=ticket)


def _match(
    client: FhirClient, message: InboundMessage, sender: str
) -> tuple[str | None, str, list[str]]:
    """(patient, how, candidates): one patient in the EHR with this phone or email."""
    param = "email" if message.channel == "email" else "phone"
    bundle = client.search("Patient", [(param, sender), ("_elements", "id"), ("_count", "10")])
    ids = sorted(
        {
            str(resource["id"])
            for entry in bundle.get("entry") or []
            if isinstance(entry, dict)
            and isinstance(resource := entry.get("resource"), dict)
            and resource.get("resourceType") == "Patient"
            and resource.get("id")
        }
    )
    refs = [f"Patient/{i}" for i in ids]
    if len(refs) == 1:
        return refs[0], "unique", refs
    return None, "several" if refs else "none", refs


def _keyword(session: Session, ctx: JobContext, message: InboundMessage, words: str) -> None:
    keyword = messaging.one_word(words) or words.strip().upper()[:32]
    if message.intent == "stop":
        messaging.opt_out(
            session,
            messaging.Sender.of(message),
            keyword=keyword,
            message_id=message.id,
            now=ctx.now,
        )
        what = messaging.CHANNEL_WORDS.get(message.channel, message.channel)
        message.outcome = f"{keyword}: CareDesk sends no {what} to this sender until START."
        message.result = "opted-out"
        # The carrier answers STOP itself (Twilio's default handling on long codes): a
        # second confirmation from us would be one message too many.
    else:
        lifted = messaging.opt_in(
            session, messaging.Sender.of(message), keyword=keyword, now=ctx.now
        )
        message.outcome = f"{keyword}: {lifted} opt-out(s) lifted."
        message.result = "opted-in"
    message.status = "processed"
    message.processed_at = ctx.now


def _help(ctx: JobContext, message: InboundMessage, sender: str, body: str) -> None:
    cfg = ctx.app.config
    patient = _patient(ctx, message.patient_ref)
    hours = _rules(ctx.app).hours
    try:
        sent = ctx.send(
            patient=patient,
            channel=message.channel,
            to=sender,
            template="contact-help",
            # AYUDA asks in Spanish; otherwise the patient's language (English when unknown).
            language="es" if messaging.one_word(body) == "AYUDA" else None,
            params={
                "phone": cfg.get("CLINIC_PHONE") or "the number on your appointment card",
                "hours": hours.text if hours else "",
            },
        )
        message.outcome = f"HELP answered by {sent.channel}."
        message.result = "help"
    except NoReachableChannel as exc:
        message.outcome = f"HELP not answered: {exc}"
        message.result = "help"
    message.status = "processed"
    message.processed_at = ctx.now


def _patient(ctx: JobContext, patient_ref: str | None) -> dict[str, Any]:
    if not patient_ref:
        return {}
    rtype, rid = split_reference(patient_ref)
    return ctx.fhir().read(rtype, rid)


def _last_reminder(session: Session, message: InboundMessage) -> OutboundMessage | None:
    return session.scalar(
        select(OutboundMessage)
        .where(
            OutboundMessage.registration_id == message.registration_id,
            OutboundMessage.patient_ref == message.patient_ref,
            OutboundMessage.template == "appointment-reminder",
            OutboundMessage.status == "sent",
            OutboundMessage.created_at >= message.received_at - REPLY_WINDOW,
        )
        .order_by(OutboundMessage.created_at.desc(), OutboundMessage.id.desc())
        .limit(1)
    )


def _answer_reminder(
    ctx: JobContext, message: InboundMessage, reminder: OutboundMessage, body: str
) -> bool:
    """C or R about the reminder's appointment; False when that appointment is no longer
    one to answer (then the words go on a ticket like any message)."""
    session = ctx.session
    reminder_task = session.get(CareTask, reminder.task_id) if reminder.task_id else None
    appointment_ref = str(
        (reminder_task.payload if reminder_task else {}).get("appointment_ref") or ""
    )
    if not appointment_ref:
        return False
    rtype, rid = split_reference(appointment_ref)
    appointment = ctx.fhir().read(rtype, rid)
    zone = ZoneInfo(str(ctx.app.config["VIEWER_TIMEZONE"]))
    start = parse_datetime(appointment.get("start"), zone)
    if appointment.get("status") not in OPEN_APPOINTMENT or start is None or start <= ctx.now:
        return False
    message.appointment_ref = appointment_ref
    when = f"{start.astimezone(zone):%a %b %-d, %H:%M}"
    if message.intent == "confirm":
        message.outcome = _confirm(ctx, message, appointment, when)
        message.status = "processed"
        message.processed_at = ctx.now
        return True
    ticket = open_ticket(
        session,
        registration_id=message.registration_id,
        patient_ref=message.patient_ref,
        subject=f"Reschedule request: appointment {when}",
        description=f"The patient answered the reminder with R (reschedule): {appointment_ref}.",
        category="scheduling",
        source=message.channel,
        sla=sla_hours(ctx.app.config),
        now=ctx.now,
    )
    thread = messaging.attach(session, message, ticket, now=ctx.now)
    reminder.thread_id = thread.id
    message.outcome = f"Scheduling ticket {ticket.id} opened for {appointment_ref}."
    message.result = "reschedule-ticket"
    _automate_new(ctx, ticket, message, body)
    return True


def _confirm(
    ctx: JobContext, message: InboundMessage, appointment: dict[str, Any], when: str
) -> str:
    """Participation ``accepted`` in the EHR for the appointment the message answers
    (``message.appointment_ref``, read as ``appointment``), or a task for staff to do it
    there."""
    appointment_ref = str(message.appointment_ref)
    index = _participant_index(appointment, str(message.patient_ref))
    reason = None
    if not ctx.registration.allow_writes:
        reason = "this EHR's registration does not allow CareDesk to write"
    elif index is None:
        reason = "the appointment does not list the patient as a participant"
    else:
        updated = dict(appointment)
        participants = [dict(p) for p in appointment.get("participant") or []]
        participants[index]["status"] = "accepted"
        updated["participant"] = participants
        version = (appointment.get("meta") or {}).get("versionId")
        headers = {"If-Match": f'W/"{version}"'} if version else None
        try:
            ctx.fhir().request(
                "PUT",
                appointment_ref,
                json_body=updated,
                headers=headers,
                what="update Appointment",
            )
        except FatalFhirError as exc:
            if exc.status == 412:
                # Someone changed the appointment since we read it: read it again.
                raise TemporaryTaskError("the appointment changed while confirming it") from exc
            # Epic (and the sandbox's epic profile) keep Appointment read-only to apps:
            # the patient's answer must still reach the schedule, through a person.
            reason = f"the EHR refused the update ({exc.status}: {exc.message})"
        else:
            message.result = "confirmed-in-ehr"
            return f"Appointment {when} confirmed in the EHR (patient replied C)."
    staff = new_task(
        ctx.session,
        registration_id=message.registration_id,
        kind="follow-up",
        patient_ref=message.patient_ref,
        payload={
            "channel": "phone",
            "reason": (
                f"Patient confirmed the appointment {when} by text: mark it confirmed in the EHR"
            ),
            "group": ctx.app.config.get("STAFF_TASK_GROUP") or "front-desk",
            "appointment_ref": appointment_ref,
        },
        dedupe_key=f"confirm:{message.id}",
        assignee=ctx.app.config.get("STAFF_TASK_GROUP") or "front-desk",
    )
    if staff is not None:
        # On the work list now; no job to run (a person does it in the EHR).
        staff.status = "waiting"
        staff.status_note = f"Mark {appointment_ref} confirmed in the EHR: {reason}."
    message.result = "confirmed-staff-task"
    return f"Patient confirmed {when} by text; a staff task records it ({reason})."


def _participant_index(appointment: dict[str, Any], patient_ref: str) -> int | None:
    for i, part in enumerate(appointment.get("participant") or []):
        if isinstance(part, dict) and patient_of({"participant": [part]}) == patient_ref:
            return i
    return None


def deliver_to_ticket(
    ctx: JobContext, message: InboundMessage, body: str, *, ticket: Ticket | None = None
) -> Ticket:
    """The message on its conversation: ``ticket``, else the patient's recent open one,
    else a new ticket (about the CareDesk message it answers, when there is one)."""
    session = ctx.session
    window = timedelta(days=int(ctx.app.config.get("INBOUND_TICKET_WINDOW_DAYS") or 7))
    patient_ref = str(message.patient_ref)
    ticket = ticket or messaging.recent_ticket(
        session, message.registration_id, patient_ref, window=window, now=ctx.now
    )
    if ticket is not None:
        messaging.attach(session, message, ticket, now=ctx.now)
        message.outcome = f"Added to ticket {ticket.id}."
        message.result = "ticket"
        return ticket
    answered = session.scalar(
        select(OutboundMessage)
        .where(
            OutboundMessage.registration_id == message.registration_id,
            OutboundMessage.patient_ref == patient_ref,
            OutboundMessage.status == "sent",
            OutboundMessage.created_at >= message.received_at - window,
        )
        .order_by(OutboundMessage.created_at.desc(), OutboundMessage.id.desc())
        .limit(1)
    )
    about = answered.template if answered is not None else None
    category = REPLY_CATEGORY.get(about or "", str(ctx.app.config.get("INBOUND_CATEGORY")))
    channel_name = {"sms": "Text", "whatsapp": "WhatsApp", "email": "Email"}[message.channel]
    subject = f"{channel_name} from the patient" + (
        f" (reply to {about.replace('-', ' ')})" if about else ""
    )
    ticket = open_ticket(
        session,
        registration_id=message.registration_id,
        patient_ref=patient_ref,
        subject=subject,
        category=category,
        source=message.channel,
        sla=sla_hours(ctx.app.config),
        now=ctx.now,
    )
    thread = messaging.attach(session, message, ticket, now=ctx.now)
    if answered is not None and answered.thread_id is None:
        answered.thread_id = thread.id
    message.outcome = f"New ticket {ticket.id}."
    message.result = "ticket"
    _automate_new(ctx, ticket, message, body)
    return ticket


def _rules(app: Flask) -> automation.RuleSet:
    return automation.load_rules(app.config)


def _automate_new(ctx: JobContext, ticket: Ticket, message: InboundMessage, body: str) -> None:
    """Routing and the after-hours acknowledgement for a ticket a message opened."""
    rules = _rules(ctx.app)
    session = ctx.session
    session.flush()
    automation.route(session, ticket, body, rules, ctx.now)
    zone = ZoneInfo(str(ctx.app.config["VIEWER_TIMEZONE"]))
    rule = automation.should_acknowledge(rules, message.received_at, zone)
    if rule is None:
        return
    vault = get_vault(ctx.app)
    try:
        patient = _patient(ctx, message.patient_ref)
        sent = ctx.send(
            patient=patient,
            channel=message.channel,
            to=vault.decrypt(message.sender_enc),
            template="auto-acknowledge",
            language=None,
            params={"hours": rules.hours.text if rules.hours else ""},
            thread_id=message.thread_id,
        )
        outcome = f"acknowledged by {sent.channel} (outside clinic hours)"
    except NoReachableChannel as exc:
        outcome = f"not acknowledged: {exc}"
    automation.record(session, ticket, rule, outcome, ctx.now)


def escalate_overdue(app: Flask, *, now: datetime | None = None) -> int:
    """The escalation rules over every EHR's overdue tickets: priority up one step and a
    work-list item for the assignee (or the ticket's group), recorded on the ticket."""
    from helpdesk.db import get_store
    from helpdesk.timeutil import utcnow

    now = now or utcnow()
    rules = _rules(app)
    done = 0
    with get_store(app).session() as session:
        for rule in rules.of("escalate"):
            for ticket in automation.overdue_tickets(session, rule, now):
                before = ticket.priority
                ticket.priority = automation.raise_priority(before)
                who = ticket.assignee or str(app.config.get("STAFF_TASK_GROUP") or "front-desk")
                item = new_task(
                    session,
                    registration_id=ticket.registration_id,
                    kind="follow-up",
                    patient_ref=ticket.patient_ref,
                    payload={
                        "channel": "phone",
                        "reason": f"Ticket {ticket.id} is overdue: escalated to {ticket.priority}",
                        "ticket_id": ticket.id,
                        "group": who,
                    },
                    dedupe_key=f"escalate:{ticket.id}:{rule.name}",
                    assignee=who,
                )
                if item is not None:
                    item.status = "waiting"
                    item.status_note = f"Ticket {ticket.id} is overdue."
                automation.record(
                    session,
                    ticket,
                    rule,
                    f"priority {before} → {ticket.priority}; on {who}'s work list",
                    now,
                )
                done += 1
    if done:
        log.info("escalated %d overdue tickets", done)
    return done


def escalate_overdue_job() -> int:
    """The cron entry point."""
    from flask import current_app

    return escalate_overdue(current_app._get_current_object())  # type: ignore[attr-defined]
