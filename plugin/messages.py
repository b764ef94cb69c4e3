"""Two-way messaging at the web edge: the signed SMS/WhatsApp webhook (public), the
unmatched queue where staff pick the patient, staff replies from a ticket, the ticket's
thread (a partial ``tickets/detail.html`` includes) and the automation rules page.

The webhook does the least it can before answering: check the signature, store the
message (encrypted) with the task that processes it, answer. Matching the sender,
keywords, tickets: all in ``jobs.inbound``, on the row id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response as BaseResponse

from helpdesk import automation, messaging
from helpdesk.access import scope_of
from helpdesk.audit import audit
from helpdesk.crypto import get_vault
from helpdesk.db import get_db
from helpdesk.errors import AppError, NotFound
from helpdesk.models import (
    ContactOptOut,
    EhrRegistration,
    InboundMessage,
    LaunchSession,
    Ticket,
)
from helpdesk.tasks import new_task
from helpdesk.tickets import get_ticket
from jobs import outbox
from jobs.inbound import queue_processing
from jobs.outbound import mask
from plugin.csrf import check_csrf
from plugin.launch import current_launch

log = logging.getLogger("caredesk.messages")

bp = Blueprint("messages", __name__)
# The public webhook apart: it names no launch, so the launch routes' limits do not fit it.
inbound_bp = Blueprint("inbound", __name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
_PATIENT_REF = re.compile(r"^Patient/[A-Za-z0-9\-.]{1,256}$")
MAX_BODY = 10_000


# --- the webhook ---------------------------------------------------------------------------


def signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """Twilio's request signature: base64(HMAC-SHA1(auth token, URL + each POST parameter's
    name and value, sorted by name)). The URL is the one the provider called, query
    string included."""
    data = url + "".join(k + v for k, v in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _public_url() -> str:
    """The URL the provider signed: behind a proxy the public one (``PUBLIC_URL``), not
    the address the request reached us on."""
    public = current_app.config.get("PUBLIC_URL")
    if not public:
        return request.url
    query = request.query_string.decode()
    return str(public).rstrip("/") + request.path + (f"?{query}" if query else "")


def _client_key() -> str:
    # An address is personal data too: logs name a hash of it.
    return hashlib.sha256((request.remote_addr or "unknown").encode()).hexdigest()[:32]


def _refuse(status: int, why: str, slug: str) -> Response:
    # Never the content: no sender, no text, no signature; a hashed client address.
    log.warning(
        "inbound webhook refused (%s): registration %s, client %s", why, slug, _client_key()
    )
    return Response("", status=status)


@inbound_bp.post("/inbound/sms/<slug>")
def sms_webhook(slug: str) -> Response:
    """A Twilio-compatible messaging webhook (SMS and WhatsApp) for one EHR registration.
    Rate-limited per client address and per registration by ``plugin.ratelimit``."""
    db = get_db()
    reg = db.scalar(select(EhrRegistration).where(EhrRegistration.slug == slug))
    token = current_app.config.get("SMS_AUTH_TOKEN")
    if reg is None:
        return _refuse(404, "unknown registration", slug)
    if not token:
        return _refuse(403, "no SMS_AUTH_TOKEN configured", slug)
    sent = request.headers.get(SIGNATURE_HEADER, "")
    params = [(k, v) for k in request.form for v in request.form.getlist(k)]
    expected = signature(str(token), _public_url(), params)
    if not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        return _refuse(403, "missing signature" if not sent else "bad signature", slug)
    form = request.form
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    sender = form.get("From") or ""
    if not sid or not sender or len(sid) > 64:
        return _refuse(400, "no MessageSid or From", slug)
    channel = "whatsapp" if sender.startswith("whatsapp:") else "sms"
    try:
        media = min(int(form.get("NumMedia") or 0), 10)
    except ValueError:
        media = 0
    # Media stay at the provider: their content types only (the URLs fetch the content).
    attachments = tuple(
        {"content_type": form.get(f"MediaContentType{i}") or "", "index": i} for i in range(media)
    )
    incoming = messaging.Incoming(
        registration_id=reg.id,
        channel=channel,
        provider="twilio",
        provider_id=sid,
        sender=sender,
        body=(form.get("Body") or "")[:MAX_BODY],
        attachments=attachments,
    )
    row, created = messaging.record_inbound(db, get_vault(), incoming)
    task = queue_processing(db, row)
    db.commit()
    if task is not None:
        outbox.dispatch([task.id])
    log.info(
        "inbound %s message %s %s", channel, row.id, "stored" if created else "was stored already"
    )
    # An empty TwiML answer: nothing to send back now (replies go out from the job).
    return Response(
        '<?xml version="1.0" encoding="UTF-8"?><Response></Response>', mimetype="text/xml"
    )


# --- pages with a launch -------------------------------------------------------------------


def _staff_launch(launch_id: str) -> LaunchSession:
    """The unmatched queue holds messages of patients nobody has identified: only a launch
    without patient context (the help desk, the front desk) may see it."""
    launch = current_launch(launch_id)
    check_csrf(launch)
    if launch.patient_ref:
        raise AppError(
            "The unmatched messages are for the help desk: open CareDesk without a patient "
            "(the day board) to work on them.",
            status=403,
            code="other_patient",
        )
    if not scope_of(launch).every_patient:
        # Whoever wrote could be any patient: only a grant that reaches every patient
        # (user/ or system/ Patient read) may read them and pick one.
        raise AppError(
            "The EHR granted this session no access beyond single patients, so it cannot "
            "see messages from unknown senders.",
            status=403,
            code="other_patient",
        )
    return launch


def _viewer_zone() -> Any:
    from helpdesk.duephrase import viewer_zone

    return viewer_zone(str(current_app.config.get("VIEWER_TIMEZONE") or "UTC"))


def _candidates(
    launch: LaunchSession, message: InboundMessage, name: str | None
) -> list[dict[str, str]]:
    """Patients staff may pick: those the sender's address matched (found by the job with
    backend services), or found by name. Names are read with the user's own token (what
    the EHR lets this user see); a reference without a name is still offered."""
    from fhir_mappers.fhirutil import human_name
    from plugin.context import _client

    if name:
        params: list[tuple[str, str]] = [("name", name[:100]), ("_count", "10")]
        refs: list[str] = []
    else:
        refs = [str(r) for r in message.candidates or []][:10]
        if not refs:
            return []
        params = [("_id", ",".join(r.split("/", 1)[1] for r in refs))]
    found: dict[str, dict[str, str]] = {r: {"ref": r, "name": r, "birth": ""} for r in refs}
    try:
        bundle = _client(launch).search("Patient", params)
    except Exception as exc:  # noqa: BLE001 - the page still offers the references
        log.info("candidate names unavailable: %s", type(exc).__name__)
        return list(found.values())
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "Patient":
            ref = f"Patient/{resource.get('id')}"
            found[ref] = {
                "ref": ref,
                "name": human_name(resource.get("name")) or ref,
                "birth": str(resource.get("birthDate") or ""),
            }
    return list(found.values())


@bp.get("/l/<launch_id>/messages/unmatched")
def unmatched_page(launch_id: str) -> str:
    launch = _staff_launch(launch_id)
    vault = get_vault()
    rows = messaging.unmatched(get_db(), launch.registration_id)
    find_id = request.args.get("m", type=int)
    name = (request.args.get("name") or "").strip() or None
    items = []
    for row in rows:
        items.append(
            {
                "id": row.id,
                "channel": row.channel,
                "at": row.received_at,
                "sender": mask(vault.decrypt(row.sender_enc)),
                "subject": vault.decrypt_optional(row.subject_enc),
                "body": vault.decrypt(row.body_enc),
                "reason": row.outcome,
                "candidates": _candidates(launch, row, name if find_id == row.id else None),
                "searched": name if find_id == row.id else None,
            }
        )
    audit(
        "messages.unmatched.read",
        launch=launch,
        entity="InboundMessage",
        detail={"ids": [i["id"] for i in items]},
    )
    return render_template(
        "messages/unmatched.html", launch=launch, items=items, done=request.args.get("done")
    )


@bp.post("/l/<launch_id>/messages/<rowid:message_id>/patient")
def pick_patient(launch_id: str, message_id: int) -> BaseResponse:
    """Staff pick the patient of an unmatched message. Nothing is written to the EHR: the
    message is processed again as this patient's (ticket, reminder answer)."""
    launch = _staff_launch(launch_id)
    db = get_db()
    row = db.get(InboundMessage, message_id)
    if row is None or row.registration_id != launch.registration_id or row.status != "unmatched":
        raise NotFound("No such unmatched message.")
    patient = (request.form.get("patient") or "").strip()
    if not _PATIENT_REF.match(patient):
        raise AppError(
            "Pick a patient (a reference like Patient/123).", status=422, code="validation_failed"
        )
    row.patient_ref = patient
    row.match = "staff"
    row.resolved_by = launch.fhir_user
    row.status = "received"
    task = new_task(
        db,
        registration_id=row.registration_id,
        kind="inbound-message",
        patient_ref=patient,
        payload={"message_id": row.id},
        dedupe_key=f"inbound:{row.id}:staff",
    )
    db.commit()
    if task is not None:
        outbox.dispatch([task.id])
    audit("messages.pick", launch=launch, patient_ref=patient, entity=f"InboundMessage/{row.id}")
    return redirect(url_for("messages.unmatched_page", launch_id=launch_id, done=row.id), code=303)


