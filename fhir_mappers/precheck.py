"""A cheap, conservative stand-in for strict R4B validation: `surely_valid(resource)`.

Strict validation (fhir.resources' pydantic models) costs about as much as everything else
the sidebar does with a resource, and nearly every resource passes it. This walks the JSON
against the same models' field tables — names, list or single, required fields, choice
types, primitive formats — and answers True only when it can see that strict validation
will find nothing; anything it is unsure of (an element it does not model, a primitive
format it does not check exactly, a `_field` extension, a contained resource, an empty
list, a null) makes it answer False, and the resource is validated strictly as before.

The one property that matters: `surely_valid(r)` implies `model_validate(r)` succeeds.
It is tested on the fixture population, the messy fixtures and generated damage
(tests/mappers/test_mappers_precheck.py). Being strict the other way round only costs
time, never a warning.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir_core import types as fhir_types

# What the walk knows about an element: (is_list, model spec, primitive check); both None
# means "unsure: validate strictly".
_Checker = Callable[[object], bool]
_Field = tuple[bool, "_Spec | None", "_Checker | None"]


class _Spec:
    __slots__ = ("fields", "required", "choices")

    def __init__(self) -> None:
        self.fields: dict[str, _Field] = {}
        self.required: tuple[str, ...] = ()
        self.choices: tuple[tuple[tuple[str, ...], bool], ...] = ()


_SURROGATE = re.compile("[\ud800-\udfff]")
_CODE = re.compile(r"[!-~]+(?: [!-~]+)*", re.ASCII)
_ID = re.compile(r"[A-Za-z0-9\-.]{1,255}", re.ASCII)
_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+", re.ASCII)
_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?", re.ASCII)
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})", re.ASCII
)


def _string(value: object) -> bool:
    # fhir.resources wants at least one character of `[ \r\n\t\S]`; a non-whitespace
    # character (by Python's wider notion of whitespace) always is one. Lone surrogates
    # fail pydantic's str conversion.
    return type(value) is str and bool(value.strip()) and not _SURROGATE.search(value)


def _code(value: object) -> bool:
    return type(value) is str and _CODE.fullmatch(value) is not None


def _id(value: object) -> bool:
    return type(value) is str and _ID.fullmatch(value) is not None


def _uri(value: object) -> bool:
    return type(value) is str and bool(value) and not _SURROGATE.search(value)


def _oid(value: object) -> bool:
    return type(value) is str and _OID.fullmatch(value) is not None


def _boolean(value: object) -> bool:
    return type(value) is bool


def _integer(low: int) -> _Checker:
    def check(value: object) -> bool:
        return type(value) is int and low <= value <= 2_147_483_647

    return check


def _decimal(value: object) -> bool:
    if type(value) is int:
        return abs(value) < 10**15
    return type(value) is float and math.isfinite(value)


def _real_date(text: str) -> bool:
    """A date, year-month or year whose day exists (the pattern lets 2026-02-31 through)."""
    match = _DATE.fullmatch(text)
    if match is None:
        return False
    if match[3] is None:
        return True
    try:
        dt.date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return False
    return True


def _real_instant(text: str) -> bool:
    """A date and time that exists (the pattern lets 2026-02-31T25:00 through)."""
    match = _DATETIME.fullmatch(text)
    if match is None or int(match[6]) > 59:  # a leap second is read differently: unsure
        return False
    try:
        dt.datetime(int(match[1]), int(match[2]), int(match[3]), int(match[4]), int(match[5]))
    except ValueError:
        return False
    return True


def _real_datetime(text: str) -> bool:
    return _real_instant(text) if "T" in text else _real_date(text)


def _formatted(primitive: Any, real: Callable[[str], bool]) -> _Checker:
    """A string the primitive's own pattern accepts that `real` reads as a moment that
    exists: fhir.resources parses the value after matching it, and fails on a 31 February."""
    pattern = primitive.pattern

    def check(value: object) -> bool:
        return type(value) is str and pattern.fullmatch(value) is not None and real(value)

    return check


_date = _formatted(fhir_types.Date, _real_date)
_datetime = _formatted(fhir_types.DateTime, _real_datetime)
_instant = _formatted(fhir_types.Instant, _real_instant)


# fhir_core's primitive markers -> an exact-or-stricter check. Markers not listed here
# (url, uuid, xhtml, time, base64Binary, integer64) are "unsure".
_PRIMITIVES: dict[type, _Checker] = {
    fhir_types.String: _string,
    fhir_types.Markdown: _string,
    fhir_types.Code: _code,
    fhir_types.Id: _id,
    fhir_types.Uri: _uri,
    fhir_types.Canonical: _uri,
    fhir_types.Oid: _oid,
    fhir_types.PositiveInt: _integer(1),
    fhir_types.UnsignedInt: _integer(0),
    fhir_types.Integer: _integer(-2_147_483_648),
    fhir_types.Decimal: _decimal,
    fhir_types.Date: _date,
    fhir_types.Instant: _instant,
    fhir_types.DateTime: _datetime,
}


def _unwrap(annotation: Any) -> tuple[bool, Any]:
    """(is a list, the element type) of `X | None`, `Optional[List[X]]`, ..."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            return False, None
        return _unwrap(args[0])
    if origin is list:  # typing.List[X] has origin list too
        items = typing.get_args(annotation)
        if len(items) != 1:
            return True, None
        # A primitive list's items are Optional (null lines an item up with its `_x`
        # extension); the walk refuses nulls anyway.
        nested, element = _unwrap(items[0])
        return True, None if nested else element
    return False, annotation


