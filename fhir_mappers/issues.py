"""DataWarning: what was missing or odd in the FHIR data, safe to log.

A warning names the resource type, the resource id, the field path and a fixed kind of
problem. It never carries a value from the resource (a name, a phone number, a date),
so it can go to logs and to the browser without leaking patient data.

Each warning says it twice: `message` in FHIR terms beside its `field` path (for whoever
reads the raw JSON), and `plain`, a sentence an integrator who does not speak FHIR paths
can act on ("The appointment's start time has no time zone; read as Chicago time."). A
mapper that knows more than the code (the zone it assumed) writes `plain` itself;
otherwise it is built here from the resource type, the field and the code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhir_mappers.fhirutil import as_resource, get_str
from fhir_mappers.records import quick_init

# The codes, stable for UIs and tests:
INVALID = "invalid"  # strict R4B validation failed for another reason
UNKNOWN_ELEMENT = "unknown-element"  # a field FHIR R4 does not define
MISSING_REQUIRED = "missing-required"  # a 1..1 / 1..* element is absent
NO_TIMEZONE = "no-timezone"  # a time of day without an offset; a zone was assumed
ID_TOO_LONG = "id-too-long"  # longer than FHIR's 64 characters (Epic does this)
UNKNOWN_RESOURCE_TYPE = "unknown-resource-type"
PARTIAL_DATE = "partial-date"  # `1980-07`: valid, but e.g. an age may be approximate
MISSING = "missing"  # data the help desk needs is absent (no MRN, no way to reach)
UNRESOLVED_REFERENCE = "unresolved-reference"  # neither the target nor a display
BAD_REFERENCE = "bad-reference"  # a reference string that is not a FHIR reference
DISPLAY_ONLY_REFERENCE = "display-only-reference"  # a name but nothing to link to
BAD_VALUE = "bad-value"  # a value the mapper could not read (bad date, bad zone)
NOT_YET_ACTIVE = "not-yet-active"  # a coverage period that starts in the future

# Most consequential first: what `caredesk map` lists as a patient's top warnings.
SEVERITY = (
    BAD_VALUE,
    NO_TIMEZONE,
    MISSING_REQUIRED,
    BAD_REFERENCE,
    UNRESOLVED_REFERENCE,
    MISSING,
    NOT_YET_ACTIVE,
    INVALID,
    UNKNOWN_RESOURCE_TYPE,
    DISPLAY_ONLY_REFERENCE,
    UNKNOWN_ELEMENT,
    ID_TOO_LONG,
    PARTIAL_DATE,
)

_NOUNS = {
    "Patient": "patient record",
    "Appointment": "appointment",
    "Coverage": "coverage record",
    "Practitioner": "practitioner record",
    "PractitionerRole": "practitioner role",
    "Location": "location record",
    "Organization": "organization record",
    "HealthcareService": "service record",
    "Encounter": "encounter",
    "Bundle": "bundle",
}
_FIELDS = {
    "start": "start time",
    "end": "end time",
    "status": "status",
    "birthDate": "birth date",
    "name": "name",
    "identifier": "identifiers",
    "telecom": "phone numbers and emails",
    "period.start": "start date",
    "period.end": "end date",
    "payor": "payor (the insurer)",
    "payor[0]": "payor (the insurer)",
    "subscriberId": "member id",
    "id": "id",
    "resourceType": "resource type",
    "extension": "extensions",
}
_ACTOR = re.compile(r"^participant\[\d+\]\.actor$")
_EXTENSION_URL = re.compile(r"(?:^|\.)(?:modifierE|e)xtension\[\d+\]\.url$")
_CODE_WORDS = {
    INVALID: "is not valid FHIR R4",
    UNKNOWN_ELEMENT: "is not a FHIR R4 element; it was ignored",
    MISSING_REQUIRED: "is required by FHIR but missing",
    NO_TIMEZONE: "has no time zone; a zone was assumed",
    ID_TOO_LONG: "is longer than FHIR's 64 characters (kept whole)",
    UNKNOWN_RESOURCE_TYPE: "is not a FHIR R4 resource type",
    PARTIAL_DATE: "is only partly known",
    MISSING: "is missing",
    UNRESOLVED_REFERENCE: "points at something CareDesk could not name",
    BAD_REFERENCE: "is not a FHIR reference CareDesk can follow",
    DISPLAY_ONLY_REFERENCE: "has a name but no link to a record",
    BAD_VALUE: "could not be read",
    NOT_YET_ACTIVE: "is in the future",
}


def noun(resource_type: str) -> str:
    """`Appointment` -> `appointment`; unknown types are named as they are."""
    return _NOUNS.get(resource_type, f"{resource_type} resource")


def field_words(field: str) -> str:
    if field in _FIELDS:
        return _FIELDS[field]
    if _ACTOR.match(field):
        return "participant"
    if _EXTENSION_URL.search(field):
        return "extension url"
    if field in ("", "(resource)"):
        return "content"
    return f"element `{field}`"


def zone_words(zone_name: str) -> str:
    """`America/Chicago` -> `Chicago`; `America/Argentina/Buenos_Aires` -> `Buenos Aires`."""
    last = zone_name.rsplit("/", 1)[-1].replace("_", " ")
    return last or zone_name


def plain_words(resource_type: str, field: str, code: str) -> str:
    """A sentence for integrators, from the kind of problem alone (no patient data)."""
    if field in ("", "(resource)"):
        return f"The {noun(resource_type)} {_CODE_WORDS.get(code, 'has a problem')}."
    return (
        f"The {noun(resource_type)}'s {field_words(field)} "
        f"{_CODE_WORDS.get(code, 'has a problem')}."
    )


@quick_init
@dataclass(frozen=True)
class DataWarning:
    resource_type: str
    resource_id: str | None
    field: str
    message: str
    code: str
    plain: str = ""  # filled from the code when the mapper gives none

    def __post_init__(self) -> None:
        if not self.plain:
            object.__setattr__(
                self, "plain", plain_words(self.resource_type, self.field, self.code)
            )

    def __str__(self) -> str:
        where = f"{self.resource_type}/{self.resource_id or '?'}"
        return f"{where} {self.field}: {self.message} [{self.code}]"


class Warnings:
    """The data warnings of one resource, collected as its mapper reads it.

    ``warn = Warnings("Patient", resource)`` then ``warn(field, message, code)``;
    ``warn.readable(resource)`` is the resource to read (an empty one, with a warning,
    when it is not a JSON object); ``warn.found`` the warnings in the order found.
    ``once`` drops a repeat of the same warning (a page of visits sharing one actor).
    """

    __slots__ = ("found", "once", "resource_id", "resource_type")

    def __init__(self, resource_type: str, resource: object, *, once: bool = False) -> None:
        self.resource_type = resource_type
        self.resource_id = get_str(resource, "id")
        self.once = once
        self.found: list[DataWarning] = []

    def __call__(self, field: str, message: str, code: str, plain: str = "") -> None:
        warning = DataWarning(self.resource_type, self.resource_id, field, message, code, plain)
        if not (self.once and warning in self.found):
            self.found.append(warning)

    def readable(self, resource: object) -> Mapping[str, Any]:
        if type(resource) is dict:  # a JSON object: no ABC check on the mappers' hot path
            return resource
        if not isinstance(resource, Mapping):
            self("(resource)", "not a JSON object", BAD_VALUE)
        return as_resource(resource)
