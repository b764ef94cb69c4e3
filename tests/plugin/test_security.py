"""Production posture: no plain http outside loopback, no patient page kept by a cache,
HSTS over https."""

from __future__ import annotations

import re

import pytest
import requests
from flask import Flask

from helpdesk.db import get_store
from helpdesk.models import EhrRegistration
from helpdesk.tickets import open_ticket
from sandbox.testing import running_sandbox
from tests.ehr import connect
from tests.live import serve
from tests.survey.conftest import make_invite

PRODUCTION = {"ENV": "production", "SECRET_KEY": "production-secret-" + "k" * 40}
LAUNCH = "/launch?iss=https://ehr.invalid/fhir&launch=abc"
OUTSIDE = {
    "base_url": "http://caredesk.example.org",
    "environ_base": {"REMOTE_ADDR": "203.0.113.7"},
}


@pytest.fixture
def production(make_app, pg_url: str) -> Flask:  # type: ignore[no-untyped-def]
    # Production runs only on PostgreSQL: the app refuses SQLite there.
    app: Flask = make_app(DATABASE_URL=pg_url, **PRODUCTION)
    return app


def test_production_refuses_the_launch_over_plain_http_with_a_clear_page(production) -> None:
    page = production.test_client().get(LAUNCH, headers={"Accept": "text/html"}, **OUTSIDE)
    assert page.status_code == 403
    html = page.get_data(as_text=True)
    assert "CareDesk needs a secure connection" in html
    assert "https://" in html and "CAREDESK_PROXY_FIX" in html
    assert page.headers["Cache-Control"] == "no-store"
    assert "Strict-Transport-Security" not in page.headers
    # Nothing else is served either (a sidebar page, the API), except the health probe.
    client = production.test_client()
    assert client.get("/l/some-launch/", **OUTSIDE).status_code == 403
    api = client.get("/api/l/some-launch/context", **OUTSIDE)
    assert api.status_code == 403 and api.json["error"]["code"] == "https_required"
    assert client.get("/healthz", **OUTSIDE).status_code in (200, 503)


def test_production_serves_https_with_hsts_and_trusts_a_configured_proxy(
    make_app, pg_url: str
) -> None:
    direct = make_app(DATABASE_URL=pg_url, **PRODUCTION).test_client()
    over_https = direct.get(
        LAUNCH, base_url="https://caredesk.example.org", environ_base=OUTSIDE["environ_base"]
    )
    # Past the transport check: the launch itself answers (an unregistered EHR here).
    assert over_https.status_code == 400 and "not registered" in over_https.get_data(True)
    assert over_https.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.2"}
    # Without CAREDESK_PROXY_FIX the header is anyone's word: still plain http.
    assert direct.get(LAUNCH, headers=forwarded, **OUTSIDE).status_code == 403
    proxied = make_app(DATABASE_URL=pg_url, PROXY_FIX=1, **PRODUCTION).test_client()
    behind = proxied.get(LAUNCH, headers=forwarded, **OUTSIDE)
    assert behind.status_code == 400 and "Strict-Transport-Security" in behind.headers


def test_plain_http_stays_open_on_loopback_and_outside_production(make_app, pg_url) -> None:
    production = make_app(DATABASE_URL=pg_url, **PRODUCTION).test_client()
    local = production.get(LAUNCH, base_url="http://127.0.0.1:8000")
    assert local.status_code == 400  # the launch answers: unregistered EHR
    # A loopback Host header from a remote client is not loopback.
    spoofed = production.get(
        LAUNCH, base_url="http://localhost", environ_base={"REMOTE_ADDR": "203.0.113.7"}
    )
    assert spoofed.status_code == 403
    development = make_app(ENV="development", SECRET_KEY="d" * 48).test_client()
    assert development.get(LAUNCH, **OUTSIDE).status_code == 400


# GET pages that carry no patient data and may be cached.
CACHEABLE = {"/static/<path:filename>", "/.well-known/jwks.json", "/l/<launch_id>/style.css"}


