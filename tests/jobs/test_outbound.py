"""Channel choice, templates per language, and the SMTP and Twilio-compatible adapters
against real local servers."""

from __future__ import annotations

import datetime as dt

import pytest
from aiosmtpd.controller import Controller
from jinja2 import UndefinedError
from werkzeug.wrappers import Request, Response

from fhir_mappers.contact import pick_language as language
from fhir_mappers.contact import reachable
from jobs.outbound import Message, OutboundError, TemporaryOutboundError, render
from jobs.outbound.smtp import SmtpAdapter
from jobs.outbound.twilio import TwilioAdapter
from tests.live import serve

NOW = dt.datetime(2026, 11, 27, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=-6)))
RESTRICT = "https://caredesk.example/fhir/StructureDefinition/contact-restriction"


def _patient(telecom, restrictions=(), lang="en"):  # type: ignore[no-untyped-def]
    return {
        "resourceType": "Patient",
        "telecom": telecom,
        "extension": [{"url": RESTRICT, "valueCoding": {"code": c}} for c in restrictions],
        "communication": [{"language": {"coding": [{"code": lang}]}, "preferred": True}],
    }


@pytest.mark.parametrize(
    ("telecom", "restrictions", "requested", "expected"),
    [
        (
            [
                {"system": "phone", "use": "mobile", "value": "+1 1", "rank": 2},
                {"system": "email", "value": "a@x.org", "rank": 1},
            ],
            (),
            None,
            ["email", "sms"],
        ),
        ([{"system": "phone", "use": "mobile", "value": "+1 1"}], ("no-sms",), None, []),
        ([{"system": "phone", "use": "home", "value": "+1 1"}], (), "sms", []),
        (
            [
                {
                    "system": "phone",
                    "use": "mobile",
                    "value": "+1 1",
                    "period": {"end": "2024-01-01"},
                },
                {"system": "email", "value": "a@x.org"},
            ],
            (),
            None,
            ["email"],
        ),
        ([{"system": "phone", "use": "old", "value": "+1 1"}], (), None, []),
        (
            [
                {"system": "phone", "use": "mobile", "value": "+1 1"},
                {"system": "email", "value": "a@x.org"},
            ],
            ("no-email",),
            "email",
            [],
        ),
    ],
)
def test_reachable_respects_rank_restrictions_and_ended_numbers(
    telecom, restrictions, requested, expected
) -> None:
    got = reachable(_patient(telecom, restrictions), now=NOW, requested=requested)
    assert [r.channel for r in got] == expected


def test_language_falls_back_to_english_when_no_template_exists() -> None:
    assert language(_patient([], lang="es"), ("en", "es")) == "es"
    assert language(_patient([], lang="ar"), ("en", "es")) == "en"


def test_templates_render_in_spanish_with_subject() -> None:
    subject, body = render(
        "appointment-reminder",
        "es",
        {
            "name": "Ana",
            "clinic": "Clínica",
            "date": "lunes 3 de mayo",
            "time": "09:30",
            "where": "",
        },
    )
    assert subject == "Recordatorio: su cita el lunes 3 de mayo"
    assert body.startswith("Hola Ana") and "09:30" in body


def test_template_missing_parameter_is_an_error() -> None:
    with pytest.raises(UndefinedError):
        render("follow-up", "en", {"name": "Ana"})


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Sink:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.messages.append(envelope.content)
        return "250 OK"


def test_smtp_adapter_delivers_to_a_local_server() -> None:
    sink = _Sink()
    port = _free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        adapter = SmtpAdapter("127.0.0.1", port, "clinic@example.org")
        msg_id = adapter.send(Message("email", "ana@example.com", "Hi", "Body text\n", "t", "en"))
    finally:
        controller.stop()
    assert msg_id and msg_id.endswith("@example.org>")
    [raw] = sink.messages
    assert b"Subject: Hi" in raw and b"To: ana@example.com" in raw and b"Body text" in raw


def test_smtp_adapter_unreachable_server_is_temporary() -> None:
    adapter = SmtpAdapter("127.0.0.1", _free_port(), "clinic@example.org", timeout=2)
    with pytest.raises(TemporaryOutboundError):
        adapter.send(Message("email", "a@b.org", "s", "b", "t", "en"))


@pytest.fixture
def sms_api():  # type: ignore[no-untyped-def]
    calls: list[dict[str, object]] = []
    answers: list[tuple[int, str]] = []

    @Request.application
    def app(request: Request) -> Response:
        calls.append(
            {
                "path": request.path,
                "form": dict(request.form),
                "auth": request.authorization and request.authorization.username,
            }
        )
        status, body = answers.pop(0) if answers else (201, '{"sid": "SM123"}')
        return Response(
            body,
            status=status,
            mimetype="application/json",
            headers={"Retry-After": "3"} if status == 429 else {},
        )

    with serve(app) as base:
        yield base, calls, answers


def test_twilio_adapter_posts_the_twilio_form(sms_api) -> None:
    base, calls, _ = sms_api
    adapter = TwilioAdapter(base, "AC1", "secret", "+15550001111")
    assert adapter.send(Message("sms", "+15552223333", None, "Hello", "t", "en")) == "SM123"
    [call] = calls
    assert call["path"] == "/2010-04-01/Accounts/AC1/Messages.json"
    assert call["form"] == {"To": "+15552223333", "From": "+15550001111", "Body": "Hello"}
    assert call["auth"] == "AC1"


def test_twilio_adapter_429_is_temporary_with_retry_after_and_400_is_final(sms_api) -> None:
    base, _, answers = sms_api
    adapter = TwilioAdapter(base, "AC1", "secret", "+15550001111")
    answers.extend([(429, "{}"), (400, '{"message": "invalid To number"}')])
    with pytest.raises(TemporaryOutboundError) as temp:
        adapter.send(Message("sms", "+1", None, "x", "t", "en"))
    assert temp.value.retry_after == 3
    with pytest.raises(OutboundError, match="invalid To number"):
        adapter.send(Message("sms", "+1", None, "x", "t", "en"))