def _stop_against_reply(db: Session, ticket: Ticket, last: InboundMessage) -> ContactOptOut | None:
    """The standing STOP that forbids a reply on the channel and to the address of the
    patient's latest message."""
    recipient = messaging.Sender(
        ticket.registration_id, last.channel, last.sender_key, ticket.patient_ref
    )
    return messaging.opt_out_for(db, recipient)


@bp.post("/l/<launch_id>/tickets/<rowid:ticket_id>/reply")
def reply(launch_id: str, ticket_id: int) -> BaseResponse:
    """A staff reply on the patient's channel (a job sends it, through the one send path)."""
    launch = current_launch(launch_id)
    check_csrf(launch)
    db = get_db()
    ticket = get_ticket(db, launch, ticket_id)
    if launch.patient_ref and ticket.patient_ref != launch.patient_ref:
        raise NotFound("No such ticket.")
    text = (request.form.get("body") or "").strip()
    back = url_for("tickets.ticket_page", launch_id=launch_id, ticket_id=ticket.id) + "#thread"
    if not text or len(text) > 1600:
        raise AppError(
            "Write a reply of 1 to 1600 characters.", status=422, code="validation_failed"
        )
    last = messaging.reply_channel(db, ticket)
    if last is None:
        raise AppError(
            "The patient has not written on this ticket: there is nothing to reply to.",
            status=409,
            code="no_thread",
        )
    standing = _stop_against_reply(db, ticket, last)
    if standing is not None:
        raise AppError(
            messaging.opt_out_reason(standing, _viewer_zone()), status=409, code="opted_out"
        )
    task = new_task(
        db,
        registration_id=ticket.registration_id,
        kind=messaging.REPLY_KIND,
        patient_ref=ticket.patient_ref,
        payload={
            "ticket_id": ticket.id,
            "in_reply_to": last.id,
            "channel": last.channel,
            "body_enc": get_vault().encrypt(text).decode(),
        },
        launch_session_id=launch.id,
        created_by=launch.fhir_user,
    )
    assert task is not None
    db.commit()
    outbox.dispatch([task.id])
    audit(
        "ticket.reply",
        launch=launch,
        patient_ref=ticket.patient_ref,
        entity=f"Ticket/{ticket.id}",
        detail={"channel": last.channel},
    )
    return redirect(back, code=303)


