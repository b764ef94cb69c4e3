"""DataWarning: what was missing or odd in the FHIR data, safe to log.

A warning names the resource type, the resource id, the field path and a fixed kind of
problem. It never carries a value from the resource (a name, a phone number, a date),
so it can go to logs and to the browser without leaking patient data.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class DataWarning:
    resource_type: str
    resource_id: str | None
    field: str
    message: str
    code: str

    def __str__(self) -> str:
        where = f"{self.resource_type}/{self.resource_id or '?'}"
        return f"{where} {self.field}: {self.message} [{self.code}]"
