"""What a job handler gets: the app, a session, the registration, the clock, FHIR, send."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from flask import Flask
from sqlalchemy import Update, select
from sqlalchemy.orm import Session, joinedload

from fhir_mappers import contact
from fhir_mappers.board import patient_of
from fhir_mappers.contact import Reachable, blocked
from helpdesk import ehr, messaging
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import CareTask, EhrRegistration, LaunchSession, OutboundMessage
from jobs.outbound import (
    Adapter,
    Message,
    NoReachableChannel,
    OptedOut,
    OutboundError,
    OutboundResult,
    languages_of,
    mask,
    render,
)
from smart_launch.fhir import FhirClient


def registration_client(app: Flask, registration_id: int, *, now: datetime) -> FhirClient:
    """A FHIR client for a sweep that runs per EHR, not per task (reminders, surveys,
    outreach); LookupError when the registration is gone.

    It authenticates like a job; with no task there is no launch to borrow a refresh token
    from, so in practice this is SMART Backend Services or NeedsAuthorization.
    """
    with get_store(app).session() as session:
        if session.get(EhrRegistration, registration_id) is None:
            raise LookupError(f"registration {registration_id} not found")
        sweep = CareTask(id=0, registration_id=registration_id, kind="sweep", payload={})
        return JobContext(app=app, session=session, task=sweep, now=now).fhir()


def appointments_of_patients(
    client: FhirClient, params: list[tuple[str, str]], *, max_pages: int
) -> Iterator[tuple[dict[str, Any], str]]:
    """A sweep's Appointment search, page by page: each appointment with its patient
    (``fhir_mappers.board.patient_of``); what names no patient, or is not an Appointment
    with an id, is passed over."""
    for appt in client.search_all("Appointment", params, max_pages=max_pages):
        if appt.get("resourceType") != "Appointment" or not appt.get("id"):
            continue
        patient = patient_of(appt)
        if patient is not None:
            yield appt, patient


# Built once per process: building the loader option cost a write-back job more than
# looking the registration up in its session (issue 16).
_WITH_SIGNING_KEYS = (joinedload(EhrRegistration.signing_keys),)


class Written(NamedTuple):
    """A handler's UPDATE that goes with the task's outcome (``write_with_outcome``)."""

    statement: Update
    params: dict[str, Any]
    rows: tuple[object, ...]


@dataclass
class JobContext:
    app: Flask
    session: Session
    task: CareTask
    now: datetime
    _registration: EhrRegistration | None = field(default=None, init=False)
    _fhir: FhirClient | None = field(default=None, init=False)
    # The handler's own UPDATEs that go with the task's outcome (``write_with_outcome``).
    with_outcome: list[Written] = field(default_factory=list, init=False)

    def write_with_outcome(
        self,
        statement: Update,
        params: dict[str, Any],
        *,
        rows: tuple[object, ...] = (),
    ) -> None:
        """Write ``statement`` (an UPDATE of the handler's own rows, built once per
        process, its parameters named unlike any column) with the task's outcome when the
        handler returns: in the same commit, and on PostgreSQL in the same statement
        (``jobs.tasks``). Not written when the handler raises. Instead of changing those
        rows' objects in the session, which the commit would flush one UPDATE each.

        ``rows``: the session's objects of the rows the statement changes, so the change
        stamps move as a flush of them would (``helpdesk.stamps.note``: an answer's, by
        its invitation, moves its patient's); without them, a statement on a table whose
        rows name no patient moves everyone's."""
        self.with_outcome.append(Written(statement, params, rows))

    @property
    def registration(self) -> EhrRegistration:
        if self._registration is None:
            # With its signing keys in the same query: the FHIR client needs them. (A
            # handler that loaded the row already finds it in the session, queried nothing.)
            reg = self.session.get(
                EhrRegistration, self.task.registration_id, options=_WITH_SIGNING_KEYS
            )
            if reg is None:
                from jobs.errors import TaskError

                raise TaskError(f"registration {self.task.registration_id} no longer exists")
            self._registration = reg
        return self._registration

    @property
    def capabilities(self) -> dict[str, Any]:
        return dict(self.registration.capabilities or {})

    def capability(self, line_name: str) -> bool | None:
        """Status of one `caredesk ehr check` line: True/False, None when never checked."""
        for line in self.capabilities.get("lines") or []:
            if isinstance(line, dict) and line.get("name") == line_name:
                status = line.get("status")
                return True if status == "supported" else (False if status == "missing" else None)
        return None

    # -- FHIR -----------------------------------------------------------------------

    def fhir(self) -> FhirClient:
        """Backend Services where the registration has a backend client and key, else the
        refresh token of the launch that created the task; else NeedsAuthorization."""
        if self._fhir is None:
            self._fhir = self._make_fhir()
        return self._fhir

    def _make_fhir(self) -> FhirClient:
        launch = (
            self.session.get(LaunchSession, self.task.launch_session_id)
            if self.task.launch_session_id
            else None
        )
        return ehr.fhir_client(self.app, self.registration, launch=launch)

    def close(self) -> None:
        # The HTTP session belongs to the app's pool; nothing of ours to close.
        self._fhir = None

    # -- outbound -------------------------------------------------------------------

    def adapter_for(self, channel: str) -> Adapter:
        from jobs.outbound.outbox import OutboxAdapter

        cfg = self.app.config
        if channel == "email" and cfg.get("OUTBOUND_EMAIL") == "smtp":
            from jobs.outbound.smtp import SmtpAdapter

            return SmtpAdapter(
                str(cfg["SMTP_HOST"]),
                int(cfg["SMTP_PORT"]),
                str(cfg["SMTP_FROM"]),
                starttls=bool(cfg.get("SMTP_STARTTLS")),
                username=cfg.get("SMTP_USERNAME"),
                password=cfg.get("SMTP_PASSWORD"),
            )
        if channel in messaging.TEXT_CHANNELS and cfg.get("OUTBOUND_SMS") == "twilio":
            from jobs.outbound.twilio import TwilioAdapter

            if not cfg.get("SMS_ACCOUNT_SID") or not cfg.get("SMS_AUTH_TOKEN"):
                raise OutboundError("OUTBOUND_SMS=twilio needs SMS_ACCOUNT_SID and SMS_AUTH_TOKEN")
            return TwilioAdapter(
                str(cfg["SMS_API_URL"]),
                str(cfg["SMS_ACCOUNT_SID"]),
                str(cfg["SMS_AUTH_TOKEN"]),
                str(cfg.get("SMS_FROM") or ""),
            )
        return OutboxAdapter()

    def send(
        self,
        *,
        patient: dict[str, Any],
        channel: str | None,
        template: str,
        language: str | None,
        params: dict[str, Any],
        to: str | None = None,
        thread_id: int | None = None,
        author: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> OutboundResult:
        """Send ``template`` to the patient on ``channel`` (or their best reachable one).

        Every message CareDesk sends to a patient comes through here — reminders, surveys,
        follow-ups, outreach, staff replies, HELP answers — so the checks live here once:
        the EHR's contact restrictions, a STOP the patient sent (``ContactOptOut``), and a
        phone number that must read as E.164. ``to`` sends to the address the patient wrote
        from (a reply on their channel) instead of the EHR's; the same checks apply.

        Never twice for one task and template: a retry after a send finds the first
        message and returns it.
        """
        vault = get_vault(self.app)
        previous = self.session.scalar(
            select(OutboundMessage).where(
                OutboundMessage.task_id == self.task.id,
                OutboundMessage.template == template,
                OutboundMessage.status == "sent",
            )
        )
        if previous is not None:
            return OutboundResult(
                previous.channel,
                previous.adapter,
                template,
                previous.language,
                previous.id,
                previous.provider_id,
                mask(vault.decrypt(previous.to_enc)),
                already_sent=True,
            )
        target = self._target(patient, channel, to)
        available = languages_of(template)
        lang = language if language in available else contact.pick_language(patient, available)
        full = {"name": _first_name(patient), "clinic": self.app.config["CLINIC_NAME"]}
        full.update(params)
        subject, body = render(template, lang, full)
        adapter = self.adapter_for(target.channel)
        message = Message(
            target.channel, target.address, subject, body, template, lang, headers=headers
        )
        provider_id = adapter.send(message)
        row = OutboundMessage(
            task_id=self.task.id,
            registration_id=self.task.registration_id,
            patient_ref=self.task.patient_ref,
            channel=target.channel,
            adapter=adapter.name,
            template=template,
            language=lang,
            to_enc=vault.encrypt(target.address),
            subject_enc=vault.encrypt_optional(subject),
            body_enc=vault.encrypt(body),
            provider_id=provider_id,
            status="sent",
            thread_id=thread_id,
            author=author,
        )
        self.session.add(row)
        # Committed at once: the message is out, and a retry must know that.
        self.session.commit()
        return OutboundResult(
            target.channel,
            adapter.name,
            template,
            lang,
            row.id,
            provider_id,
            mask(target.address),
        )

    def _target(self, patient: dict[str, Any], channel: str | None, to: str | None) -> Reachable:
        """The first channel and address the patient may be sent to, or NoReachableChannel
        (OptedOut when a STOP is what is in the way) with the reason in words."""
        if to is not None:
            if channel is None:
                raise ValueError("a message to a given address needs its channel")
            # fhir_mappers' one reading of the EHR's restrictions (and of a death); "do
            # not text" covers WhatsApp as well as SMS.
            kind = "sms" if channel in messaging.TEXT_CHANNELS else channel
            if kind in blocked(patient):
                raise NoReachableChannel(
                    f"The patient's record in the EHR says not to contact them by {kind}."
                )
            options = [Reachable(channel, to)]
        else:
            options = contact.reachable(patient, now=self.now, requested=channel)
        if not options:
            what = f"by {channel}" if channel else "by SMS or email"
            raise NoReachableChannel(
                f"The patient cannot be reached {what} (nothing on file, or they asked "
                "not to be contacted that way)."
            )
        region = messaging.phone_region(self.app)
        stopped: list[str] = []
        unreadable = 0
        for option in options:
            address = messaging.normalise_address(option.channel, option.address, region)
            if address is None:
                unreadable += 1
                continue
            recipient = messaging.Sender(
                self.task.registration_id,
                option.channel,
                messaging.address_key(address, self.app),
                self.task.patient_ref,
            )
            standing = messaging.opt_out_for(self.session, recipient)
            if standing is not None:
                stopped.append(messaging.opt_out_reason(standing))
                continue
            return Reachable(option.channel, address)
        if stopped:
            raise OptedOut(" ".join(dict.fromkeys(stopped)))
        raise NoReachableChannel(
            f"The patient's {'address' if unreadable == 1 else 'addresses'} on file cannot "
            "be read as a phone number or email address."
        )


def _first_name(patient: dict[str, Any]) -> str:
    names = [n for n in patient.get("name") or [] if isinstance(n, dict)]
    names.sort(key=lambda n: {"usual": 0, "official": 1}.get(str(n.get("use")), 2))
    for name in names:
        given = name.get("given") or []
        if given and isinstance(given[0], str):
            return given[0]
    return ""
