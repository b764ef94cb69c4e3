"""The one place that reads FHIR references, dates and times, and picks values out of dicts.

Every other mapper calls these instead of splitting strings itself: a reference can be
relative (`Patient/1`), absolute (`https://ehr/fhir/Patient/1`), versioned
(`Patient/1/_history/2`), contained (`#p1`) or a bundle-local `urn:uuid:`; a dateTime can
be partial (`2026`, `2026-11`) or, from some EHR interfaces, lack its offset.

Parsing references is strict (`parse_reference` raises ValueError on garbage, because a
wrong reference silently resolved is worse than none); parsing dates is graceful (returns
None) because a bad date must never stop the rest of a record from showing.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fhir_mappers.records import quick_init

Resource = Mapping[str, Any]

# FHIR ids are [A-Za-z0-9-.]{1,64}; Epic sends longer ones, so the length is not checked
# here (validation.py warns about it).
_ID = r"[A-Za-z0-9\-.]+"
_TYPE = r"[A-Z][A-Za-z]+"
_RELATIVE = re.compile(rf"^(?P<type>{_TYPE})/(?P<id>{_ID})(?:/_history/(?P<version>{_ID}))?$")
_ABSOLUTE = re.compile(
    rf"^(?P<base>https?://[^\s?#]+?)/(?P<type>{_TYPE})/(?P<id>{_ID})"
    rf"(?:/_history/(?P<version>{_ID}))?/?$"
)
_CONTAINED = re.compile(rf"^#(?P<id>{_ID})$")
_URN = re.compile(r"^urn:(?:uuid|oid):(?P<id>[A-Za-z0-9\-.]+)$")
# No real reference comes near this; longer text is refused before any pattern runs, so a
# hostile megabyte-long "reference" cannot make the absolute-URL pattern backtrack for long.
MAX_REFERENCE_LENGTH = 4096

# The core extension that gives a Patient or Location its IANA time zone.
TIMEZONE_EXT = "http://hl7.org/fhir/StructureDefinition/timezone"

# ASCII digits only, as FHIR's own patterns: `２０２６` is not a year.
_DATETIME = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$",
    re.ASCII,
)


@quick_init
@dataclass(frozen=True)
class Ref:
    """A parsed reference. `type` is None only for contained and urn references."""

    type: str | None
    id: str
    contained: bool = False
    url: str | None = None  # the server base of an absolute reference, or the urn itself
    version: str | None = None
    # `Type/id`, the key the `included` mappings use; `#id` for contained. Worked out once,
    # here: every actor of every visit reads it. (A `cached_property` did this before, but
    # the mypyc build turns one into a plain property, built again on each read.) Not an
    # argument: whatever is passed, `replace` included, is set again from the rest.
    key: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.contained:
            key = f"#{self.id}"
        elif self.type is None:
            key = self.url or self.id
        else:
            key = f"{self.type}/{self.id}"
        object.__setattr__(self, "key", key)


def parse_reference(ref: object, base: str | None = None) -> Ref:
    """Parse a Reference.reference string; raise ValueError if it is not one.

    Conditional references (`Patient?identifier=...`) only make sense inside a transaction
    being processed by a server, so they are refused too. `base` is recorded as the url of
    a relative reference when given.
    """
    if not isinstance(ref, str):
        raise ValueError("reference is not a string")
    if len(ref) > MAX_REFERENCE_LENGTH:
        raise ValueError("reference is too long")
    if base:
        found = _parse_reference(ref)
        if found is not None and found.type is not None and found.url is None:
            return Ref(found.type, found.id, url=base.rstrip("/"), version=found.version)
    else:
        found = _parse_reference(ref)
    if found is None:
        raise ValueError("not a FHIR reference")
    return found


@functools.lru_cache(maxsize=8192)
def _parse_reference(ref: str) -> Ref | None:
    # Cached: a page of appointments names the same practitioners, locations and patients
    # again and again, and every reader of a visit asks about the same reference. Ref is
    # frozen, so sharing one is safe.
    text = ref.strip()
    if match := _CONTAINED.match(text):
        return Ref(type=None, id=match["id"], contained=True)
    if match := _RELATIVE.match(text):
        return Ref(type=match["type"], id=match["id"], version=match["version"])
    if match := _ABSOLUTE.match(text):
        return Ref(type=match["type"], id=match["id"], url=match["base"], version=match["version"])
    if match := _URN.match(text):
        return Ref(type=None, id=match["id"], url=text)
    return None


def reference_of(value: object) -> Ref | None:
    """The parsed `reference` of a Reference dict, or None when absent or unparseable."""
    if type(value) is dict:
        raw = value.get("reference")
    elif isinstance(value, Mapping):
        raw = value.get("reference")
    else:
        return None
    if type(raw) is not str or len(raw) > MAX_REFERENCE_LENGTH:
        return None
    return _parse_reference(raw)


def patient_key(value: object) -> str | None:
    """`Patient/<id>` for a Reference dict that points at a Patient, in any form CareDesk
    accepts (relative, absolute, versioned); None for anything else.

    Every reader that asks "which patient is this about" goes through here, so an
    absolute reference (`https://ehr/fhir/Patient/1`, sent by some EHRs) is the same
    patient everywhere.
    """
    ref = reference_of(value)
    if ref is None or ref.type != "Patient":
        return None
    return f"Patient/{ref.id}"


class ResourceIndex(dict[str, Mapping[str, Any]]):
    """`Type/id` -> resource, plus what the mappers worked out about each target once (its
    name, its time zone): a page of visits names the same few practitioners and places.

    `missed` collects the keys the mappers looked up and did not find: a caller that maps
    a page of a search before the later pages arrive can tell whether a later page's
    `_include` would have changed what it mapped (clear `memo` and `missed`, then map)."""

    def __init__(self) -> None:
        super().__init__()
        self.memo: dict[tuple[str, str], Any] = {}
        self.missed: set[str] = set()


def index_resources(resources: Iterable[object]) -> ResourceIndex:
    """`Type/id` -> resource for the resources that have both; the first one wins."""
    found = ResourceIndex()
    for res in resources:
        if type(res) is not dict and not isinstance(res, Mapping):
            continue
        rtype, rid = get_str(res, "resourceType"), get_str(res, "id")
        if rtype and rid:
            found.setdefault(f"{rtype}/{rid}", res)
    return found


def zone(name: object) -> ZoneInfo | None:
    """A ZoneInfo for an IANA name, or None for anything else (never raises)."""
    if not isinstance(name, str) or len(name) > 100:
        return None
    return _zone(name)


@functools.lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo | None:
    if not name or name.startswith(("/", ".")) or ".." in name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def resource_zone(resource: object) -> ZoneInfo | None:
    """The IANA zone of a Patient or Location from the core `timezone` extension (the
    first one that names a known zone); None when absent, unknown or oddly shaped."""
    for ext in get_list(resource, "extension"):
        if get_str(ext, "url") == TIMEZONE_EXT:
            found = zone(get_str(ext, "valueCode"))
            if found is not None:
                return found
    return None


def in_zone(moment: dt.datetime, tz: dt.tzinfo) -> dt.datetime | None:
    """`moment` seen in `tz`; None when that falls outside the years 1-9999.

    `0001-01-01T00:30:00+14:00` is a valid FHIR instant whose UTC time is in year 0,
    which Python cannot represent: the converted value is unknown, not an error.
    """
    try:
        return moment.astimezone(tz)
    except (OverflowError, ValueError):
        return None


def lacks_timezone(value: object) -> bool:
    """True for a dateTime that has a time of day but no offset (e.g. `2026-11-27T14:00`)."""
    if not isinstance(value, str):
        return False
    match = _DATETIME.match(value.strip())
    return bool(match and match["hour"] is not None and match["tz"] is None)


def is_partial_date(value: object) -> bool:
    """True for `2026` or `2026-11`: valid FHIR, but not a day."""
    if not isinstance(value, str):
        return False
    match = _DATETIME.match(value.strip())
    return bool(match and match["day"] is None)


def parse_datetime(value: object, default_tz: dt.tzinfo | str) -> dt.datetime | None:
    """Parse a FHIR date, dateTime or instant into an aware datetime; None if unreadable.

    Partial values start at their beginning (`2026-11` -> Nov 1st 00:00). A value without
    an offset, and a plain date, is taken in `default_tz`; callers that care should check
    `lacks_timezone()` (or use `read_datetime`) and record a warning, because the guess
    may be wrong.
    """
    return read_datetime(value, default_tz)[0]


def read_datetime(value: object, default_tz: dt.tzinfo | str) -> tuple[dt.datetime | None, bool]:
    """`parse_datetime`, and whether the value had a time of day but no offset (so
    `default_tz` was assumed for it): one parse where a caller needs both."""
    if type(value) is not str:
        return None, False
    if len(value) == 25 and value[10] == "T" and value[19] in "+-" and value[4] == "-":
        # The form nearly every EHR sends (`2026-11-30T10:00:00-06:00`): the C parser,
        # several times faster than the pattern below, which stays the judge of the rest.
        try:
            return dt.datetime.fromisoformat(value), False
        except ValueError:
            pass
    match = _DATETIME.match(value.strip())
    if not match:
        return None, False
    tz: dt.tzinfo | None = default_tz if isinstance(default_tz, dt.tzinfo) else zone(default_tz)
    if tz is None:
        tz = dt.UTC
    offset = match["tz"]
    assumed = match["hour"] is not None and offset is None
    try:
        year = int(match["year"])
        month = int(match["month"] or 1)
        day = int(match["day"] or 1)
        hour = int(match["hour"] or 0)
        minute = int(match["minute"] or 0)
        second = int(match["second"] or 0)
        micro = int((match["fraction"] or ".0")[1:7].ljust(6, "0"))
        if offset is not None:
            if offset == "Z":
                tz = dt.UTC
            else:
                sign = -1 if offset[0] == "-" else 1
                delta = dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
                tz = dt.timezone(sign * delta)
        if second == 60:  # a leap second, allowed by the instant regex
            second = 59
        return dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=tz), assumed
    except ValueError:
        return None, False


def date_bounds(value: object) -> tuple[dt.date, dt.date] | None:
    """The first and last calendar day a (possibly partial) date or dateTime can mean.

    `1980-07` -> (1980-07-01, 1980-07-31); `2026-11-27T10:00:00-06:00` -> that day twice
    (the calendar date as written, in the writer's zone). None if unreadable.
    """
    if type(value) is not str:
        return None
    if len(value) == 10 and value[4] == "-" and value[7] == "-":
        try:  # `YYYY-MM-DD`, the usual case: the C parser
            day = dt.date.fromisoformat(value)
        except ValueError:
            return None
        return day, day
    match = _DATETIME.match(value.strip())
    if not match:
        return None
    try:
        year = int(match["year"])
        if match["month"] is None:
            return dt.date(year, 1, 1), dt.date(year, 12, 31)
        month = int(match["month"])
        if match["day"] is None:
            last = calendar.monthrange(year, month)[1]
            return dt.date(year, month, 1), dt.date(year, month, last)
        day = dt.date(year, month, int(match["day"]))
    except ValueError:
        return None
    return day, day


def parse_date(value: object) -> dt.date | None:
    """The first day a (possibly partial) date means, or None if unreadable."""
    bounds = date_bounds(value)
    return bounds[0] if bounds else None


def require_aware(now: dt.datetime) -> dt.datetime:
    """Refuse a naive `now`: every comparison in the mappers is between aware datetimes."""
    tz = now.tzinfo
    if type(tz) is ZoneInfo or type(tz) is dt.timezone:
        return now  # always an offset: no need to look one up (a search of the zone's rules)
    if tz is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now


# --- tolerant getters: real EHR JSON has wrong types, empty strings and nulls ------------


# Each getter tests `type(x) is dict` (and `is None`) before the Mapping ABC check: JSON
# objects are dicts, and an ABC isinstance costs several dict lookups on the mappers' hot
# path (measured: a third of the tolerant mapping time). Each also reads a dict in a branch
# of its own, `if type(x) is dict: x.get(...)`: there the mypyc build calls the dict's
# lookup directly, where `.get` on a Mapping is a method call found by name on each call
# (the same `.get` twice in a row below is that, not a slip).


def get_str(obj: object, key: str) -> str | None:
    """A non-empty string field, stripped; None for anything else."""
    if type(obj) is dict:
        value = obj.get(key)
        if type(value) is str:  # the usual case, settled in two type tests
            return value.strip() or None
    elif obj is None or not isinstance(obj, Mapping):
        return None
    else:
        value = obj.get(key)
    if value is not None and isinstance(value, str):
        return value.strip() or None
    return None


def get_dict(obj: object, key: str) -> Mapping[str, Any] | None:
    if type(obj) is dict:
        value = obj.get(key)
        if type(value) is dict:
            return value
    elif obj is None or not isinstance(obj, Mapping):
        return None
    else:
        value = obj.get(key)
    if value is not None and isinstance(value, Mapping):
        return value
    return None


def get_list(obj: object, key: str) -> list[Mapping[str, Any]]:
    """The dict items of a list field (an object where a list belongs counts as one item).

    A list whose items are all objects, the usual case, comes back itself, not copied:
    read it, do not change it.
    """
    if type(obj) is dict:
        value = obj.get(key)
    elif obj is None or not isinstance(obj, Mapping):
        return []
    else:
        value = obj.get(key)
    if type(value) is list:
        for item in value:
            if type(item) is not dict:
                return [v for v in value if type(v) is dict or isinstance(v, Mapping)]
        return value
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [v for v in value if isinstance(v, Mapping)]
    return []


def get_str_list(obj: object, key: str) -> list[str]:
    if type(obj) is dict:
        value = obj.get(key)
    elif obj is None or not isinstance(obj, Mapping):
        return []
    else:
        value = obj.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if type(value) is list or isinstance(value, Sequence):
        return [v.strip() for v in value if type(v) is str and v.strip()]
    return []


def get_int(obj: object, key: str) -> int | None:
    if type(obj) is dict:
        value = obj.get(key)
    elif obj is None or not isinstance(obj, Mapping):
        return None
    else:
        value = obj.get(key)
    # bool is an int in Python; `"rank": true` is not a rank.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def codes(concept: object) -> list[tuple[str | None, str]]:
    """(system, code) pairs of a CodeableConcept or a single Coding."""
    if type(concept) is not dict and (concept is None or not isinstance(concept, Mapping)):
        return []
    codings = get_list(concept, "coding") if "coding" in concept else [concept]
    out: list[tuple[str | None, str]] = []
    for coding in codings:
        code = get_str(coding, "code")
        if code:
            out.append((get_str(coding, "system"), code))
    return out


V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def identifier_of_type(resource: object, type_code: str) -> str | None:
    """The value of the first identifier whose type is `type_code` of HL7 v2 table 0203
    (`MR` a medical record number, `MB` a member number); a coding without a system is
    taken as that table (EHRs leave it out)."""
    for ident in get_list(resource, "identifier"):
        if any(
            code == type_code and system in (None, V2_0203)
            for system, code in codes(get_dict(ident, "type"))
        ):
            value = get_str(ident, "value")
            if value:
                return value
    return None


def concept_text(concept: object) -> str | None:
    """The words for a CodeableConcept: its text, else the first coding display, else code."""
    if type(concept) is dict:
        text = concept.get("text")
    elif concept is None or not isinstance(concept, Mapping):
        return None
    else:
        text = concept.get("text")
    if isinstance(text, str) and (text := text.strip()):
        return text
    if "coding" not in concept:
        codings: Any = (concept,)  # a Coding itself
    else:
        codings = concept["coding"]
        if type(codings) is not list:
            codings = get_list(concept, "coding")
    # get_str is None for an item that is not an object, as if get_list had dropped it.
    for coding in codings:
        if display := get_str(coding, "display"):
            return display
    for coding in codings:
        if code := get_str(coding, "code"):
            return code
    return None


_EMPTY: Mapping[str, Any] = {}


def as_resource(value: object) -> Mapping[str, Any]:
    """`value` when it is a JSON object, else an empty one: a mapper handed `null`, a list
    or a string where a resource belongs maps nothing (and says so) instead of raising."""
    return value if isinstance(value, Mapping) else _EMPTY


def resource_id(resource: object) -> str | None:
    return get_str(resource, "id")


def resource_type(resource: object) -> str:
    return get_str(resource, "resourceType") or "Unknown"


def human_name(names: object, *, prefer: Sequence[str] = ("official", "usual")) -> str | None:
    """Display text for the best HumanName in a list: `prefix given family`, or `text`."""
    if type(names) is not list and (
        not isinstance(names, Sequence) or isinstance(names, str | bytes)
    ):
        return None
    candidates = [n for n in names if type(n) is dict or isinstance(n, Mapping)]
    if len(candidates) == 1:  # most patients and practitioners have one name
        return format_name(candidates[0])
    usable = [n for n in candidates if get_str(n, "use") not in ("old", "maiden")]
    ranked = sorted(
        usable or candidates,
        key=lambda n: prefer.index(u) if (u := get_str(n, "use")) in prefer else len(prefer),
    )
    for name in ranked:
        text = format_name(name)
        if text:
            return text
    return None


def format_name(name: Mapping[str, Any]) -> str | None:
    parts = [*get_str_list(name, "prefix"), *get_str_list(name, "given")]
    family = get_str(name, "family")
    if family:
        parts.append(family)
    suffix = get_str_list(name, "suffix")
    text = " ".join(parts)
    if text and suffix:
        text = f"{text}, {' '.join(suffix)}"
    return text or get_str(name, "text")