def test_every_page_with_patient_data_is_no_store(make_app) -> None:
    app = make_app()
    with serve(app) as url, running_sandbox() as sb:
        connect(app, sb, url, client_id="caredesk-test")
        browser = requests.Session()
        sidebar = browser.get(sb.launch("caredesk-test", patient="pat-001")["url"], timeout=30)
        # The sidebar may be sent before the EHR answered (it fills in); wait=1 waits.
        sidebar = browser.get(sidebar.url + "?wait=1", timeout=30)
        assert sidebar.status_code == 200 and "Okonkwo" in sidebar.text
        launch_id = re.search(r"/l/([^/]+)/", sidebar.url).group(1)  # type: ignore[union-attr]
        # The board belongs to launches without a patient (a scheduler's): its own browser.
        board_browser = requests.Session()
        board = board_browser.get(
            sb.launch("caredesk-test", user="Practitioner/prac-scheduler-ortiz")["url"], timeout=30
        )
        board_launch = re.search(r"/l/([^/]+)/", board.url).group(1)  # type: ignore[union-attr]
        with app.app_context(), get_store(app).session() as session:
            reg_id = session.query(EhrRegistration.id).scalar()
            ticket = open_ticket(
                session,
                registration_id=reg_id,
                patient_ref="Patient/pat-001",
                subject="Call back about billing",
                category="billing",
            )
            session.flush()
            ticket_id = ticket.id
        token, _ = make_invite(app, reg_id)
        values = {
            "launch_id": launch_id,
            "patient_ref": "Patient/pat-001",
            "ticket_id": str(ticket_id),
            "token": token,
            "name": "identity",
        }
        rules = [
            r
            for r in app.url_map.iter_rules()
            if "GET" in (r.methods or ()) and r.rule not in CACHEABLE
        ]
        assert len(rules) >= 20
        seen = {}
        for rule in rules:
            on_board = rule.rule.startswith("/l/<launch_id>/board")
            given = {**values, "launch_id": board_launch} if on_board else values
            path = re.sub(
                r"<(?:[^:>]+:)?([^>]+)>", lambda m, given=given: given[m.group(1)], rule.rule
            )
            # The reports take their launch as a parameter (they are opened from a link).
            params = {"launch": launch_id} if rule.rule.startswith("/reports") else None
            client = board_browser if on_board else browser
            response = client.get(f"{url}{path}", params=params, timeout=30, allow_redirects=False)
            seen[rule.rule] = (response.status_code, response.headers.get("Cache-Control"))
    assert {rule: cache for rule, (_, cache) in seen.items()} == dict.fromkeys(seen, "no-store")
    # They were pages with data, not error pages.
    served = {rule for rule, (status, _) in seen.items() if status == 200}
    assert {
        "/l/<launch_id>/",
        # (The board is 403 under a chart's launch: it lists other patients. Issue 13.)
        "/l/<launch_id>/patient/<path:patient_ref>",
        "/l/<launch_id>/part/<name>",
        "/l/<launch_id>/calls",
        "/l/<launch_id>/tickets/<rowid:ticket_id>",
        "/api/l/<launch_id>/context",
        "/reports/csat",
        "/s/<token>",
    } <= served, seen


def test_no_flask_cookie_session_is_opened_and_writing_one_fails_loudly(
    make_app, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CareDesk keeps nothing in Flask's signed-cookie session (plugin.security
    .NoCookieSession): no request builds its signing serializer, and data put in
    flask.session would be an error, not a cookie the browser can read."""
    from flask import session
    from flask.sessions import SecureCookieSessionInterface

    def refuse(*_args: object) -> None:
        raise AssertionError("a request opened Flask's cookie session")

    monkeypatch.setattr(SecureCookieSessionInterface, "get_signing_serializer", refuse)
    app = make_app()
    client = app.test_client()
    page = client.get("/healthz")
    assert page.status_code == 200 and "Set-Cookie" not in page.headers
    with app.test_request_context("/"):
        assert dict(session) == {}
        with pytest.raises(RuntimeError, match="keeps nothing in Flask's cookie session"):
            session["launch"] = "value"
