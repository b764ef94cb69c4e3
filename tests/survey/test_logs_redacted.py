"""No secret and no patient data in any log line after a whole day's flow.

Every logger is captured at DEBUG (CareDesk's, werkzeug's, urllib3's, rq's, the test's own
HTTP client's) while a clinician launches CareDesk from a chart, opens the sidebar, opens a
ticket, queues a follow-up text, sends a survey; the jobs run; the patient opens the link
and answers; the answer is written back to the EHR. Then the log is searched for every
value that must never be there.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import select

from helpdesk import redact
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import EhrRegistration, LaunchSession, OutboundMessage, SurveyResponse
from sandbox.testing import running_sandbox
from smart_launch.tokens import TokenSet
from tests.ehr import connect
from tests.survey.conftest import SURVEY_SCOPES, work

CLIENT_ID = "caredesk-scan"
BACKEND_ID = "caredesk-scan-backend"


@pytest.mark.parametrize(
    ("line", "hidden"),
    [
        ('127.0.0.1 "GET /s/Zk3vQ9x_4mYt-2pLr8sWq1bN7cE0dHfJ" 200', "Zk3vQ9x_4mYt"),
        ("GET /callback?code=abc123&state=st4te HTTP/1.1", "abc123"),
        ("GET /callback?code=abc123&state=st4te HTTP/1.1", "st4te"),
        ("GET /launch?iss=http://ehr/fhir&launch=L4unch HTTP/1.1", "L4unch"),
        ("GET /fhir/Patient?telecom=%2B15550100&_count=1", "15550100"),
        ("GET /fhir/Patient?email=pat%40example.org", "example.org"),
        ("POST /token body: grant_type=refresh_token&refresh_token=r3fr3sh", "r3fr3sh"),
        ("Authorization: Bearer aB.cD-eF_gH", "aB.cD-eF_gH"),
        ('{"access_token": "acc3ss", "token_type": "Bearer"}', "acc3ss"),
        ("id_token eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl here", "eyJzdWIiOi"),
    ],
)
def test_redact_hides_credentials_and_patient_values(line: str, hidden: str) -> None:
    out = redact.redact(line)
    assert hidden not in out and redact.REDACTED in out


def test_redact_escapes_line_breaks_and_keeps_harmless_text() -> None:
    forged = "refused: access_denied\r\n2026-11-30 INFO caredesk: all good"
    assert redact.redact(forged) == "refused: access_denied\\r\\n2026-11-30 INFO caredesk: all good"
    plain = "task 12 (follow-up) done after 1 attempt(s); status_code=200 on queue survey-a1"
    assert redact.redact(plain) == plain


def _add_backend(app, sb) -> None:  # type: ignore[no-untyped-def]
    """The registration's jobs use SMART Backend Services with the same key."""
    with app.app_context(), get_store(app).session() as db:
        reg = db.scalars(select(EhrRegistration)).one()
        reg.backend_client_id = BACKEND_ID
        reg.backend_scopes = SURVEY_SCOPES
        public = dict(reg.signing_keys[0].public_jwk)
    sb.register_client(
        {
            "client_id": BACKEND_ID,
            "type": "confidential-asymmetric",
            "jwks": {"keys": [public]},
            "backend": True,
        }
    )


def _patient_values(sb) -> list[str]:  # type: ignore[no-untyped-def]
    patient = sb.resource("Patient", "pat-001")
    values = []
    for name in patient.get("name") or []:
        values += [name.get("family", ""), *name.get("given", [])]
    for point in patient.get("telecom") or []:
        values.append(point["value"])
        digits = re.sub(r"\D", "", point["value"])
        if len(digits) >= 7:
            values.append(digits[-7:])  # the number however it is formatted
    values += [i["value"] for i in patient.get("identifier") or []]
    return [v for v in values if v and len(v) >= 4]


def test_a_full_flow_leaves_no_secret_or_patient_data_in_the_logs(
    survey_app, served, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    survey_app.config.update(
        SURVEY_QUIET_HOURS="", SURVEY_PUBLIC_URL=served.url, SURVEY_DELAY_MINUTES=0
    )
    with running_sandbox() as sb:
        connect(
            survey_app, sb, served.url, client_id=CLIENT_ID, client_type="confidential-asymmetric"
        )
        _add_backend(survey_app, sb)
        browser = requests.Session()
        launch = sb.launch(CLIENT_ID, patient="pat-001", user="Practitioner/prac-clinician-lee")
        to_authorize = browser.get(launch["url"], allow_redirects=False, timeout=30)
        state = parse_qs(urlsplit(to_authorize.headers["Location"]).query)["state"][0]
        callback = sb.approve(to_authorize.headers["Location"])
        code = parse_qs(urlsplit(callback).query)["code"][0]
        page = browser.get(callback, timeout=30)
        assert page.status_code == 200 and "Okonkwo" in page.text
        launch_id = re.search(r"/l/([^/]+)/", page.url).group(1)  # type: ignore[union-attr]
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        base = f"{served.url}/l/{launch_id}"

        ticket = browser.post(
            f"{served.url}/api/l/{launch_id}/tickets",
            json={"subject": "Bill question", "category": "billing"},
            headers={"X-CSRF-Token": csrf},
            timeout=30,
        )
        assert ticket.status_code == 201
        form = {"csrf_token": csrf, "kind": "follow-up", "reason": "Lab", "due": "in 2 days"}
        assert browser.post(f"{base}/actions/task", data={**form, "channel": "sms"}).ok
        survey = {"csrf_token": csrf, "appointment": "Appointment/appt-pat-001-past"}
        assert browser.post(f"{base}/actions/survey", data=survey, timeout=30).ok
        work(survey_app, include_scheduled=True)

        with get_store(survey_app).session() as db:
            bodies = [
                get_vault(survey_app).decrypt(m.body_enc)
                for m in db.scalars(select(OutboundMessage).order_by(OutboundMessage.id))
            ]
            row = db.get(LaunchSession, launch_id)
            tokens = TokenSet.from_json(get_vault(survey_app).decrypt(row.token_set_enc))
        link = next(m for b in bodies if (m := re.search(r"/s/([A-Za-z0-9_\-]+)", b)))
        token = link.group(1)
        answer_page = requests.get(f"{served.url}/s/{token}", timeout=30)
        assert answer_page.status_code == 200
        survey_csrf = re.search(r'name="csrf" value="([^"]+)"', answer_page.text).group(1)  # type: ignore[union-attr]
        answered = requests.post(
            f"{served.url}/s/{token}",
            data={"csrf": survey_csrf, "csat": "2", "nps": "3", "contact-ok": "yes"},
            timeout=30,
        )
        assert answered.status_code == 200 and "Thank you" in answered.text
        work(survey_app, include_scheduled=True)
        with get_store(survey_app).session() as db:
            assert db.scalars(select(SurveyResponse)).one().writeback_status == "written"
        never = [code, state, launch["launch"], token, tokens.access_token]
        never += [t for t in (tokens.refresh_token, tokens.id_token) if t]
        never += _patient_values(sb)

    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "caredesk.survey" in logged and "urllib3" in logged  # every logger was captured
    found = [value for value in never if value in logged]
    assert found == []
