"""SMART launches of the whole app against the sandbox EHR, over real HTTP.

A requests.Session plays the browser: it keeps cookies and follows redirects, so what is
exercised is exactly what a browser in the EHR iframe would do.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import select

from helpdesk import registry
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import EhrRegistration, LaunchSession, SigningKey
from plugin.launch import COOKIE
from sandbox.testing import running_sandbox
from smart_launch.keys import generate_signing_key
from smart_launch.tokens import TokenSet
from tests.ehr import CLIENT_SECRET as SECRET
from tests.ehr import connect
from tests.live import serve

CLIENT_ID = "caredesk-test"
PATIENT = "pat-001"


@dataclass
class Env:
    app: object
    url: str
    sb: object

    def session(self) -> requests.Session:
        return requests.Session()


def _register(
    app,
    sb,
    url: str,
    client_type: str,
    *,
    scopes: str | None = None,  # type: ignore[no-untyped-def]
    sandbox_scopes: str | None = None,
) -> None:
    connect(
        app,
        sb,
        url,
        client_id=CLIENT_ID,
        client_type=client_type,
        scopes=scopes,
        sandbox_scopes=sandbox_scopes,
    )


@pytest.fixture
def live(make_app) -> Iterator[tuple]:  # type: ignore[no-untyped-def,type-arg]
    app = make_app(LOG_LEVEL="DEBUG")
    with serve(app) as url:
        yield app, url


def _ehr_launch(
    sb,
    url: str,
    browser: requests.Session,
    patient: str | None = PATIENT,  # type: ignore[no-untyped-def]
    user: str = "Practitioner/prac-clinician-lee",
) -> requests.Response:
    launch = sb.launch(CLIENT_ID, patient=patient, user=user)
    assert launch["url"].startswith(f"{url}/launch?")
    return browser.get(launch["url"], timeout=30)


def _launch_row(app, launch_url: str) -> LaunchSession:  # type: ignore[no-untyped-def]
    launch_id = re.search(r"/l/([^/]+)/", launch_url).group(1)  # type: ignore[union-attr]
    with get_store(app).session() as session:
        row = session.get(LaunchSession, launch_id)
        assert row is not None
        return row


CLIENT_TYPES = ["public", "confidential-symmetric", "confidential-asymmetric"]


@pytest.mark.parametrize("client_type", CLIENT_TYPES)
@pytest.mark.parametrize("profile", ["smart", "epic", "oracle"])
def test_ehr_launch_reaches_the_patient(live, profile: str, client_type: str) -> None:
    app, url = live
    with running_sandbox(profile=profile) as sb:
        _register(app, sb, url, client_type)
        browser = requests.Session()
        page = _ehr_launch(sb, url, browser)
        assert page.status_code == 200, page.text[:500]
        assert "/l/" in page.url
        # Read from the sandbox with the launch's token (?wait=1: the first page may be
        # sent before the EHR answers, and a busy machine makes that likely).
        assert "Okonkwo" in browser.get(page.url + "?wait=1", timeout=30).text
        row = _launch_row(app, page.url)
        assert row.status == "active" and row.patient_ref == f"Patient/{PATIENT}"
        assert row.fhir_user and "prac-clinician-lee" in row.fhir_user
        assert row.token_set_enc and b"access_token" not in row.token_set_enc
        assert sb.stats()["token_requests"]["authorization_code"] == 1


@pytest.mark.parametrize("client_type", CLIENT_TYPES)
@pytest.mark.parametrize("profile", ["smart", "epic", "oracle"])
def test_standalone_launch_with_patient_picker(live, profile: str, client_type: str) -> None:
    app, url = live
    with running_sandbox(profile=profile) as sb:
        _register(app, sb, url, client_type)
        browser = requests.Session()
        start = browser.get(f"{url}/start?ehr=sb", allow_redirects=False, timeout=30)
        assert start.status_code == 302
        authorize = start.headers["Location"]
        assert "launch=" not in authorize
        callback = sb.approve(authorize, user="prac-scheduler-ortiz", patient="pat-002")
        page = browser.get(callback, timeout=30)
        assert page.status_code == 200, page.text[:500]
        assert "Hernández" in browser.get(page.url + "?wait=1", timeout=30).text


@pytest.mark.parametrize("profile", ["smart", "epic", "oracle"])
def test_expired_access_token_is_refreshed_on_the_next_page(live, profile: str) -> None:
    app, url = live
    with running_sandbox(profile=profile) as sb:
        _register(app, sb, url, "confidential-symmetric")
        browser = requests.Session()
        page = _ehr_launch(sb, url, browser)
        assert page.status_code == 200
        before = _launch_row(app, page.url)
        old = TokenSet.from_json(get_vault(app).decrypt(before.token_set_enc))
        assert old.refresh_token  # epic: issued although offline_access is not in the scope
        refreshes = sb.stats()["token_requests"]["refresh_token"]
        # The EHR ends the access token (its clock passed the expiry); no sleeping.
        assert sb.expire_tokens() >= 1
        # Past the context cache, and waiting for the EHR (the page may otherwise be sent
        # before the EHR answered and fill in by script).
        again = browser.get(page.url + "?refresh=1&wait=1", timeout=30)
        assert again.status_code == 200 and "Okonkwo" in again.text
        assert sb.stats()["token_requests"]["refresh_token"] == refreshes + 1
        after = TokenSet.from_json(get_vault(app).decrypt(_launch_row(app, page.url).token_set_enc))
        assert after.access_token != old.access_token


def test_unregistered_iss_is_refused_without_any_outbound_request(live) -> None:
    app, url = live
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    connections: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            connections.append(conn)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        response = requests.get(
            f"{url}/launch",
            params={"iss": f"http://127.0.0.1:{port}/fhir", "launch": "x"},
            allow_redirects=False,
            timeout=30,
            headers={"Accept": "text/html"},
        )
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert response.status_code == 400
    assert "not registered" in response.text
    assert "Location" not in response.headers
    assert connections == []


def test_state_is_single_use(live) -> None:
    app, url = live
    with running_sandbox() as sb:
        _register(app, sb, url, "public")
        browser = requests.Session()
        launch = sb.launch(CLIENT_ID, patient=PATIENT)
        to_authorize = browser.get(launch["url"], allow_redirects=False, timeout=30)
        callback = sb.approve(to_authorize.headers["Location"])
        assert browser.get(callback, timeout=30).status_code == 200
        replay = browser.get(callback, timeout=30, headers={"Accept": "text/html"})
        assert replay.status_code == 400
        assert "already used" in replay.text


def test_unknown_state_is_refused(live) -> None:
    _, url = live
    response = requests.get(
        f"{url}/callback",
        params={"code": "c", "state": "made-up"},
        timeout=30,
        headers={"Accept": "text/html"},
    )
    assert response.status_code == 400
    assert "unknown or was already used" in response.text


def test_callback_from_another_browser_is_refused(live) -> None:
    app, url = live
    with running_sandbox() as sb:
        _register(app, sb, url, "public")
        victim = requests.Session()
        launch = sb.launch(CLIENT_ID, patient=PATIENT)
        to_authorize = victim.get(launch["url"], allow_redirects=False, timeout=30)
        callback = sb.approve(to_authorize.headers["Location"])
        attacker = requests.Session()
        response = attacker.get(callback, timeout=30, headers={"Accept": "text/html"})
        assert response.status_code == 400
        assert "did not start in this browser" in response.text


def test_a_callback_replayed_from_another_browser_does_not_use_up_the_state(live) -> None:
    """Someone holding the victim's callback URL cannot burn its state: the browser is
    checked before the state is used up, so the victim's own callback still works."""
    app, url = live
    with running_sandbox() as sb:
        _register(app, sb, url, "public")
        victim = requests.Session()
        launch = sb.launch(CLIENT_ID, patient=PATIENT)
        to_authorize = victim.get(launch["url"], allow_redirects=False, timeout=30)
        callback = sb.approve(to_authorize.headers["Location"])
        attacker = requests.Session()
        attacker.cookies.set(COOKIE, "A" * 43)
        assert attacker.get(callback, timeout=30).status_code == 400
        page = victim.get(callback, timeout=30)
        assert page.status_code == 200
        # (?wait=1: the page waits for the EHR's reads, so the name is on it.)
        assert "Okonkwo" in victim.get(page.url + "?wait=1", timeout=30).text
        assert sb.stats()["token_requests"]["authorization_code"] == 1


