"""How (and whether) CareDesk may reach a patient: the one reading of contact restrictions,
preferred language, contact points and first name, shared by the sidebar, the board,
reminders, surveys and follow-up messages.

Contact restrictions are not core FHIR R4. CareDesk reads them from its own Patient
extension, one extension per restriction:

    {"url": "https://caredesk.example/fhir/StructureDefinition/contact-restriction",
     "valueCoding": {"code": "no-sms"}}        (or "valueCode": "no-sms")

EHR interfaces send either form, so both are read (an earlier survey reader took only
`valueCoding`, and a `valueCode: no-contact` patient was then surveyed anyway).

Pure: dicts in, values out, an explicit `now` where time matters; never raises on JSON.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_mappers.fhirutil import (
    codes,
    concept_text,
    date_bounds,
    get_dict,
    get_int,
    get_list,
    get_str,
    get_str_list,
    parse_datetime,
)
from fhir_mappers.records import quick_init

CONTACT_RESTRICTION_URL = "https://caredesk.example/fhir/StructureDefinition/contact-restriction"
INTERPRETER_REQUIRED_URL = "http://hl7.org/fhir/StructureDefinition/patient-interpreterRequired"
BCP47 = "urn:ietf:bcp:47"

NO_CONTACT = "no-contact"  # no messages, no calls, no surveys
NO_SMS = "no-sms"
NO_EMAIL = "no-email"
NO_CALL = "no-call"
NO_SURVEY = "no-survey"
# Codes CareDesk acts on. `no-phone` is read as `no-call` (both are seen in the wild).
RESTRICTION_CODES = (NO_CONTACT, NO_SMS, NO_EMAIL, NO_CALL, NO_SURVEY)
RESTRICTION_TEXT = {
    NO_CONTACT: "Do not contact",
    NO_SMS: "Do not text",
    NO_EMAIL: "Do not email",
    NO_CALL: "Do not call",
    NO_SURVEY: "No surveys",
}
_SYNONYMS = {"no-phone": NO_CALL}
# What each restriction blocks. A survey is sent by text or email, so those block it
# only when every channel is gone (that is `reachable`'s business), not here.
_BLOCKS = {
    NO_CONTACT: frozenset({"sms", "email", "phone", "survey"}),
    NO_SMS: frozenset({"sms"}),
    NO_EMAIL: frozenset({"email"}),
    NO_CALL: frozenset({"phone"}),
    NO_SURVEY: frozenset({"survey"}),
}

# Message channels (what `reachable` offers); calls are placed by people, not jobs.
MESSAGE_CHANNELS = ("sms", "email")


# --- restrictions ------------------------------------------------------------------------


def restrictions_of(patient: object) -> tuple[str, ...]:
    """The patient's contact-restriction codes, in the order the EHR sent them, once each.

    Read from `valueCode`, `valueCoding.code` or `valueCodeableConcept.coding[].code`;
    `no-phone` comes back as `no-call`. Codes CareDesk does not know are kept (the sidebar
    shows them) but block nothing.
    """
    found: list[str] = []
    for ext in get_list(patient, "extension"):
        if get_str(ext, "url") != CONTACT_RESTRICTION_URL:
            continue
        raw = [get_str(ext, "valueCode"), get_str(get_dict(ext, "valueCoding"), "code")]
        raw += [code for _, code in codes(get_dict(ext, "valueCodeableConcept"))]
        for code in raw:
            if code is None:
                continue
            code = _SYNONYMS.get(code, code)
            if code not in found:
                found.append(code)
    return tuple(found)


def is_deceased(patient: object) -> bool:
    """`deceasedBoolean: true` or any `deceasedDateTime`."""
    if type(patient) is not dict and not isinstance(patient, Mapping):
        return False
    return (
        patient.get("deceasedBoolean") is True or get_str(patient, "deceasedDateTime") is not None
    )


def blocked(patient: object) -> frozenset[str]:
    """What may not be used for this patient: a subset of sms, email, phone, survey.

    A deceased patient is reached by nothing: a reminder or a survey sent to the phone of
    someone who died is the one message a family remembers.
    """
    if is_deceased(patient):
        return frozenset({"sms", "email", "phone", "survey"})
    return blocked_by(restrictions_of(patient))


def blocked_by(restrictions: Iterable[str]) -> frozenset[str]:
    """What a set of restriction codes blocks (see `blocked`)."""
    out: set[str] = set()
    for code in restrictions:
        out |= _BLOCKS.get(_SYNONYMS.get(code, code), _NONE)
    return frozenset(out) if out else _NONE


_NONE: frozenset[str] = frozenset()


def may_sms(patient: object) -> bool:
    """May CareDesk text this patient (restrictions and death only; not whether a mobile
    number is on file: see `reachable`)."""
    return "sms" not in blocked(patient)


def may_email(patient: object) -> bool:
    """May CareDesk email this patient (restrictions and death only)."""
    return "email" not in blocked(patient)


def may_call(patient: object) -> bool:
    """May staff phone this patient (restrictions and death only)."""
    return "phone" not in blocked(patient)


def may_survey(patient: object) -> bool:
    """May CareDesk send this patient a satisfaction survey (`no-survey`, `no-contact` and
    death say no; the channel is then chosen by `reachable`)."""
    return "survey" not in blocked(patient)


# --- language ----------------------------------------------------------------------------


def _language_code(communication: Mapping[str, Any]) -> str | None:
    pairs = codes(communication.get("language"))
    for system, code in pairs:
        if system == BCP47:
            return code
    return pairs[0][1] if pairs else None


def patient_languages(patient: object) -> tuple[str, ...]:
    """Every language code in `Patient.communication`, the preferred ones first (then in the
    EHR's order), once each, as written (`es`, `es-MX`)."""
    comms = get_list(patient, "communication")
    ordered = sorted(comms, key=lambda c: c.get("preferred") is not True)
    found: list[str] = []
    for comm in ordered:
        code = _language_code(comm)
        if code and code not in found:
            found.append(code)
    return tuple(found)


def preferred_communication(patient: object) -> Mapping[str, Any] | None:
    """The `Patient.communication` marked `preferred`, else the first one; None if none."""
    comms = get_list(patient, "communication")
    for comm in comms:
        if comm.get("preferred") is True:
            return comm
    return comms[0] if comms else None


def language_code(communication: Mapping[str, Any] | None) -> str | None:
    """A communication's language code as written (`es`, `es-MX`), the BCP-47 coding when
    there are several."""
    return _language_code(communication) if communication is not None else None


def language_text(communication: Mapping[str, Any] | None) -> str | None:
    """Words for a communication's language (`Spanish`), from the EHR's text or display."""
    return concept_text(get_dict(communication, "language"))


def preferred_language(patient: object) -> str | None:
    """The patient's preferred language code as written (`es`, `es-MX`): the communication
    marked `preferred`, else the first one; the BCP-47 coding when there are several."""
    return language_code(preferred_communication(patient))


def preferred_language_text(patient: object) -> str | None:
    """Words for the preferred language (`Spanish`), from the EHR's text or display."""
    return language_text(preferred_communication(patient))


def base_language(code: str) -> str:
    """`es-MX` -> `es`; `EN` -> `en`."""
    return code.strip().split("-")[0].split("_")[0].lower()


def match_language(wanted: Sequence[str] | str | None, available: Sequence[str]) -> str | None:
    """The first of `wanted` (in order) that `available` has, exactly (ignoring case) or by
    base language (`es-MX` finds `es`, `es` finds `es-MX`); returned as `available` spells
    it. None when nothing fits."""
    if wanted is None:
        return None
    wants = [wanted] if isinstance(wanted, str) else list(wanted)
    offered = [a for a in available if isinstance(a, str) and a.strip()]
    for want in wants:
        if not isinstance(want, str) or not want.strip():
            continue
        key = want.strip().lower()
        for exact in offered:
            if exact.strip().lower() == key:
                return exact
        base = base_language(want)
        for loose in offered:
            if base_language(loose) == base:
                return loose
    return None


def pick_language(patient: object, available: Sequence[str], *, default: str | None = None) -> str:
    """The language to write to this patient in, among `available` (e.g. the languages a
    message template exists in): any language the patient speaks, preferred first, else
    `default`, else the first available, else `en`."""
    found = match_language(patient_languages(patient), available)
    if found is not None:
        return found
    if default is not None:
        return default
    return next((a for a in available if isinstance(a, str) and a.strip()), "en")


def interpreter_required(patient: object) -> bool | None:
    """The core `patient-interpreterRequired` extension's value; None when not sent."""
    for ext in get_list(patient, "extension"):
        if get_str(ext, "url") == INTERPRETER_REQUIRED_URL:
            value = ext.get("valueBoolean")
            if isinstance(value, bool):
                return value
    return None


def needs_interpreter(
    preferred: str | None, required: bool | None, clinic_languages: Sequence[str] = ("en",)
) -> bool:
    """The rule behind `interpreter_needed`, on values already read from the Patient."""
    if required is not None:
        return required
    if preferred is None:
        return False
    return match_language(preferred, clinic_languages) is None


def interpreter_needed(patient: object, clinic_languages: Sequence[str] = ("en",)) -> bool:
    """Does a visit with this patient need an interpreter?

    The core `patient-interpreterRequired` extension decides when present (true or
    false); otherwise an interpreter is needed when the preferred language is none of the
    clinic's (by base language: `en-US` is English). No language on file: not needed.
    """
    return needs_interpreter(
        preferred_language(patient), interpreter_required(patient), clinic_languages
    )


# --- names -------------------------------------------------------------------------------


def _name_is_current(name: Mapping[str, Any], today: dt.date | None) -> bool:
    if get_str(name, "use") in ("old", "maiden"):
        return False
    end = get_str(get_dict(name, "period"), "end")
    if end is None or today is None:
        return True
    bounds = date_bounds(end)
    return bounds is None or bounds[1] >= today


def first_name(patient: object, *, today: dt.date | None = None) -> str | None:
    """What to call the patient in a message: the first given name of the usual name, else
    the official one, else any current name; None when there is none.

    Old and maiden names never, nor (with `today`) names whose period has ended.
    """
    names = [n for n in get_list(patient, "name") if _name_is_current(n, today)]
    rank = {"usual": 0, "nickname": 1, "official": 2}
    names.sort(key=lambda n: rank.get(get_str(n, "use") or "", 3))
    for name in names:
        given = get_str_list(name, "given")
        if given:
            return given[0]
    return None


# --- contact points ----------------------------------------------------------------------


def is_current(element: Mapping[str, Any], now: dt.datetime) -> bool:
    """False for a ContactPoint/Address whose period has ended (kept in charts as history)."""
    raw = get_str(get_dict(element, "period"), "end")
    if raw is None:
        return True
    if "T" not in raw:
        # A date (or partial date) end means "through that day / month".
        bounds = date_bounds(raw)
        return bounds is None or bounds[1] >= now.date()
    end = parse_datetime(raw, now.tzinfo or dt.UTC)
    return end is None or end > now


# A usable contact point with its fields read once: (the point, `system`, `value`, `use`,
# `rank`); `system` and `use` stripped, None when absent; `rank` None unless an integer.
ContactPoint = tuple[Mapping[str, Any], str | None, str, str | None, int | None]


def contact_points(patient: object, now: dt.datetime) -> list[ContactPoint]:
    """The patient's usable contact points, best first: with a value, not `old`, period not
    ended; by `rank` (1 is best; unranked after ranked), then in the EHR's order.

    One pass that reads each field of a point once: the Patient mapper reads every point
    of every patient of a page (issue 16 §2).
    """
    current: list[tuple[int, int, ContactPoint]] = []
    ranked = False
    for i, cp in enumerate(get_list(patient, "telecom")):
        value = get_str(cp, "value")
        if not value:
            continue
        use = get_str(cp, "use")
        if use == "old" or (cp.get("period") is not None and not is_current(cp, now)):
            continue
        rank = get_int(cp, "rank")
        order = rank if rank is not None and rank > 0 else 1_000_000
        ranked = ranked or order != 1_000_000
        current.append((order, i, (cp, get_str(cp, "system"), value, use, rank)))
    if ranked:
        current.sort()  # by (rank, position): no two positions tie
    return [found for _, _, found in current]


def current_telecoms(patient: object, now: dt.datetime) -> list[Mapping[str, Any]]:
    """`contact_points`, as the points themselves."""
    return [found[0] for found in contact_points(patient, now)]


def channel_for(point: Mapping[str, Any], blocked_channels: frozenset[str]) -> str | None:
    """The channel a contact point offers, given what is blocked; None if none allowed.

    A mobile number is taken as textable: that is what reminders use first. If texting is
    refused, the same number can still be called.
    """
    return channel_of(get_str(point, "system"), get_str(point, "use"), blocked_channels)


def channel_of(system: str | None, use: str | None, blocked_channels: frozenset[str]) -> str | None:
    """`channel_for` on a point's `system` and `use`, already read."""
    if system == "sms" or (system == "phone" and use == "mobile"):
        if "sms" not in blocked_channels:
            return "sms"
        return "phone" if system == "phone" and "phone" not in blocked_channels else None
    if system == "phone":
        return None if "phone" in blocked_channels else "phone"
    if system == "email":
        return None if "email" in blocked_channels else "email"
    return None


def preferred_channel(patient: object, now: dt.datetime) -> str | None:
    """sms | phone | email: how to reach the patient first, or None when nothing on file
    may be used."""
    banned = blocked(patient)
    for point in current_telecoms(patient, now):
        found = channel_for(point, banned)
        if found:
            return found
    return None


def reachable_by_phone(patient: object, now: dt.datetime) -> bool:
    """Is there a number on file that staff may call or text?"""
    banned = blocked(patient)
    for point in current_telecoms(patient, now):
        if get_str(point, "system") in ("phone", "sms") and channel_for(point, banned):
            return True
    return False


@quick_init
@dataclass(frozen=True)
class Reachable:
    channel: str  # sms | email
    address: str


def reachable(
    patient: object, *, now: dt.datetime, requested: str | None = None
) -> list[Reachable]:
    """Channels a message to the patient may go on, best first, one address per channel.

    The patient's preferred channel comes first (the one the sidebar shows), then telecom
    `rank`, then the EHR's order. Home and work lines are called, not texted, so only a
    mobile `phone` or an `sms` point counts for SMS. Restrictions (`no-contact` included)
    and death remove channels. `requested` narrows the list to that channel.
    """
    banned = blocked(patient)
    points = current_telecoms(patient, now)
    first: str | None = None
    for point in points:
        first = channel_for(point, banned)
        if first:
            break
    candidates: list[tuple[int, int, str, str]] = []
    for index, point in enumerate(points):
        system = get_str(point, "system")
        if system == "email":
            channel = "email"
        elif system == "sms" or (system == "phone" and get_str(point, "use") == "mobile"):
            channel = "sms"
        else:
            continue
        if channel in banned or (requested and channel != requested):
            continue
        candidates.append(
            (0 if channel == first else 1, index, channel, get_str(point, "value") or "")
        )
    out: list[Reachable] = []
    for _, _, channel, address in sorted(candidates):
        if not any(r.channel == channel for r in out):
            out.append(Reachable(channel, address))
    return out
