"""The CSAT survey: Questionnaire -> form, form -> answers, answers -> QuestionnaireResponse.

Pure: dicts in, frozen dataclasses or dicts out, no I/O and no clock. The Questionnaire
decides everything about an item (its type, its options, its bounds, its text in the
patient's language), so a new version of the Questionnaire needs no code change here as
long as its item types are among choice, integer, text, string and boolean.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhir_mappers.contact import match_language, patient_languages
from fhir_mappers.fhirutil import get_dict, get_int, get_list, get_str

QUESTIONNAIRE_URL = "https://caredesk.example/fhir/Questionnaire/csat"
TRANSLATION_EXT = "http://hl7.org/fhir/StructureDefinition/translation"
MIN_VALUE_EXT = "http://hl7.org/fhir/StructureDefinition/minValue"
MAX_VALUE_EXT = "http://hl7.org/fhir/StructureDefinition/maxValue"
SUPPORTED_TYPES = frozenset({"choice", "integer", "text", "string", "boolean"})

# Service recovery thresholds: CSAT 1-2 is "dissatisfied"; NPS 0-6 is a detractor.
CSAT_RECOVERY_MAX = 2
NPS_DETRACTOR_MAX = 6


class AnswerError(ValueError):
    """Form input that does not fit the Questionnaire; ``errors`` maps linkId -> reason."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = dict(errors)


@dataclass(frozen=True)
class Option:
    code: str
    display: str
    system: str | None
    english_display: str | None


@dataclass(frozen=True)
class FormItem:
    link_id: str
    type: str
    text: str
    required: bool
    options: tuple[Option, ...] = ()
    min_value: int | None = None
    max_value: int | None = None
    max_length: int | None = None


@dataclass(frozen=True)
class SurveyForm:
    language: str
    title: str
    items: tuple[FormItem, ...]

    def item(self, link_id: str) -> FormItem:
        return next(i for i in self.items if i.link_id == link_id)


@dataclass(frozen=True)
class Answers:
    """Typed answers by linkId. Unanswered optional items are absent."""

    values: Mapping[str, str | int | bool]

    @property
    def csat(self) -> int | None:
        return _as_int(self.values.get("csat"))

    @property
    def nps(self) -> int | None:
        return _as_int(self.values.get("nps"))

    @property
    def comment(self) -> str | None:
        value = self.values.get("comment")
        return value if isinstance(value, str) else None

    @property
    def contact_ok(self) -> bool | None:
        value = self.values.get("contact-ok")
        return value if isinstance(value, bool) else None

    def to_json(self) -> dict[str, str | int | bool]:
        return dict(self.values)


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def needs_recovery(csat: int | None, nps: int | None) -> bool:
    """A low score opens a service-recovery ticket."""
    return (csat is not None and csat <= CSAT_RECOVERY_MAX) or (
        nps is not None and nps <= NPS_DETRACTOR_MAX
    )


def canonical(questionnaire: Mapping[str, Any]) -> str:
    """``url|version``: a response must say which version of the questions it answers."""
    url = questionnaire.get("url")
    if not isinstance(url, str) or not url:
        raise ValueError("the Questionnaire has no url")
    version = questionnaire.get("version")
    return f"{url}|{version}" if isinstance(version, str) and version else url


class QuestionnaireError(ValueError):
    """A Questionnaire CareDesk cannot render (not an object, or an item type it does not
    support). A ValueError, as before, so existing callers keep catching it."""


def _base_language(language: str | None) -> str:
    return (language or "en").split("-")[0].lower()


def _own_language(questionnaire: object) -> str:
    return _base_language(get_str(questionnaire, "language") or "en")


def _part(ext: Mapping[str, Any], url: str) -> Mapping[str, Any] | None:
    return next((p for p in get_list(ext, "extension") if get_str(p, "url") == url), None)


def _translated(parent: Mapping[str, Any], name: str, language: str) -> str | None:
    """The ``_name`` translation extension's content for ``language``, else the plain value."""
    plain = parent.get(name)
    for ext in get_list(get_dict(parent, f"_{name}"), "extension"):
        if get_str(ext, "url") != TRANSLATION_EXT:
            continue
        lang = get_str(_part(ext, "lang"), "valueCode")
        content = get_str(_part(ext, "content"), "valueString")
        if lang is not None and _base_language(lang) == language and content:
            return content
    return plain if isinstance(plain, str) else None


def _ext_int(item: Mapping[str, Any], url: str) -> int | None:
    for ext in get_list(item, "extension"):
        if get_str(ext, "url") == url:
            value = get_int(ext, "valueInteger")
            if value is not None:
                return value
    return None