def test_a_planted_cookie_binds_nothing(live) -> None:
    """Session fixation: the attacker plants a cookie value in the victim's browser and
    learns the launch id; the server issued the launch a fresh secret at /launch, so the
    planted value plus the launch id opens nothing (401)."""
    app, url = live
    planted = "P" * 43
    with running_sandbox() as sb:
        _register(app, sb, url, "public")
        victim = requests.Session()
        victim.cookies.set(COOKIE, planted)
        launch = sb.launch(CLIENT_ID, patient=PATIENT)
        to_authorize = victim.get(launch["url"], allow_redirects=False, timeout=30)
        assert COOKIE in to_authorize.headers["Set-Cookie"]
        assert planted not in to_authorize.headers["Set-Cookie"]  # not kept: it binds nothing
        page = victim.get(sb.approve(to_authorize.headers["Location"]), timeout=30)
        assert page.status_code == 200
        assert "Okonkwo" in victim.get(page.url + "?wait=1", timeout=30).text
        row = _launch_row(app, page.url)
        assert row.browser_hash != hashlib.sha256(planted.encode()).hexdigest()
        attacker = requests.Session()
        attacker.cookies.set(COOKIE, planted)
        stolen = attacker.get(page.url, timeout=30, headers={"Accept": "text/html"})
        assert stolen.status_code == 401
        api = attacker.get(page.url.replace("/l/", "/api/l/") + "tickets", timeout=30)
        assert api.status_code == 401
        # The launch keeps working in the victim's browser.
        assert victim.get(page.url, timeout=30).status_code == 200


