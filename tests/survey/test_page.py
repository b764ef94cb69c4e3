"""The public survey page over real HTTP: scanners, CSRF, single use, expiry, limits.
(What a low score opens, and when: tests/survey/test_recovery.py.)"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import time_machine
from sqlalchemy import func, select

from helpdesk.db import get_store
from helpdesk.models import CareTask, EhrRegistration, SurveyInvite, SurveyResponse, Ticket
from plugin.survey import csrf_token
from tests.survey.conftest import CLINIC, make_invite

CHICAGO = ZoneInfo("America/Chicago")


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the form"
    return found.group(1)


def _counts(app) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    with get_store(app).session() as s:
        return (
            s.scalar(select(func.count()).select_from(SurveyResponse)) or 0,
            s.scalar(select(func.count()).select_from(Ticket)) or 0,
            s.scalar(select(func.count()).select_from(CareTask)) or 0,
        )


def test_get_shows_the_form_with_clinic_and_visit_date_and_records_nothing(
    survey_app, reg_id, served
) -> None:
    visit = datetime(2026, 11, 20, 9, 30, tzinfo=CHICAGO)
    token, invite_id = make_invite(survey_app, reg_id, visit_at=visit)
    for _ in range(3):  # a link scanner fetching the page again and again
        page = served.http.get(f"{served.url}/s/{token}")
        assert page.status_code == 200
    html = page.text
    assert CLINIC in html and "November 20, 2026" in html
    assert "pat-001" not in html and "Dr. Ana Lee" not in html  # no other PHI, no ids
    assert 'lang="en"' in html and 'method="post"' in html
    assert "<script" not in html and "style=" not in html  # CSP: no inline script or style
    assert page.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert _counts(survey_app) == (0, 0, 0)
    with get_store(survey_app).session() as s:
        invite = s.get(SurveyInvite, invite_id)
        assert invite.status == "sent" and invite.answered_at is None


def test_page_is_in_spanish_for_a_spanish_speaking_patient(survey_app, reg_id, served) -> None:
    token, _ = make_invite(
        survey_app, reg_id, language="es", visit_at=datetime(2026, 11, 20, 9, tzinfo=CHICAGO)
    )
    html = served.http.get(f"{served.url}/s/{token}").text
    assert 'lang="es"' in html
    assert "¿Cómo fue su visita?" in html and "20 de noviembre de 2026" in html
    assert "Muy insatisfecho" in html and "Enviar mis respuestas" in html


def test_answer_is_recorded_once_and_a_reused_link_says_it_was_answered(
    survey_app, reg_id, served
) -> None:
    token, invite_id = make_invite(survey_app, reg_id)
    url = f"{served.url}/s/{token}"
    csrf = _csrf(served.http.get(url).text)
    form = {"csrf": csrf, "csat": "5", "nps": "10", "comment": "Lovely", "contact-ok": "no"}
    done = served.http.post(url, data=form)
    assert done.status_code == 200 and "Thank you" in done.text
    again = served.http.post(url, data=form)
    assert again.status_code == 200 and "already been answered" in again.text
    assert "already been answered" in served.http.get(url).text
    with get_store(survey_app).session() as s:
        responses = s.scalars(select(SurveyResponse)).all()
        assert len(responses) == 1
        r = responses[0]
        assert (r.invite_id, r.csat, r.nps, r.comment, r.contact_ok) == (
            invite_id,
            5,
            10,
            "Lovely",
            False,
        )
        assert r.answers == {"csat": "5", "nps": 10, "comment": "Lovely", "contact-ok": False}
        assert s.get(SurveyInvite, invite_id).status == "answered"
        # High scores: no recovery, one write-back task queued.
        assert s.scalar(select(func.count()).select_from(Ticket)) == 0
        tasks = s.scalars(select(CareTask)).all()
        assert [(t.kind, t.payload) for t in tasks] == [("survey-writeback", {"response_id": r.id})]
        assert tasks[0].job_id  # dispatched to RQ after the commit


def test_post_without_or_with_a_wrong_csrf_token_is_refused_and_records_nothing(
    survey_app, reg_id, served
) -> None:
    token, invite_id = make_invite(survey_app, reg_id)
    other_token, other_id = make_invite(survey_app, reg_id, patient_ref="Patient/pat-002")
    url = f"{served.url}/s/{token}"
    answers = {"csat": "1", "nps": "0", "contact-ok": "yes"}
    missing = served.http.post(url, data=answers)
    assert missing.status_code == 400 and "open the link" in missing.text.lower()
    forged = served.http.post(url, data={**answers, "csrf": "0" * 64})
    assert forged.status_code == 400
    # A valid token of another invitation does not open this one.
    borrowed = served.http.post(
        url, data={**answers, "csrf": csrf_token(other_id, survey_app.config["SECRET_KEY"])}
    )
    assert borrowed.status_code == 400
    assert _counts(survey_app) == (0, 0, 0)
    with get_store(survey_app).session() as s:
        assert s.get(SurveyInvite, invite_id).status == "sent"


def test_made_up_token_gets_a_friendly_page_and_records_nothing(survey_app, reg_id, served) -> None:
    make_invite(survey_app, reg_id)
    for path in ("/s/not-a-real-token", "/s/" + "A" * 43):
        page = served.http.get(served.url + path)
        assert page.status_code == 404
        assert "not valid" in page.text and "Traceback" not in page.text
        posted = served.http.post(served.url + path, data={"csat": "1", "csrf": "x"})
        assert posted.status_code == 404
    assert _counts(survey_app) == (0, 0, 0)


def test_a_link_that_was_never_sent_is_not_valid(survey_app, reg_id, served) -> None:
    token, _ = make_invite(survey_app, reg_id, status="skipped")
    assert served.http.get(f"{served.url}/s/{token}").status_code == 404


def test_expired_link_gets_a_friendly_page_and_a_post_records_nothing(
    survey_app, reg_id, served
) -> None:
    sent = datetime(2026, 11, 1, 10, 0, tzinfo=CHICAGO)
    with time_machine.travel(sent, tick=False):
        token, invite_id = make_invite(survey_app, reg_id, sent_at=sent, link_days=7)
        url = f"{served.url}/s/{token}"
        csrf = _csrf(served.http.get(url).text)
    # One second before the 7 days are up the form still opens; at the deadline it does not.
    with time_machine.travel(sent + timedelta(days=7, seconds=-1), tick=False):
        assert served.http.get(url).status_code == 200
    with time_machine.travel(sent + timedelta(days=7), tick=False):
        page = served.http.get(url)
        assert page.status_code == 410 and "expired" in page.text
        posted = served.http.post(url, data={"csrf": csrf, "csat": "1"})
        assert posted.status_code == 410
    assert _counts(survey_app) == (0, 0, 0)
    with get_store(survey_app).session() as s:
        assert s.get(SurveyInvite, invite_id).status == "sent"


def test_invalid_answers_show_the_form_again_with_the_problem_marked(
    survey_app, reg_id, served
) -> None:
    token, _ = make_invite(survey_app, reg_id)
    url = f"{served.url}/s/{token}"
    csrf = _csrf(served.http.get(url).text)
    page = served.http.post(url, data={"csrf": csrf, "nps": "7", "comment": "kept"})
    assert page.status_code == 422
    assert 'id="err-csat"' in page.text and "Please choose an answer." in page.text
    assert 'value="7" checked' in page.text and ">kept</textarea>" in page.text
    assert _counts(survey_app) == (0, 0, 0)


def test_ehr_that_cannot_take_the_write_keeps_the_answer_marked_not_written_back(
    survey_app, reg_id, served
) -> None:
    with get_store(survey_app).session() as s:
        reg = s.get(EhrRegistration, reg_id)
        reg.capabilities = {
            "features": {
                "survey write-back": {
                    "works": False,
                    "blocked_by": ["QuestionnaireResponse create"],
                }
            }
        }
    token, _ = make_invite(survey_app, reg_id)
    url = f"{served.url}/s/{token}"
    csrf = _csrf(served.http.get(url).text)
    assert served.http.post(url, data={"csrf": csrf, "csat": "4"}).status_code == 200
    with get_store(survey_app).session() as s:
        r = s.scalars(select(SurveyResponse)).one()
        assert r.writeback_status == "not-supported"
        assert "QuestionnaireResponse create" in r.writeback_error
        assert s.scalar(select(func.count()).select_from(CareTask)) == 0


def test_requests_beyond_the_per_link_limit_are_refused(survey_app, reg_id, served) -> None:
    survey_app.config["SURVEY_RATE_PER_TOKEN"] = 3
    token, _ = make_invite(survey_app, reg_id)
    other, _ = make_invite(survey_app, reg_id, patient_ref="Patient/pat-002")
    with time_machine.travel(datetime(2026, 11, 27, 10, 0, 5, tzinfo=CHICAGO), tick=False):
        codes = [served.http.get(f"{served.url}/s/{token}").status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        # Another link from the same address is still fine (per-IP limit is higher).
        assert served.http.get(f"{served.url}/s/{other}").status_code == 200
    # A minute after those requests the (moving) window has let them go.
    with time_machine.travel(datetime(2026, 11, 27, 10, 1, 6, tzinfo=CHICAGO), tick=False):
        assert served.http.get(f"{served.url}/s/{token}").status_code == 200


def test_requests_beyond_the_per_ip_limit_are_refused_even_for_made_up_tokens(
    survey_app, reg_id, served
) -> None:
    survey_app.config["SURVEY_RATE_PER_IP"] = 4
    with time_machine.travel(datetime(2026, 11, 27, 10, 0, 5, tzinfo=CHICAGO), tick=False):
        codes = [served.http.get(f"{served.url}/s/guess-{i}").status_code for i in range(6)]
    assert codes == [404, 404, 404, 404, 429, 429]
