"""Every answer the survey form accepts builds a QuestionnaireResponse that is valid R4B.

The write-back job no longer validates the resource it sends with fhir.resources (issue
16): this is what that validation used to check at run time, proven here once for the
whole space of answers instead. Each case goes the way a real answer goes: posted form
values -> ``parse_answers`` (the survey page) -> JSON in the store -> the rows ->
``build_questionnaire_response`` (the write-back job), with CareDesk's default identifier
system.
"""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_mappers import survey as mapper
from helpdesk.models import SurveyInvite, SurveyResponse
from helpdesk.surveys import build_questionnaire_response, questionnaire
from plugin.config import defaults

SYSTEM = str(defaults("")["SURVEY_IDENTIFIER_SYSTEM"])
Q = questionnaire()
LANGUAGES = sorted(mapper.supported_languages(Q))
FORM = mapper.to_form(Q, None)
CSAT = [o.code for o in FORM.item("csat").options]
NPS = ["", *(str(n) for n in range(FORM.item("nps").min_value or 0, 11))]
# Nothing chosen, yes, no (the other spellings parse_answers takes give the same booleans).
CONTACT = ["", "yes", "no"]
COMMENTS = ["", "Great visit", "  padded  ", "x" * (FORM.item("comment").max_length or 2000)]
ENCOUNTERS = [None, "Encounter/enc-pat-001-past"]
WHEN = [
    datetime(2026, 11, 27, 14, 5, 9, 123456, tzinfo=timezone(timedelta(hours=-6))),
    datetime(2026, 3, 8, 8, 0, tzinfo=UTC),
]


def _build(
    posted: dict[str, str], *, language: str, encounter: str | None, authored: datetime
) -> dict[str, object]:
    answers = mapper.parse_answers(mapper.to_form(Q, language), posted)
    stored = json.loads(json.dumps(answers.to_json()))  # as the store keeps them
    invite = SurveyInvite(
        id=uuid.uuid4().hex,
        registration_id=1,
        patient_ref="Patient/pat-001",
        encounter_ref=encounter,
        language=language,
    )
    response = SurveyResponse(
        invite_id=invite.id,
        answers=stored,
        csat=answers.csat,
        nps=answers.nps,
        comment=answers.comment,
        contact_ok=answers.contact_ok,
        submitted_at=authored,
    )
    return build_questionnaire_response(response, invite, identifier_system=SYSTEM)


def test_every_accepted_answer_builds_a_valid_r4b_resource() -> None:
    cases = 0
    for csat, nps, contact, comment, language, encounter in itertools.product(
        CSAT, NPS, CONTACT, COMMENTS, LANGUAGES, ENCOUNTERS
    ):
        posted = {"csat": csat, "nps": nps, "contact-ok": contact, "comment": comment}
        resource = _build(posted, language=language, encounter=encounter, authored=WHEN[0])
        QuestionnaireResponse.model_validate(resource)
        cases += 1
    assert cases == len(CSAT) * len(NPS) * len(CONTACT) * len(COMMENTS) * len(LANGUAGES) * 2


@pytest.mark.parametrize("contact", ["Sí", "si", "true", "false", "1", "0", "YES"])
@pytest.mark.parametrize("authored", WHEN)
def test_other_spellings_and_times_build_a_valid_r4b_resource(
    contact: str, authored: datetime
) -> None:
    posted = {"csat": "2", "nps": "0", "contact-ok": contact}
    resource = _build(posted, language="es", encounter=None, authored=authored)
    QuestionnaireResponse.model_validate(resource)


# Any text a browser can post (no lone surrogates: the page decodes UTF-8), including
# Unicode spaces and control characters fhir.resources' string pattern treats apart.
ODD = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\u00a0", "\u2028", "\x0b", "\x0c", "\x1c", "\x00", "\t", "\r", "\n"]),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(comment=ODD, language=st.sampled_from(LANGUAGES))
def test_any_comment_the_form_accepts_builds_a_valid_r4b_resource(
    comment: str, language: str
) -> None:
    posted = {"csat": "3", "comment": comment}
    resource = _build(posted, language=language, encounter=None, authored=WHEN[0])
    QuestionnaireResponse.model_validate(resource)


@pytest.mark.parametrize("comment", ["\u00a0", "\u2028 \x0b", "\x1c\t\r\n"])
def test_a_comment_of_unicode_spaces_only_is_no_comment(comment: str) -> None:
    # fhir.resources refuses a string of these alone; the form drops them as blank.
    resource = _build(
        {"csat": "3", "comment": comment}, language="en", encounter=None, authored=WHEN[0]
    )
    QuestionnaireResponse.model_validate(resource)
    assert [i["linkId"] for i in resource["item"]] == ["csat"]  # type: ignore[index]