def test_access_denied_callback_shows_a_clear_page(live) -> None:
    _, url = live
    response = requests.get(
        f"{url}/callback",
        params={"error": "access_denied", "error_description": "The user declined.", "state": "s"},
        timeout=30,
        headers={"Accept": "text/html"},
    )
    assert response.status_code == 403
    assert "did not authorize CareDesk (access_denied)" in response.text
    assert "The user declined." in response.text


def test_ehr_error_text_is_quoted_attributed_and_stripped_of_control_characters(
    live, caplog
) -> None:
    _, url = live
    caplog.set_level(logging.INFO)
    params = {
        "error": "access_denied\r\nX-Injected: yes",
        "error_description": "Ask <b>IT</b>\x1b[31m\r\n2026-11-30 INFO forged log line",
        "state": "s",
    }
    page = requests.get(f"{url}/callback", params=params, timeout=30)
    assert page.status_code == 403
    said = re.search(r'data-testid="ehr-said">(.*?)</figure>', page.text, re.S)
    assert said is not None  # the EHR's words stand apart, under "The EHR said:"
    assert "The EHR said:" in said.group(1)
    assert "Ask &lt;b&gt;IT&lt;/b&gt; [31m 2026-11-30 INFO forged log line" in said.group(1)
    mine = page.text.split('data-testid="ehr-said"')[0]
    assert "forged" not in mine  # CareDesk's own sentence does not carry the EHR's text
    assert "X-Injected" not in page.text and "\x1b" not in page.text
    body = requests.get(
        f"{url}/callback", params=params, timeout=30, headers={"Accept": "application/json"}
    ).json()["error"]
    assert body["code"] == "authorization_denied"
    assert "access_denied" in body["message"] and "X-Injected" not in body["message"]
    assert body["ehr_text"] == "Ask <b>IT</b> [31m 2026-11-30 INFO forged log line"
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message and "\r" not in message and "X-Injected" not in message


