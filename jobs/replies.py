"""A staff reply from a ticket (task kind ``staff-reply``): sent on the channel the
patient last wrote on, to the address they wrote from, in the ticket's thread (an email
carries the thread's token in its subject and answers the patient's last message), and
through ``JobContext.send`` like every message, so a STOP or the EHR's restrictions
refuse it with the reason on the ticket.

The payload holds the reply encrypted (``body_enc``): job arguments carry the row id
only, and the row never holds patient-facing text in clear.
"""

from __future__ import annotations

from helpdesk import messaging
from helpdesk.crypto import get_vault
from helpdesk.models import CareTask, InboundMessage, MessageThread, Ticket
from jobs.context import JobContext
from jobs.errors import TaskError, split_reference
from jobs.tasks import handler

KIND = messaging.REPLY_KIND


@handler(KIND)
def send_reply(task: CareTask, ctx: JobContext) -> None:
    session = ctx.session
    ticket = session.get(Ticket, int(task.payload["ticket_id"]))
    last = session.get(InboundMessage, int(task.payload["in_reply_to"]))
    if ticket is None or last is None or last.thread_id is None:
        raise TaskError("the ticket or the message it answers no longer exists")
    thread = session.get(MessageThread, last.thread_id)
    assert thread is not None  # a foreign key
    vault = get_vault(ctx.app)
    text = vault.decrypt(str(task.payload["body_enc"]).encode())
    patient: dict[str, object] = {}
    if ticket.patient_ref:
        rtype, rid = split_reference(ticket.patient_ref)
        patient = ctx.fhir().read(rtype, rid)
    headers: tuple[tuple[str, str], ...] = ()
    subject = f"Re: {ctx.app.config['CLINIC_NAME']} [CD-{thread.token}]"
    if last.channel == "email":
        original = vault.decrypt_optional(last.subject_enc) or ""
        if original:
            base = original if original.lower().startswith("re:") else f"Re: {original}"
            subject = base if f"[CD-{thread.token}]" in base else f"{base} [CD-{thread.token}]"
        if last.message_id_header:
            refs = " ".join([*last.in_reply_to, last.message_id_header][-10:])
            headers = (("In-Reply-To", last.message_id_header), ("References", refs))
    sent = ctx.send(
        patient=patient,
        channel=last.channel,
        to=vault.decrypt(last.sender_enc),
        template=messaging.REPLY_TEMPLATE,
        language=None,
        params={"body": text, "subject": subject},
        thread_id=thread.id,
        author=task.created_by,
        headers=headers,
    )
    thread.last_message_at = ctx.now
    task.status_note = f"Sent by {sent.channel} to {sent.to_masked}."
