"""Strict R4B validation, used only to produce warnings: a resource is never refused.

fhir.resources rejects much of what real EHRs send (dateTimes without an offset, unknown
fields, a Coverage without `payor`), while the mappers read the dict itself, so a failure
here becomes DataWarnings and the mapping goes on. Messages are built from pydantic's
error *type* and location only: its `msg` and `input` may echo patient data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class

from fhir_mappers import issues
from fhir_mappers.fhirutil import get_str, lacks_timezone, resource_type
from fhir_mappers.issues import DataWarning, field_words, noun
from fhir_mappers.precheck import surely_valid

_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# One resource with a thousand bad entries says so once, not a thousand times.
MAX_WARNINGS = 25
MAX_PATH = 200

_MISSING_TYPES = {"missing", "model_field_validation.missing"}
_TYPE_WORDS = {
    "list_type": "should be a list",
    "dict_type": "should be an object",
    "model_type": "should be an object",
    "model_attributes_type": "should be an object",
    "string_type": "should be a string",
    "int_parsing": "should be an integer",
    "int_type": "should be an integer",
    "bool_parsing": "should be true or false",
    "bool_type": "should be true or false",
    "decimal_parsing": "should be a number",
    "float_parsing": "should be a number",
    "string_pattern_mismatch": "does not match the FHIR format for its type",
    "string_too_short": "is empty",
    "value_error": "does not match the FHIR format for its type",
    "literal_error": "is not an allowed value",
    "enum": "is not an allowed value",
}


def field_path(loc: tuple[int | str, ...]) -> str:
    """`('extension', 0, 'url')` -> `extension[0].url`; cut at MAX_PATH characters (an
    unknown element's name is whatever the sender wrote, a megabyte included)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = "resourceType" if part == "resource_type" else str(part)
            out += f".{name}" if out else name
        if len(out) > MAX_PATH:
            return out[: MAX_PATH - 1] + "…"
    return out or "(resource)"


def validate_strictly(model: Any, resource: Mapping[str, Any]) -> None:
    """The expensive part, on its own so tests can count it."""
    model.model_validate(dict(resource))


def validation_warnings(
    resource: Mapping[str, Any], *, always_strict: bool = False
) -> list[DataWarning]:
    """Validate one resource against its fhir.resources R4B model; return what failed.

    A resource that `precheck.surely_valid` vouches for is not run through the models:
    strict validation would find nothing in it, and it costs five times the walk (the
    fixture population: 2 of 198 resources are unsure but valid). `always_strict` runs
    the models anyway (tests compare the two).
    """
    if not isinstance(resource, Mapping):
        return [DataWarning("Unknown", None, "(resource)", "not a JSON object", issues.INVALID)]
    rtype = resource_type(resource)
    rid = get_str(resource, "id")
    found: list[DataWarning] = []
    seen: set[DataWarning] = set()
    over = 0

    def add(field: str, message: str, code: str, plain: str = "") -> None:
        nonlocal over
        warning = DataWarning(rtype, rid, field, message, code, plain)
        if warning in seen:
            return
        seen.add(warning)
        if len(found) < MAX_WARNINGS:
            found.append(warning)
        else:
            over += 1

    if rid is not None and len(rid) > 64 and _FHIR_ID.match(rid[:64]):
        # fhir.resources does not check the length; Epic ids exceed it. Anything keyed on
        # the id (URLs, database columns) must allow more than 64 characters.
        add("id", "id is longer than FHIR's 64 characters", issues.ID_TOO_LONG)
    if not always_strict and surely_valid(resource):
        return found
    try:
        model = get_fhir_model_class(rtype)
    except (KeyError, ValueError, AttributeError, ImportError):
        add("resourceType", "not a FHIR R4 resource type", issues.UNKNOWN_RESOURCE_TYPE)
        return found
    try:
        validate_strictly(model, resource)
    except pydantic.ValidationError as exc:
        try:
            errors = exc.errors(include_url=False, include_input=True)
        except UnicodeError:
            # fhir.resources renders a wrong nested `resourceType` into its error message;
            # with a lone surrogate in it pydantic cannot list the errors at all (found by
            # the fuzz suite). Say so once rather than raise.
            errors = []
            add(
                "(resource)",
                "could not be validated (text that is not valid Unicode)",
                issues.INVALID,
                f"The {noun(rtype)} holds text that is not valid Unicode; its other problems "
                "could not be listed.",
            )
        for err in errors:
            path = field_path(tuple(err["loc"]))
            kind = str(err["type"])
            if kind == "extra_forbidden":
                add(path, "element is not defined in FHIR R4", issues.UNKNOWN_ELEMENT)
            elif kind in _MISSING_TYPES:
                add(path, "required element is missing", issues.MISSING_REQUIRED)
            elif lacks_timezone(err.get("input")):
                add(
                    path,
                    "time has no timezone offset",
                    issues.NO_TIMEZONE,
                    f"The {noun(rtype)}'s {field_words(path)} has no time zone offset, which "
                    "strict FHIR requires.",
                )
            else:
                words = _TYPE_WORDS.get(kind, f"is invalid ({kind})")
                add(
                    path,
                    f"value {words}",
                    issues.INVALID,
                    f"The {noun(rtype)}'s {field_words(path)} is not valid FHIR R4: the value "
                    f"{words}.",
                )
    except Exception as exc:  # fhir.resources raises assorted types on odd input
        add("(resource)", f"could not be validated ({type(exc).__name__})", issues.INVALID)
    if over:
        found.append(
            DataWarning(
                rtype,
                rid,
                "(resource)",
                f"{over} more problems not listed",
                issues.INVALID,
                f"The {noun(rtype)} has {over} more problems like these; they are not listed.",
            )
        )
    return found