def test_fewer_scopes_granted_runs_and_says_what_is_missing(live) -> None:
    app, url = live
    with running_sandbox() as sb:
        limited = " ".join(s for s in registry.DEFAULT_SCOPES.split() if "Coverage" not in s)
        _register(app, sb, url, "public", sandbox_scopes=limited)
        browser = requests.Session()
        page = _ehr_launch(sb, url, browser)
        assert page.status_code == 200
        page = browser.get(page.url + "?wait=1", timeout=30)
        assert "Okonkwo" in page.text
        assert "patient/Coverage.rs" in page.text  # named as not available


def test_two_tabs_keep_two_patients_apart(live) -> None:
    app, url = live
    with running_sandbox() as sb:
        _register(app, sb, url, "public")
        browser = requests.Session()
        first = _ehr_launch(sb, url, browser, patient="pat-001")
        second = _ehr_launch(sb, url, browser, patient="pat-002")
        assert first.url != second.url
        assert "Okonkwo" in browser.get(first.url, timeout=30).text
        assert "Hernández" in browser.get(second.url, timeout=30).text
        stranger = requests.Session().get(first.url, timeout=30, headers={"Accept": "text/html"})
        assert stranger.status_code == 401


def test_cookie_is_httponly_and_lax_on_plain_http_loopback(live) -> None:
    app, url = live
    with running_sandbox() as sb:
        _register(app, sb, url, "public")
        launch = sb.launch(CLIENT_ID, patient=PATIENT)
        response = requests.get(launch["url"], allow_redirects=False, timeout=30)
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_cookie_is_secure_samesite_none_partitioned_over_https(app) -> None:
    with app.app_context(), get_store(app).session() as session:
        registry.upsert(
            session, get_vault(app), slug="x", iss="https://ehr.invalid/fhir", client_id="c"
        )
    # No EHR answers at ehr.invalid: discovery is primed in the cache, as after an
    # earlier launch, so the test sees the redirect and the cookie over https.
    from smart_launch.discovery import parse_smart_configuration

    conf = parse_smart_configuration(
        {
            "issuer": "https://ehr.invalid",
            "authorization_endpoint": "https://ehr.invalid/authorize",
            "token_endpoint": "https://ehr.invalid/token",
            "capabilities": ["permission-v2"],
            "code_challenge_methods_supported": ["S256"],
        },
        fhir_base="https://ehr.invalid/fhir",
        document_url="https://ehr.invalid/fhir/.well-known/smart-configuration",
    )
    app.extensions["caredesk.ehr"].discovery.put("https://ehr.invalid/fhir", conf, {})
    response = app.test_client().get(
        "/launch?iss=https://ehr.invalid/fhir&launch=abc", base_url="https://caredesk.example"
    )
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    for part in ("Secure", "HttpOnly", "SameSite=None", "Partitioned"):
        assert part in cookie


def test_no_token_secret_or_code_reaches_the_logs(live, caplog) -> None:
    app, url = live
    caplog.set_level(logging.DEBUG)
    with running_sandbox() as sb:
        _register(app, sb, url, "confidential-symmetric")
        browser = requests.Session()
        launch = sb.launch(CLIENT_ID, patient=PATIENT)
        to_authorize = browser.get(launch["url"], allow_redirects=False, timeout=30)
        callback = sb.approve(to_authorize.headers["Location"])
        code = parse_qs(urlsplit(callback).query)["code"][0]
        page = browser.get(callback, timeout=30)
        first = TokenSet.from_json(get_vault(app).decrypt(_launch_row(app, page.url).token_set_enc))
        sb.expire_tokens()  # the next read is refused and the token refreshed
        assert browser.get(page.url + "?refresh=1", timeout=30).status_code == 200
        second = TokenSet.from_json(
            get_vault(app).decrypt(_launch_row(app, page.url).token_set_enc)
        )
    secrets_seen = [
        code,
        SECRET,
        first.access_token,
        first.refresh_token,
        second.access_token,
        second.refresh_token,
        launch["launch"],
    ]
    app_port = url.rsplit(":", 1)[1]

    def from_the_test_browser(record: logging.LogRecord) -> bool:
        # urllib3 also logs the requests this test's own "browser" makes (to CareDesk and
        # to the EHR's authorize page); those URLs carry the code by design of OAuth.
        message = record.getMessage()
        return record.name.startswith("urllib3") and (
            f":{app_port} " in message
            or '"GET /auth/authorize' in message
            or "/auth/authorize/decide" in message
        )

    app_records = [r for r in caplog.records if not from_the_test_browser(r)]
    text = "\n".join(r.getMessage() + str(r.args) for r in app_records)
    assert any(r.name.startswith("smart_launch") for r in app_records)  # DEBUG was captured
    for value in secrets_seen:
        assert value and value not in text


