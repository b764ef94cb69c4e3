"""fhir_mappers.survey: Questionnaire -> form, form -> answers, answers -> QR (R4B-valid)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

from fhir_mappers import survey as mapper

Q = json.loads((Path(__file__).parents[2] / "helpdesk/data/questionnaire-csat.json").read_text())
SYSTEM = "https://caredesk.example/fhir/sid/survey-invitation"
CHICAGO = timezone(timedelta(hours=-6))
AUTHORED = datetime(2026, 11, 27, 14, 5, 9, tzinfo=CHICAGO)


def test_form_follows_the_questionnaire_items_types_and_bounds() -> None:
    form = mapper.to_form(Q, "en")
    assert [i.link_id for i in form.items] == ["csat", "nps", "comment", "contact-ok"]
    assert [i.type for i in form.items] == ["choice", "integer", "text", "boolean"]
    assert [o.code for o in form.item("csat").options] == ["1", "2", "3", "4", "5"]
    assert (form.item("nps").min_value, form.item("nps").max_value) == (0, 10)
    assert form.item("comment").max_length == 2000
    assert form.item("csat").required and not form.item("nps").required


@pytest.mark.parametrize(
    ("preferred", "language", "title"),
    [
        ("es", "es", "¿Cómo fue su visita?"),
        ("es-MX", "es", "¿Cómo fue su visita?"),
        ("en-US", "en", "How was your visit?"),
        ("vi", "en", "How was your visit?"),  # no Vietnamese translation: the original
        (None, "en", "How was your visit?"),
    ],
)
def test_form_texts_are_in_the_patients_language_when_translated(
    preferred: str | None, language: str, title: str
) -> None:
    form = mapper.to_form(Q, preferred)
    assert (form.language, form.title) == (language, title)


def test_spanish_form_translates_options_too() -> None:
    form = mapper.to_form(Q, "es")
    assert form.item("csat").options[0].display == "Muy insatisfecho"
    assert form.item("csat").options[0].english_display == "Very dissatisfied"
    assert form.item("contact-ok").text.startswith("¿Podemos")


def test_parse_answers_types_each_value_as_declared() -> None:
    form = mapper.to_form(Q, "en")
    answers = mapper.parse_answers(
        form, {"csat": "4", "nps": "9", "comment": "  Kind staff ", "contact-ok": "yes"}
    )
    assert answers.to_json() == {"csat": "4", "nps": 9, "comment": "Kind staff", "contact-ok": True}
    assert (answers.csat, answers.nps, answers.contact_ok) == (4, 9, True)


def test_parse_answers_leaves_out_unanswered_optional_items() -> None:
    answers = mapper.parse_answers(mapper.to_form(Q, "en"), {"csat": "2", "nps": "", "comment": ""})
    assert answers.to_json() == {"csat": "2"}
    assert answers.nps is None and answers.contact_ok is None


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        ({}, {"csat": "required"}),
        ({"csat": "6"}, {"csat": "not one of the options"}),
        ({"csat": "3", "nps": "11"}, {"nps": "out of range"}),
        ({"csat": "3", "nps": "-1"}, {"nps": "out of range"}),
        ({"csat": "3", "nps": "seven"}, {"nps": "not a whole number"}),
        ({"csat": "3", "contact-ok": "maybe"}, {"contact-ok": "not yes or no"}),
        ({"csat": "3", "comment": "x" * 2001}, {"comment": "too long"}),
    ],
)
def test_parse_answers_refuses_what_the_questionnaire_does_not_allow(
    data: dict[str, str], errors: dict[str, str]
) -> None:
    with pytest.raises(mapper.AnswerError) as caught:
        mapper.parse_answers(mapper.to_form(Q, "en"), data)
    assert caught.value.errors == errors


def _qr(answers: dict[str, str | int | bool], **kwargs: object) -> dict:  # type: ignore[type-arg]
    args: dict = dict(  # type: ignore[type-arg]
        questionnaire=Q,
        identifier_system=SYSTEM,
        invite_id="inv-1",
        patient_ref="Patient/pat-001",
        authored=AUTHORED,
    )
    args.update(kwargs)
    return mapper.to_questionnaire_response(answers, **args)


def test_questionnaire_response_is_valid_r4b_with_every_required_element() -> None:
    qr = _qr(
        {"csat": "5", "nps": 10, "comment": "Great", "contact-ok": False},
        encounter_ref="Encounter/enc-1",
        language="es",
    )
    QuestionnaireResponse.model_validate(qr)
    assert qr["status"] == "completed"
    assert qr["questionnaire"] == "https://caredesk.example/fhir/Questionnaire/csat|1.0.0"
    assert qr["identifier"] == {"system": SYSTEM, "value": "inv-1"}
    assert qr["subject"] == {"reference": "Patient/pat-001"}
    assert qr["source"] == {"reference": "Patient/pat-001"}
    assert qr["encounter"] == {"reference": "Encounter/enc-1"}
    assert qr["authored"] == "2026-11-27T14:05:09-06:00"
    assert qr["language"] == "es"
    assert [i["linkId"] for i in qr["item"]] == ["csat", "nps", "comment", "contact-ok"]
    assert [list(i["answer"][0]) for i in qr["item"]] == [
        ["valueCoding"],
        ["valueInteger"],
        ["valueString"],
        ["valueBoolean"],
    ]
    assert qr["item"][0]["answer"][0]["valueCoding"] == {
        "code": "5",
        "system": "https://caredesk.example/fhir/CodeSystem/csat-scale",
        "display": "Very satisfied",
    }
    # The chart shows the Questionnaire's own text even when the patient answered in Spanish.
    assert qr["item"][0]["text"] == "Overall, how satisfied are you with your visit?"


def test_questionnaire_response_omits_unanswered_items_and_unknown_encounter() -> None:
    qr = _qr({"csat": "1"})
    QuestionnaireResponse.model_validate(qr)
    assert [i["linkId"] for i in qr["item"]] == ["csat"]
    assert "encounter" not in qr


@pytest.mark.parametrize(
    ("answers", "kwargs"),
    [
        ({"csat": "9"}, {}),
        ({"csat": "3", "bogus": "x"}, {}),
        ({"csat": "3", "nps": "7"}, {}),
        ({"csat": "3"}, {"authored": datetime(2026, 11, 27, 14, 5)}),
        ({"csat": "3"}, {"invite_id": ""}),
        ({"csat": "3"}, {"patient_ref": ""}),
    ],
)
def test_questionnaire_response_refuses_answers_that_do_not_fit(answers, kwargs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        _qr(answers, **kwargs)


@pytest.mark.parametrize(
    ("csat", "nps", "expected"),
    [
        (1, None, True),
        (2, 10, True),
        (3, None, False),
        (5, 6, True),
        (4, 7, False),
        (None, 0, True),
        (None, None, False),
        (3, 9, False),
    ],
)
def test_recovery_is_for_csat_two_or_less_or_nps_six_or_less(csat, nps, expected) -> None:  # type: ignore[no-untyped-def]
    assert mapper.needs_recovery(csat, nps) is expected