@bp.get("/l/<launch_id>/automation")
def automation_page(launch_id: str) -> str:
    launch = current_launch(launch_id)
    rules = automation.load_rules(current_app.config)
    return render_template("messages/automation.html", launch=launch, rules=rules)


# --- what other pages read -----------------------------------------------------------------


@bp.app_template_global("ticket_thread")
def ticket_thread(ticket: Ticket) -> dict[str, Any]:
    """The thread partial's data: the conversation, the rule runs, where a reply goes."""
    db = get_db()
    last = messaging.reply_channel(db, ticket)
    standing = None
    if last is not None:
        standing = _stop_against_reply(db, ticket, last)
    return {
        "entries": messaging.conversation(db, get_vault(), ticket),
        "rule_runs": messaging.rule_runs(db, ticket.id),
        "reply_channel": last.channel if last is not None else None,
        "reply_to": mask(get_vault().decrypt(last.sender_enc)) if last is not None else None,
        "opted_out": messaging.opt_out_reason(standing, _viewer_zone()) if standing else None,
    }


def unmatched_count(registration_id: int) -> int:
    from sqlalchemy import func

    return int(
        get_db().scalar(
            select(func.count())
            .select_from(InboundMessage)
            .where(
                InboundMessage.registration_id == registration_id,
                InboundMessage.status == "unmatched",
            )
        )
        or 0
    )