def supported_languages(questionnaire: Mapping[str, Any]) -> frozenset[str]:
    """The Questionnaire's own language plus every language its title is translated to."""
    found = {_own_language(questionnaire)}
    for ext in get_list(get_dict(questionnaire, "_title"), "extension"):
        code = get_str(_part(ext, "lang"), "valueCode")
        if code is not None:
            found.add(_base_language(code))
    return frozenset(found)


def pick_language(questionnaire: Mapping[str, Any], preferred: str | None) -> str:
    """The patient's language when the Questionnaire has it, else the Questionnaire's own."""
    found = match_language(preferred, sorted(supported_languages(questionnaire)))
    return found or _own_language(questionnaire)


def language_for_patient(questionnaire: Mapping[str, Any], patient: object) -> str:
    """The survey language for a Patient: any language they speak (preferred first) that
    the Questionnaire is translated to, else the Questionnaire's own."""
    found = match_language(patient_languages(patient), sorted(supported_languages(questionnaire)))
    return found or _own_language(questionnaire)


def to_form(questionnaire: Mapping[str, Any], language: str | None) -> SurveyForm:
    """The items to render, with texts in ``language`` (falling back to the original).

    Raises QuestionnaireError (a ValueError) when the Questionnaire is not a JSON object
    or has an item whose type CareDesk cannot render: a survey silently missing a
    question would be worse than none. Everything else odd is read as far as it goes.
    """
    if not isinstance(questionnaire, Mapping):
        raise QuestionnaireError("the Questionnaire is not a JSON object")
    lang = pick_language(questionnaire, language)
    items: list[FormItem] = []
    for raw in get_list(questionnaire, "item"):
        link_id, item_type = raw.get("linkId"), raw.get("type")
        if (
            not isinstance(link_id, str)
            or not isinstance(item_type, str)
            or (item_type not in SUPPORTED_TYPES)
        ):
            raise QuestionnaireError(
                f"unsupported Questionnaire item {str(link_id)[:64]!r} of type "
                f"{str(item_type)[:64]!r}"
            )
        options: list[Option] = []
        for opt in get_list(raw, "answerOption"):
            coding = get_dict(opt, "valueCoding")
            code = coding.get("code") if coding is not None else None
            if coding is None or not isinstance(code, str):
                continue
            display = coding.get("display")
            system = coding.get("system")
            options.append(
                Option(
                    code=code,
                    display=_translated(coding, "display", lang) or code,
                    system=system if isinstance(system, str) else None,
                    english_display=display if isinstance(display, str) else None,
                )
            )
        items.append(
            FormItem(
                link_id=link_id,
                type=item_type,
                text=_translated(raw, "text", lang) or link_id,
                required=raw.get("required") is True,
                options=tuple(options),
                min_value=_ext_int(raw, MIN_VALUE_EXT),
                max_value=_ext_int(raw, MAX_VALUE_EXT),
                max_length=get_int(raw, "maxLength"),
            )
        )
    title = _translated(questionnaire, "title", lang) or ""
    return SurveyForm(language=lang, title=title, items=tuple(items))


# Form values for booleans: radio buttons post "yes" or "no"; nothing chosen is no answer.
_YES = frozenset({"yes", "true", "1", "si", "sí"})
_NO = frozenset({"no", "false", "0"})


def parse_answers(form: SurveyForm, data: Mapping[str, str]) -> Answers:
    """Check posted form values against the Questionnaire; raise AnswerError listing each
    problem. Keys are linkIds; values are strings as a browser posts them."""
    values: dict[str, str | int | bool] = {}
    errors: dict[str, str] = {}
    for item in form.items:
        raw = data.get(item.link_id)
        text = raw.strip() if isinstance(raw, str) else ""
        if not text:
            if item.required:
                errors[item.link_id] = "required"
            continue
        if item.type == "choice":
            if text not in {o.code for o in item.options}:
                errors[item.link_id] = "not one of the options"
                continue
            values[item.link_id] = text
        elif item.type == "integer":
            if not text.lstrip("-").isdigit():
                errors[item.link_id] = "not a whole number"
                continue
            number = int(text)
            if (item.min_value is not None and number < item.min_value) or (
                item.max_value is not None and number > item.max_value
            ):
                errors[item.link_id] = "out of range"
                continue
            values[item.link_id] = number
        elif item.type == "boolean":
            lowered = text.lower()
            if lowered not in _YES | _NO:
                errors[item.link_id] = "not yes or no"
                continue
            values[item.link_id] = lowered in _YES
        else:  # text, string
            if item.max_length is not None and len(text) > item.max_length:
                errors[item.link_id] = "too long"
                continue
            values[item.link_id] = text
    if errors:
        raise AnswerError(errors)
    return Answers(values)


