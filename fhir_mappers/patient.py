"""Patient -> Contact: who the patient is and how (and how not) to reach them.

The rules (restrictions, language, which contact point comes first) are
`fhir_mappers.contact`'s; this module only assembles them with the name, MRN, age and
address into what the sidebar shows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhir_mappers import issues
from fhir_mappers.contact import (
    blocked_by,
    channel_of,
    contact_points,
    is_current,
    is_deceased,
    language_code,
    language_text,
    preferred_communication,
    restrictions_of,
)
from fhir_mappers.contact import interpreter_required as interpreter_required_of
from fhir_mappers.fhirutil import (
    date_bounds,
    get_list,
    get_str,
    get_str_list,
    human_name,
    identifier_of_type,
    require_aware,
)
from fhir_mappers.issues import DataWarning
from fhir_mappers.records import quick_init


@quick_init
@dataclass(frozen=True)
class Telecom:
    system: str  # phone | sms | email (FHIR ContactPoint.system)
    value: str
    use: str | None
    rank: int | None
    preferred: bool  # the contact point the preferred channel uses


@quick_init
@dataclass(frozen=True)
class PostalAddress:
    text: str  # one line, for display
    lines: tuple[str, ...]
    city: str | None
    state: str | None
    postal_code: str | None
    country: str | None
    use: str | None


@quick_init
@dataclass(frozen=True)
class Contact:
    patient_id: str | None
    display_name: str | None
    preferred_name: str | None
    mrn: str | None
    birth_date: str | None  # as written; may be partial (`1980-07`)
    age: int | None
    age_is_approximate: bool  # a partial birthDate that straddles a birthday
    gender: str | None
    deceased: bool
    interpreter_required: bool | None  # the core interpreterRequired extension, when sent
    preferred_language: str | None  # BCP-47 code, e.g. `es`
    language_display: str | None
    phones: tuple[Telecom, ...]
    emails: tuple[Telecom, ...]
    preferred_channel: str | None  # sms | phone | email | None (no allowed channel)
    phone_reachable: bool  # a current number staff may call or text
    restrictions: tuple[str, ...]  # e.g. ("no-sms",); see fhir_mappers.contact
    address: PostalAddress | None
    warnings: tuple[DataWarning, ...]


def _age_on(birth: dt.date, today: dt.date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def _telecoms(
    resource: Mapping[str, Any], now: dt.datetime, banned: frozenset[str]
) -> tuple[tuple[Telecom, ...], tuple[Telecom, ...], str | None, bool]:
    """Phones and emails, best first; the preferred channel (the first point that offers
    one); whether a number may be called or texted. Each point is read once."""
    phones: list[Telecom] = []
    emails: list[Telecom] = []
    preferred: Mapping[str, Any] | None = None
    channel: str | None = None
    by_phone = False
    for point, system, value, use, rank in contact_points(resource, now):
        found = channel_of(system, use, banned)
        if preferred is None and found:
            preferred, channel = point, found
        telecom = Telecom(system or "", value, use, rank, point is preferred)
        if system in ("phone", "sms"):
            by_phone = by_phone or found is not None
            phones.append(telecom)
        elif system == "email":
            emails.append(telecom)
    return tuple(phones), tuple(emails), channel, by_phone


def _preferred_name(resource: Mapping[str, Any], display: str | None) -> str | None:
    for name in get_list(resource, "name"):
        if get_str(name, "use") not in ("usual", "nickname"):
            continue
        given = get_str_list(name, "given")
        text = given[0] if given else get_str(name, "text")
        official_first = (display or "").split(" ")[0]
        if text and text != official_first and text != display:
            return text
    return None


def _address(resource: Mapping[str, Any], now: dt.datetime) -> PostalAddress | None:
    """The first current address that says something, a home address before the others."""
    homes: list[Mapping[str, Any]] = []
    others: list[Mapping[str, Any]] = []
    for addr in get_list(resource, "address"):
        use = get_str(addr, "use")
        if use == "old" or (addr.get("period") is not None and not is_current(addr, now)):
            continue
        (homes if use == "home" else others).append(addr)
    for addr in (*homes, *others):
        lines = tuple(get_str_list(addr, "line"))
        city, state = get_str(addr, "city"), get_str(addr, "state")
        postal, country = get_str(addr, "postalCode"), get_str(addr, "country")
        # "Chicago, IL 60640": each part only when it is there.
        region = f"{state} {postal}" if state and postal else state or postal or ""
        place = f"{city}, {region}" if city and region else city or region
        built = ", ".join((*lines, place)) if place else ", ".join(lines)
        if country and country.upper() not in ("US", "USA"):
            built = f"{built}, {country}" if built else country
        text = get_str(addr, "text") or built
        if text:
            return PostalAddress(text, lines, city, state, postal, country, get_str(addr, "use"))
    return None


def to_contact(resource: Mapping[str, Any], *, now: dt.datetime) -> Contact:
    """Map a Patient. Never raises on odd data; what is missing comes back as warnings."""
    require_aware(now)
    warn = issues.Warnings("Patient", resource)
    resource = warn.readable(resource)

    display_name = human_name(resource.get("name"))
    if display_name is None:
        warn("name", "no usable name", issues.MISSING, "The patient record has no usable name.")
    mrn = identifier_of_type(resource, "MR")
    if mrn is None:
        warn(
            "identifier",
            "no MRN (identifier of type MR)",
            issues.MISSING,
            "The patient record has no MRN (an identifier of type MR).",
        )

    birth_date = get_str(resource, "birthDate")
    age: int | None = None
    age_is_approximate = False
    bounds = date_bounds(birth_date)
    today = now.date()
    if birth_date is not None and bounds is None:
        warn("birthDate", "birthDate is not a readable date", issues.BAD_VALUE)
    elif bounds is not None:
        earliest, latest = bounds
        if earliest > today:
            warn(
                "birthDate",
                "birthDate is in the future",
                issues.BAD_VALUE,
                "The patient record's birth date is in the future; no age is shown.",
            )
        else:
            oldest = _age_on(earliest, today)
            youngest = _age_on(min(latest, today), today)
            age, age_is_approximate = youngest, oldest != youngest
        if earliest != latest:  # `1980` or `1980-07`: a year or a month, not a day
            warn(
                "birthDate",
                "birthDate is partial; age may be approximate",
                issues.PARTIAL_DATE,
                "The patient record's birth date is only partly known; the age may be off by one.",
            )

    communication = preferred_communication(resource)
    restrictions = restrictions_of(resource)
    # The channel the chart allows; death is shown as its own flag, and the senders'
    # `contact.reachable` / `may_*` refuse a deceased patient.
    phones, emails, preferred_channel, phone_reachable = _telecoms(
        resource, now, blocked_by(restrictions)
    )
    if not phones and not emails:
        warn(
            "telecom",
            "no phone or email on file",
            issues.MISSING,
            "The patient record has no phone number or email.",
        )
    patient_id = warn.resource_id
    preferred_name = _preferred_name(resource, display_name)
    gender = get_str(resource, "gender")
    deceased = is_deceased(resource)
    interpreter_required = interpreter_required_of(resource)
    preferred_language = language_code(communication)
    language_display = language_text(communication)
    address = _address(resource, now)
    warnings = tuple(warn.found)
    # Positional, each argument the local of its field's name (a test checks the order):
    # keyword arguments cost a microsecond more per record.
    return Contact(
        patient_id,
        display_name,
        preferred_name,
        mrn,
        birth_date,
        age,
        age_is_approximate,
        gender,
        deceased,
        interpreter_required,
        preferred_language,
        language_display,
        phones,
        emails,
        preferred_channel,
        phone_reachable,
        restrictions,
        address,
        warnings,
    )


__all__ = ["Contact", "PostalAddress", "Telecom", "to_contact"]