def test_jwks_publishes_current_and_retired_keys(app, client) -> None:
    with app.app_context(), get_store(app).session() as session:
        reg = registry.upsert(
            session, get_vault(app), slug="k", iss="https://k/fhir", client_id="c"
        )
        for alg in ("RS384", "ES384"):
            key = generate_signing_key(alg)
            reg.signing_keys.append(
                SigningKey(
                    kid=key.kid,
                    alg=alg,
                    private_key_enc=get_vault(app).encrypt(key.private_pem),
                    public_jwk=key.public_jwk(),
                )
            )
    keys = client.get("/.well-known/jwks.json").get_json()["keys"]
    assert {k["alg"] for k in keys} == {"RS384", "ES384"}
    assert all("kid" in k and "d" not in k for k in keys)
    with get_store(app).session() as session:
        assert session.scalars(select(EhrRegistration)).one().signing_keys


def test_ehr_signing_keys_are_fetched_before_the_token_exchange(live) -> None:
    """Cold launch: the JWKS fetch overlaps the user's trip to the authorize page, so
    verifying the id_token adds no round trip after the token exchange."""
    app, url = live
    with running_sandbox(latency_ms=100) as sb:
        _register(app, sb, url, "public")
        sb.clear_requests()
        page = _ehr_launch(sb, url, requests.Session())
        assert page.status_code == 200
        log = sb.requests()
    token = next(r for r in log if r["path"] == "/auth/token")
    jwks = [r for r in log if r["path"] == "/auth/jwks"]
    assert len(jwks) == 1
    assert jwks[0]["start"] < token["start"]


def test_a_launch_idle_for_twelve_hours_needs_a_new_launch(live) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from helpdesk.timeutil import utcnow

    app, url = live
    with running_sandbox() as sb:
        _register(app, sb, url, "public")
        browser = requests.Session()
        page = _ehr_launch(sb, url, browser)
        assert browser.get(page.url, timeout=30).status_code == 200
        launch = _launch_row(app, page.url)
        with get_store(app).session() as session:
            session.execute(
                update(LaunchSession)
                .where(LaunchSession.id == launch.id)
                .values(last_seen_at=utcnow() - timedelta(hours=13))
            )
        stale = browser.get(page.url, timeout=30, headers={"Accept": "text/html"})
        assert stale.status_code == 401
        assert "12 hours without use" in stale.text
        ended = _launch_row(app, page.url)
        assert ended.status == "ended"
        assert ended.token_set_enc is not None  # kept for jobs this launch queued


@pytest.mark.parametrize("banner", [True, False])
def test_patient_banner_follows_need_patient_banner(live, banner: bool) -> None:
    app, url = live
    with running_sandbox() as sb:
        _register(app, sb, url, "public")
        launch = requests.post(
            f"{sb.base_url}/admin/launch",
            json={"client_id": CLIENT_ID, "patient": PATIENT, "need_patient_banner": banner},
            timeout=30,
        ).json()
        page = requests.Session().get(launch["url"], timeout=30)
    assert page.status_code == 200
    # Identity is always shown; a full banner when the EHR asks for one, else one line.
    assert 'data-testid="patient-name"' in page.text
    assert ("cd-id--compact" in page.text) is not banner