def _checker(element: Any) -> _Checker | _Spec | None:
    if element is bool:
        return _boolean
    if typing.get_origin(element) is typing.Annotated:
        for marker in typing.get_args(element)[1:]:
            # exact class first: DateTime subclasses Date, Canonical Uri, PositiveInt ...
            found = _PRIMITIVES.get(type(marker))
            if found is not None:
                return found
        return None
    klass = getattr(element, "get_model_klass", None)
    if klass is None:
        return None
    model = klass()
    if getattr(model, "__resource_type__", None) in ("Resource", "DomainResource"):
        return None  # `contained` and friends: any resource type, validate strictly
    return _spec_for(model)


_SPECS: dict[type, _Spec] = {}


def _spec_for(model: Any) -> _Spec:
    spec = _SPECS.get(model)
    if spec is not None:
        return spec
    spec = _SPECS[model] = _Spec()  # registered first: models refer to themselves
    instance = model.model_construct()
    required: list[str] = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        if name == "fhir_comments" or alias.startswith("_"):
            continue  # present in the JSON: unsure
        is_list, element = _unwrap(field.annotation)
        found = _checker(element) if element is not None else None
        if isinstance(found, _Spec):
            spec.fields[alias] = (is_list, found, None)
        else:
            spec.fields[alias] = (is_list, None, found)
        if field.is_required():
            required.append(alias)
    for name, _ext in instance.get_required_fields():
        required.append(model.model_fields[name].alias or name)
    choices: list[tuple[tuple[str, ...], bool]] = []
    for names in instance.get_one_of_many_fields().values():
        extra = model.model_fields[names[0]].json_schema_extra or {}
        aliases = tuple(model.model_fields[n].alias or n for n in names)
        choices.append((aliases, extra.get("one_of_many_required") is True))
    spec.required = tuple(dict.fromkeys(required))
    spec.choices = tuple(choices)
    return spec


def _element_ok(value: object, spec: _Spec, top: bool = False) -> bool:
    if type(value) is not dict or not value:
        return False
    fields = spec.fields
    for key, item in value.items():
        found = fields.get(key)
        if found is None:
            if top and key == "resourceType":
                continue  # the caller picked the model by it
            return False  # an unknown element, `_x`, `fhir_comments`, a nested resourceType
        is_list, sub, check = found
        if is_list:
            if type(item) is not list or not item:
                return False
            if sub is not None:
                for each in item:
                    if not _element_ok(each, sub):
                        return False
            elif check is not None:
                for each in item:
                    if not check(each):
                        return False
            else:
                return False
        elif sub is not None:
            if not _element_ok(item, sub):
                return False
        elif check is None or not check(item):
            return False
    for key in spec.required:
        if key not in value:
            return False
    for aliases, needed in spec.choices:
        present = sum(1 for a in aliases if a in value)
        if present > 1 or (needed and present == 0):
            return False
    return True


_RESOURCE_SPECS: dict[str, _Spec | None] = {}


def surely_valid(resource: object) -> bool:
    """True only when strict R4B validation of `resource` is sure to find nothing."""
    if type(resource) is not dict:
        return False
    rtype = resource.get("resourceType")
    if type(rtype) is not str:
        return False
    spec = _RESOURCE_SPECS.get(rtype, _UNSET)
    if spec is _UNSET:
        try:
            spec = _spec_for(get_fhir_model_class(rtype))
        except Exception:  # not a resource type fhir.resources knows: validate strictly
            spec = None
        if len(_RESOURCE_SPECS) < 1000:
            _RESOURCE_SPECS[rtype] = spec
    if spec is None:
        return False
    return _element_ok(resource, spec, top=True)


_UNSET: Any = object()
