"""Messaging tests: a per-test app on SQLite and the test Redis, the sandbox EHR over real
HTTP with a backend-services registration, CareDesk served on loopback (the webhook is
called as the provider calls it), and an in-process RQ worker that drains the queue."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import select

from helpdesk.db import get_store
from helpdesk.models import CareTask, InboundMessage, OutboundMessage, Ticket
from sandbox.testing import SandboxHandle, running_sandbox
from tests.ehr import connect_backend
from tests.live import serve

SECRET = "messaging-test-secret-key-0123456789abcdef"
AUTH_TOKEN = "twilio-auth-token-for-tests-0123456789"
SCOPES = (
    "system/Patient.rs system/Appointment.rus system/Coverage.rs system/Encounter.rs "
    "system/Location.rs system/Practitioner.rs system/QuestionnaireResponse.crs"
)
CONFIG: dict[str, Any] = {
    "SECRET_KEY": SECRET,
    "SMS_AUTH_TOKEN": AUTH_TOKEN,
    "CLINIC_NAME": "Test Clinic",
    "CLINIC_PHONE": "+1 312-555-0100",
    "RETRY_BASE_SECONDS": 1,
    "TASK_LEASE_SECONDS": 2,
    # Always open, so no test is acknowledged by accident; the after-hours test sets its own.
    "AUTOMATION_RULES": '{"clinic_hours": "Mon-Sun 00:00-23:59", "rules": []}',
}
_sids = itertools.count(1)


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as sb:
        yield sb


@pytest.fixture
def msg_app(make_app: Any, sandbox: SandboxHandle) -> Flask:
    app: Flask = make_app(**CONFIG)
    connect_backend(app, sandbox, client_id="caredesk-messaging", scopes=SCOPES, slug="clinic")
    return app


@pytest.fixture
def base_url(msg_app: Flask) -> Iterator[str]:
    with serve(msg_app) as url:
        yield url


def twilio_signature(token: str, url: str, form: dict[str, str]) -> str:
    """As the provider computes it (Twilio's documented scheme), written here apart from
    the product's code so a mistake in one does not hide in the other."""
    data = url + "".join(f"{key}{form[key]}" for key in sorted(form))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def sms_form(sender: str, body: str, *, sid: str | None = None, **extra: str) -> dict[str, str]:
    form = {
        "MessageSid": sid or f"SM{next(_sids):032d}",
        "AccountSid": "AC" + "0" * 32,
        "From": sender,
        "To": "+13125550100",
        "Body": body,
        "NumMedia": "0",
    }
    form.update(extra)
    return form


def post_sms(
    base_url: str,
    form: dict[str, str],
    *,
    token: str = AUTH_TOKEN,
    signed_url: str | None = None,
    slug: str = "clinic",
    signature: str | None = None,
) -> requests.Response:
    url = f"{base_url}/inbound/sms/{slug}"
    sig = signature if signature is not None else twilio_signature(token, signed_url or url, form)
    headers = {"X-Twilio-Signature": sig} if sig else {}
    return requests.post(url, data=form, headers=headers, timeout=10)


def drain(app: Flask) -> None:
    """Run every queued job now, in this process (RQ's SimpleWorker, burst mode)."""
    from jobs.queue import get_queue_state
    from jobs.worker import EmbeddedWorker

    state = get_queue_state(app)
    worker = EmbeddedWorker(
        [state.queue(n) for n in state.queue_names], connection=state.connection, app=app
    )
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")


def rows(app: Flask, model: Any, *where: Any) -> list[Any]:
    with get_store(app).session() as session:
        found = list(session.scalars(select(model).where(*where).order_by(model.id)))
        for row in found:
            session.expunge(row)
        return found


def inbound(app: Flask) -> list[InboundMessage]:
    return rows(app, InboundMessage)


def tickets(app: Flask) -> list[Ticket]:
    return rows(app, Ticket)


def outbound(app: Flask, template: str | None = None) -> list[OutboundMessage]:
    where = [OutboundMessage.template == template] if template else []
    return rows(app, OutboundMessage, *where)


def tasks(app: Flask, kind: str) -> list[CareTask]:
    return rows(app, CareTask, CareTask.kind == kind)


def decrypt(app: Flask, value: bytes) -> str:
    from helpdesk.crypto import get_vault

    return get_vault(app).decrypt(value)


def browser(
    app: Flask,
    base: str,
    *,
    patient: str | None = None,
    user: str = "Practitioner/prac-scheduler-ortiz",
    scope: str = "launch openid fhirUser user/Patient.rs user/Appointment.rs",
) -> Any:
    """A browser tab on a launch of the messaging registration (the row written as after a
    real callback; the launch flow itself is tested in tests/plugin)."""
    import secrets

    from helpdesk.models import EhrRegistration, LaunchSession
    from plugin.csrf import csrf_token
    from tests.api.conftest import Browser

    secret = secrets.token_urlsafe(32)
    launch_id = secrets.token_urlsafe(24)
    with app.app_context(), get_store(app).session() as db:
        reg = db.scalar(select(EhrRegistration).where(EhrRegistration.slug == "clinic"))
        assert reg is not None
        row = LaunchSession(
            id=launch_id,
            registration_id=reg.id,
            status="active",
            browser_hash=hashlib.sha256(secret.encode()).hexdigest(),
            patient_ref=patient,
            fhir_user=user,
            scope_granted=scope,
            context={},
        )
        db.add(row)
        db.flush()
        token = csrf_token(row)
    return Browser(base, launch_id, secret, token)


def registration_id(app: Flask) -> int:
    from helpdesk.models import EhrRegistration

    with get_store(app).session() as db:
        found = db.scalar(select(EhrRegistration.id).where(EhrRegistration.slug == "clinic"))
        assert found is not None
        return int(found)


def queue(app: Flask, **kwargs: Any) -> int:
    """A task row, committed, then its job enqueued (as every producer does)."""
    from helpdesk.tasks import new_task
    from jobs.outbox import dispatch

    with app.app_context():
        with get_store(app).session() as session:
            task = new_task(session, registration_id=registration_id(app), **kwargs)
            assert task is not None
            session.flush()
            task_id = task.id
        dispatch([task_id], app=app)
    return task_id


def task(app: Flask, task_id: int) -> CareTask:
    [found] = rows(app, CareTask, CareTask.id == task_id)
    return found


def appointment(
    sb: SandboxHandle,
    appt_id: str,
    patient: str,
    start: Any,
    *,
    status: str = "booked",
    minutes: int = 30,
) -> str:
    """An appointment booked by the EHR's own staff (no token, as in the EHR)."""
    import datetime as dt

    sb.put_resource(
        {
            "resourceType": "Appointment",
            "id": appt_id,
            "status": status,
            "start": start.isoformat(),
            "end": (start + dt.timedelta(minutes=minutes)).isoformat(),
            "participant": [
                {"actor": {"reference": patient}, "status": "needs-action"},
                {"actor": {"reference": "Practitioner/prac-clinician-lee"}, "status": "accepted"},
            ],
        }
    )
    return f"Appointment/{appt_id}"
