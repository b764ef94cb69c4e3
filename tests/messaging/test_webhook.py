"""The signed SMS/WhatsApp webhook over real HTTP: signatures computed as the provider
computes them; refused requests leave no row and no content in the log; a retried
delivery is stored once; the public URL is the one signed; the webhook is rate-limited."""

from __future__ import annotations

import logging

from plugin.messages import signature
from tests.messaging.conftest import (
    AUTH_TOKEN,
    decrypt,
    inbound,
    post_sms,
    sms_form,
    tasks,
    twilio_signature,
)


def test_signature_matches_the_providers_published_example() -> None:
    # Twilio's documented example request (auth token 12345).
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    assert signature("12345", url, list(params.items())) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert twilio_signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_a_signed_message_is_stored_encrypted_with_its_task_and_answered_with_twiml(
    msg_app, base_url
) -> None:
    resp = post_sms(base_url, sms_form("+1 312-555-0104", "Can I move my visit?"))
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/xml")
    assert "<Response>" in resp.text
    [row] = inbound(msg_app)
    assert row.channel == "sms" and row.provider == "twilio" and row.status == "received"
    assert decrypt(msg_app, row.body_enc) == "Can I move my visit?"
    # Stored as E.164, and only encrypted: no column holds the number or the words.
    assert decrypt(msg_app, row.sender_enc) == "+13125550104"
    assert b"555" not in row.sender_enc and b"visit" not in row.body_enc
    [task] = tasks(msg_app, "inbound-message")
    assert task.payload == {"message_id": row.id}


def test_whatsapp_sender_is_the_whatsapp_channel(msg_app, base_url) -> None:
    assert post_sms(base_url, sms_form("whatsapp:+13125550104", "hola")).status_code == 200
    [row] = inbound(msg_app)
    assert row.channel == "whatsapp"
    assert decrypt(msg_app, row.sender_enc) == "+13125550104"


def test_bad_and_missing_signatures_are_refused_and_logged_without_content(
    msg_app, base_url, caplog
) -> None:
    caplog.set_level(logging.INFO)
    form = sms_form("+13125550104", "my secret symptom")
    wrong_key = post_sms(base_url, form, token="not-the-auth-token")
    tampered = post_sms(
        base_url,
        {**form, "Body": "changed"},
        signature=twilio_signature(AUTH_TOKEN, f"{base_url}/inbound/sms/clinic", form),
    )
    missing = post_sms(base_url, form, signature="")
    assert [wrong_key.status_code, tampered.status_code, missing.status_code] == [403, 403, 403]
    assert inbound(msg_app) == []
    assert tasks(msg_app, "inbound-message") == []
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 3
    assert any("missing signature" in line for line in refusals)
    for line in caplog.text.splitlines():
        assert "secret symptom" not in line and "0104" not in line and "changed" not in line


def test_a_retried_delivery_is_stored_once(msg_app, base_url) -> None:
    form = sms_form("+13125550104", "Running late", sid="SM" + "7" * 32)
    first = post_sms(base_url, form)
    again = post_sms(base_url, form)
    assert first.status_code == again.status_code == 200
    assert len(inbound(msg_app)) == 1
    assert len(tasks(msg_app, "inbound-message")) == 1


def test_unknown_registration_is_404_and_stores_nothing(msg_app, base_url) -> None:
    assert post_sms(base_url, sms_form("+13125550104", "hi"), slug="nope").status_code == 404
    assert inbound(msg_app) == []


def test_behind_a_proxy_the_public_url_is_the_one_signed(make_app, sandbox) -> None:
    from tests.ehr import connect_backend
    from tests.live import serve
    from tests.messaging.conftest import CONFIG, SCOPES

    app = make_app(**CONFIG, PUBLIC_URL="https://desk.clinic.example/")
    connect_backend(app, sandbox, client_id="caredesk-proxy", scopes=SCOPES, slug="clinic")
    with serve(app) as url:
        form = sms_form("+13125550104", "hello")
        internal = post_sms(url, form)
        public = post_sms(url, form, signed_url="https://desk.clinic.example/inbound/sms/clinic")
    assert internal.status_code == 403
    assert public.status_code == 200
    assert len(inbound(app)) == 1


def test_the_webhook_is_rate_limited_per_client(make_app, sandbox) -> None:
    from tests.ehr import connect_backend
    from tests.live import serve
    from tests.messaging.conftest import CONFIG, SCOPES

    app = make_app(**CONFIG, INBOUND_RATE_PER_MINUTE=3)
    connect_backend(app, sandbox, client_id="caredesk-rate", scopes=SCOPES, slug="clinic")
    with serve(app) as url:
        codes = [post_sms(url, sms_form("+13125550104", f"m{i}")).status_code for i in range(4)]
        unsigned = post_sms(url, sms_form("+13125550104", "x"), signature="")
    assert codes == [200, 200, 200, 429]
    assert unsigned.status_code == 429
    assert len(inbound(app)) == 3