def _iso(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("authored must be an aware datetime")
    return moment.isoformat(timespec="seconds")


def _answer(item: FormItem, value: str | int | bool) -> dict[str, Any]:
    if item.type == "choice":
        option = next((o for o in item.options if o.code == value), None)
        if option is None:
            raise ValueError(f"answer {value!r} is not an option of {item.link_id}")
        coding: dict[str, Any] = {"code": option.code}
        if option.system:
            coding["system"] = option.system
        # The chart shows the display: use the Questionnaire's (English) one, like the
        # answerOption it was chosen from, not the translation the patient saw.
        if option.english_display:
            coding["display"] = option.english_display
        return {"valueCoding": coding}
    if item.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"answer to {item.link_id} must be an integer")
        return {"valueInteger": value}
    if item.type == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"answer to {item.link_id} must be a boolean")
        return {"valueBoolean": value}
    if not isinstance(value, str) or not value:
        raise ValueError(f"answer to {item.link_id} must be a non-empty string")
    return {"valueString": value}


@dataclass(frozen=True)
class ResponseForms:
    """What a QuestionnaireResponse takes from its Questionnaire, for answers in one
    language: the form the patient answered, the item texts in the Questionnaire's own
    language (what the care team reads in the chart), the canonical it answers, and the
    language it declares (None when none was asked for)."""

    form: SurveyForm
    original: SurveyForm
    canonical: str
    language: str | None


def response_forms(questionnaire: Mapping[str, Any], language: str | None) -> ResponseForms:
    """``ResponseForms`` of ``questionnaire`` for answers in ``language``: the same for
    every answer, so a caller with one Questionnaire may keep them."""
    form = to_form(questionnaire, language)
    return ResponseForms(
        form=form,
        original=to_form(questionnaire, None),
        canonical=canonical(questionnaire),
        language=form.language if language else None,
    )


def to_questionnaire_response(
    answers: Mapping[str, str | int | bool],
    *,
    questionnaire: Mapping[str, Any],
    identifier_system: str,
    invite_id: str,
    patient_ref: str,
    authored: dt.datetime,
    encounter_ref: str | None = None,
    language: str | None = None,
) -> dict[str, Any]:
    """A completed QuestionnaireResponse for stored answers.

    The identifier (CareDesk's system + the invitation id) is what makes write-back
    idempotent: a retry searches for it, and conditional create matches on it.
    Items follow the Questionnaire's order; each answer has the type the item declares.
    """
    return questionnaire_response(
        answers,
        response_forms(questionnaire, language),
        identifier_system=identifier_system,
        invite_id=invite_id,
        patient_ref=patient_ref,
        authored=authored,
        encounter_ref=encounter_ref,
    )


def questionnaire_response(
    answers: Mapping[str, str | int | bool],
    forms: ResponseForms,
    *,
    identifier_system: str,
    invite_id: str,
    patient_ref: str,
    authored: dt.datetime,
    encounter_ref: str | None = None,
) -> dict[str, Any]:
    """``to_questionnaire_response`` with the Questionnaire read already (``forms``)."""
    if not invite_id:
        raise ValueError("invite_id is required")
    if not patient_ref:
        raise ValueError("patient_ref is required")
    form, original = forms.form, forms.original
    items: list[dict[str, Any]] = []
    for item in form.items:
        if item.link_id not in answers:
            continue
        items.append(
            {
                "linkId": item.link_id,
                "text": original.item(item.link_id).text,
                "answer": [_answer(item, answers[item.link_id])],
            }
        )
    unknown = set(answers) - {i.link_id for i in form.items}
    if unknown:
        raise ValueError(f"answers to items the Questionnaire does not have: {sorted(unknown)}")
    subject = {"reference": patient_ref}
    resource: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "identifier": {"system": identifier_system, "value": invite_id},
        "questionnaire": forms.canonical,
        "status": "completed",
        "subject": subject,
        "authored": _iso(authored),
        # The patient answered on their own phone: they are the source, not the author
        # of record of a clinician-entered form.
        "source": dict(subject),
        "item": items,
    }
    if forms.language:
        resource["language"] = forms.language
    if encounter_ref:
        resource["encounter"] = {"reference": encounter_ref}
    return resource
