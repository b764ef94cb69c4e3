"""The public survey page a patient opens from the invitation: ``/s/<token>``.

No login: the link token is the credential (random, stored only as its SHA-256, single
use, expiring). A GET only shows the form and records nothing, so mail and SMS link
scanners cannot answer for the patient; the answer is a POST carrying a CSRF token bound
to the invitation. Both are rate-limited per client address, per link and per EHR
(``plugin.ratelimit``, counted in Redis across processes). The page shows the
clinic and the visit date and nothing else about the patient.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from functools import lru_cache
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, current_app, g, make_response, render_template, request
from flask_limiter.errors import RateLimitExceeded
from itsdangerous import Signer

from fhir_mappers import survey as mapper
from fhir_mappers.fhirutil import zone
from helpdesk import i18n
from helpdesk import surveys as domain
from helpdesk.db import get_db
from helpdesk.surveys import LinkInvite
from helpdesk.timeutil import utcnow
from jobs import outbox

bp = Blueprint("survey", __name__)
log = logging.getLogger("caredesk.survey")


# Page chrome in the patient's language (English here; the translations are in the
# message catalogs, helpdesk/translations/<lang>.po); the questions come from the
# Questionnaire.
TEXT: dict[str, str] = {
    "intro": "Your visit at {clinic} on {date}. Three short questions; it takes a minute.",
    "intro_no_date": "Your visit at {clinic}. Three short questions; it takes a minute.",
    "the_clinic": "our clinic",
    "submit": "Send my answers",
    "optional": "optional",
    "yes": "Yes",
    "no": "No",
    "nps_low": "0 = not at all likely",
    "nps_high": "10 = extremely likely",
    "fix": "Please check the answers marked below.",
    "required": "Please choose an answer.",
    "invalid": "This answer could not be used.",
    "thanks_title": "Thank you!",
    "thanks": "Your answers were sent to your care team. You can close this page.",
    "done_title": "Already answered",
    "done": "This survey has already been answered. Thank you for your time.",
    "expired_title": "This survey link has expired",
    "expired": "Survey links stay open for a few days. Thank you for visiting us.",
    "unknown_title": "This survey link is not valid",
    "unknown": "Please check that the whole link was opened. Nothing was recorded.",
    "stale_title": "Please open the survey again",
    "stale": "This form could not be accepted. Open the link from your message again.",
    "busy_title": "Too many requests",
    "busy": "Please wait a minute and try again.",
}


def _lang(language: str | None) -> str:
    return i18n.language(language)


def _text(lang: str) -> dict[str, str]:
    return {key: i18n.gettext(lang, english) for key, english in TEXT.items()}


def _visit_date(invite: LinkInvite, lang: str) -> str | None:
    if invite.visit_at is None:
        return None
    tz = zone(invite.timezone) or ZoneInfo(str(current_app.config["VIEWER_TIMEZONE"]))
    return i18n.long_date(invite.visit_at.astimezone(tz).date(), lang)


@lru_cache(maxsize=64)
def _form(language: str | None) -> mapper.SurveyForm:
    """The form in a language (frozen; the Questionnaire is package data): built once
    per language, not per request."""
    return mapper.to_form(domain.questionnaire(), language)


def _form_signer(secret_key: str | None = None) -> Signer:
    secret = str(secret_key or current_app.config["SECRET_KEY"])
    return Signer(secret, salt="caredesk-survey-form", digest_method=hashlib.sha256)


def csrf_token(invite_id: str, secret_key: str | None = None) -> str:
    """The form's CSRF token: the invitation id signed with the secret key (itsdangerous),
    so it needs no cookie (the page is opened from a message, often in an in-app browser
    that drops cookies)."""
    return _form_signer(secret_key).get_signature(invite_id).decode("ascii")


def _csrf_ok(invite_id: str, sent: str) -> bool:
    return bool(sent) and _form_signer().verify_signature(
        invite_id, sent.encode("ascii", "replace")
    )


def _message(lang: str, key: str, status: int) -> Response:
    """A page that says one thing (thank you, already answered, expired, ...). Its HTML
    depends only on the language, the message and where the app is mounted, so each is
    rendered once per app and kept: the thank-you page of a burst of answers costs no
    template rendering (unless templates reload, as in development)."""
    pages: dict[tuple[str, str, str], str] = current_app.extensions.setdefault(
        "caredesk.survey_pages", {}
    )
    cache_key = (lang, key, request.script_root)
    page = pages.get(cache_key)
    if page is None:
        text = _text(lang)
        page = render_template(
            "survey/message.html",
            lang=lang,
            title=text[f"{key}_title"],
            message=text[key],
            kind=key,
        )
        if not current_app.jinja_env.auto_reload:
            pages[cache_key] = page
    return make_response(page, status)


@bp.errorhandler(RateLimitExceeded)
def _busy(exc: RateLimitExceeded) -> Response:
    # The limits are plugin.ratelimit's (per address, per link, per EHR); the answer is
    # this page's own, sized for a phone (Retry-After is added by the limiter).
    return _message("en", "busy", 429)


def find_invite(token: str) -> LinkInvite | None:
    """The invitation of a link token, looked up once per request: the rate limiter's
    per-EHR key (``plugin.ratelimit``) and the view share it."""
    found: dict[str, LinkInvite | None] = g.setdefault("survey_invites", {})
    if token not in found:
        found[token] = domain.find_by_token(get_db(), token)
    return found[token]


def _state(invite: LinkInvite | None, now: dt.datetime) -> str:
    if invite is None or invite.status in ("pending", "skipped"):
        return "unknown"
    if invite.status == "answered":
        return "done"
    if invite.status == "expired" or invite.expires_at is None or invite.expires_at <= now:
        return "expired"
    return "open"


_STATE_STATUS = {"unknown": 404, "done": 200, "expired": 410}


def _form_page(
    invite: LinkInvite,
    lang: str,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    form = _form(invite.language)
    text = _text(lang)
    date = _visit_date(invite, lang)
    clinic = invite.clinic_name or text["the_clinic"]
    intro = (
        text["intro"].format(clinic=clinic, date=date)
        if date
        else text["intro_no_date"].format(clinic=clinic)
    )
    return make_response(
        render_template(
            "survey/form.html",
            lang=lang,
            text=text,
            intro=intro,
            form=form,
            csrf=csrf_token(invite.id),
            values=values or {},
            errors=errors or {},
        ),
        status,
    )


@bp.get("/s/<token>")
def show(token: str) -> Response:
    invite = find_invite(token)
    lang = _lang(invite.language if invite else None)
    state = _state(invite, utcnow())
    if state != "open" or invite is None:
        return _message(lang, state, _STATE_STATUS[state])
    return _form_page(invite, lang)


@bp.post("/s/<token>")
def answer(token: str) -> Response:
    session = get_db()
    now = utcnow()
    invite = find_invite(token)
    lang = _lang(invite.language if invite else None)
    state = _state(invite, now)
    if state != "open" or invite is None:
        return _message(lang, state, _STATE_STATUS[state])
    posted = request.form.get("csrf", "")
    if not _csrf_ok(invite.id, posted):
        log.info("survey answer refused: missing or wrong CSRF token")
        return _message(lang, "stale", 400)
    form = _form(invite.language)
    values = {item.link_id: request.form.get(item.link_id, "") for item in form.items}
    try:
        answers = mapper.parse_answers(form, values)
    except mapper.AnswerError as exc:
        text = _text(lang)
        errors = {
            k: text["required"] if v == "required" else text["invalid"]
            for k, v in exc.errors.items()
        }
        return _form_page(invite, lang, values=values, errors=errors, status=422)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        # The task's job id goes on its row in the answer's own transaction: one commit,
        # then the enqueue (a burst of answers is mostly round trips to the store).
        answered = domain.record_answer(session, invite, answers, now=now)
        session.commit()
    except domain.NotAnswerable:
        session.rollback()
        return _message(lang, "done", 200)
    log.info("survey answered: invite %s, response %s", invite.id, answered.response_id)
    if answered.writeback_task_id is not None:
        job = outbox.pending_inserted(
            answered.writeback_task_id,
            registration_id=invite.registration_id,
            kind=domain.WRITEBACK_KIND,
            app=app,
        )
        outbox.enqueue([job], app=app)
    return _message(lang, "thanks", 200)
