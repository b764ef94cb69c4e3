"""An in-memory FHIR resource store with the search parameters the sandbox supports.

Resources are kept as compact JSON bytes beside a few pre-extracted search keys, so that
tens of thousands of generated appointments stay cheap in memory and fast to search.
Resources are stored as given: no validation on read, messy fixtures are served as-is.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import sys
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

# Types that are not in the Patient compartment: a patient/ scope may read them freely
# (a patient's Practitioner and Location come along with `_include`).
NON_COMPARTMENT_TYPES = frozenset(
    {
        "Practitioner",
        "PractitionerRole",
        "Location",
        "Organization",
        "Questionnaire",
        "HealthcareService",
        "Endpoint",
        "Schedule",
        "Slot",
        "ValueSet",
        "CodeSystem",
    }
)


class SearchError(ValueError):
    """A search parameter the sandbox cannot make sense of (answered with 400)."""


# --- references and dates -----------------------------------------------------------


def ref_key(reference: str | None) -> str | None:
    """`Type/id` for a relative or absolute literal reference; None for `#x` or junk."""
    if not reference or reference.startswith("#"):
        return None
    parts = reference.split("?")[0].rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) < 2 or not parts[-2][:1].isupper() or not parts[-1]:
        return None
    return f"{parts[-2]}/{parts[-1]}"


def _refs(value: Any) -> list[str]:
    """Reference keys found in a Reference or a list of them."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, dict):
            key = ref_key(item.get("reference"))
            if key:
                out.append(key)
    return out


_PRECISION_FORMATS = {4: "%Y", 7: "%Y-%m", 10: "%Y-%m-%d"}


def parse_range(value: str, tz: dt.tzinfo) -> tuple[float, float]:
    """The [start, end) range in epoch seconds that a FHIR date/dateTime/instant covers.

    Values without an offset are taken in the sandbox's time zone (messy data has them).
    """
    value = value.strip()
    if len(value) in _PRECISION_FORMATS:
        try:
            start = dt.datetime.strptime(value, _PRECISION_FORMATS[len(value)])
        except ValueError as exc:
            raise SearchError(f"not a FHIR date: {value!r}") from exc
        start = start.replace(tzinfo=tz)
        if len(value) == 4:
            end = start.replace(year=start.year + 1)
        elif len(value) == 7:
            end = (start + dt.timedelta(days=32)).replace(day=1)
        else:
            end = (start + dt.timedelta(days=1)).replace(tzinfo=tz)
        return start.timestamp(), end.timestamp()
    text = value.replace("Z", "+00:00")
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise SearchError(f"not a FHIR date or dateTime: {value!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    # The range is as wide as the value's precision: a minute, a second or a millisecond.
    time_part = re.search(r"T\d\d:\d\d(:\d\d(\.\d+)?)?", text)
    step = 1.0
    if time_part and not time_part.group(1):
        step = 60.0
    elif time_part and time_part.group(2):
        step = 0.001
    return moment.timestamp(), moment.timestamp() + step


def _safe_range(value: Any, tz: dt.tzinfo) -> tuple[float, float] | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_range(value, tz)
    except (SearchError, ValueError):
        return None


# --- search parameter catalogue ------------------------------------------------------

Extractor = Callable[[Mapping[str, Any]], list[str]]


def _tokens_of_identifiers(res: Mapping[str, Any]) -> list[str]:
    out = []
    idents = res.get("identifier")
    for ident in idents if isinstance(idents, list) else [idents]:
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            out.append(f"{ident.get('system', '')}|{ident['value']}")
    return out


def _code(field_name: str) -> Extractor:
    def extract(res: Mapping[str, Any]) -> list[str]:
        value = res.get(field_name)
        return [f"|{value}"] if isinstance(value, str) else []

    return extract


def _ref_field(*field_names: str, only: str | None = None) -> Extractor:
    def extract(res: Mapping[str, Any]) -> list[str]:
        out: list[str] = []
        for name in field_names:
            out.extend(_refs(res.get(name)))
        return [r for r in out if only is None or r.startswith(only + "/")]

    return extract


def _participants(only: str | None = None) -> Extractor:
    def extract(res: Mapping[str, Any]) -> list[str]:
        out: list[str] = []
        for part in res.get("participant") or []:
            if isinstance(part, dict):
                out.extend(_refs(part.get("actor")))
        return [r for r in out if only is None or r.startswith(only + "/")]

    return extract


def fold(text: str) -> str:
    """String search is case- and accent-insensitive (FHIR R4 3.1.1.4.7): "jose" finds
    "José"."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def _names(res: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    names = res.get("name")
    if isinstance(names, str):  # Organization.name, Location.name
        return [fold(names)]
    for name in names if isinstance(names, list) else []:
        if not isinstance(name, dict):
            continue
        given = [g for g in name.get("given") or [] if isinstance(g, str)]
        family = name.get("family")
        parts = [family, name.get("text"), *given]
        parts += list(name.get("prefix") or []) + list(name.get("suffix") or [])
        # "Given Family" too, so a picker's "dana l" finds Dana Lee.
        parts.append(" ".join([*given, family] if isinstance(family, str) else given))
        out.extend(fold(p) for p in parts if isinstance(p, str) and p)
    return out


# Telecom values are matched on a normal form: phone-like numbers on their digits (a
# North American 11-digit number without its leading 1), so "+15550100113",
# "(555) 010-0113" and "+1 555-010-0113" are one number; emails case-insensitively.
_PHONE_SYSTEMS = frozenset({"phone", "sms", "fax", "pager"})
_PHONE_LIKE = re.compile(r"^[+\d\s().\-/]+$")


def phone_digits(value: str) -> str:
    digits = re.sub(r"\D", "", value)
    if len(digits) == 11 and digits.startswith("1"):
        digits = digits[1:]
    return digits


def contact_value(system: str, value: str) -> str:
    """The normal form of a ContactPoint value; `system` may be "" (guessed from it)."""
    value = value.strip()
    if system in _PHONE_SYSTEMS or (not system and _PHONE_LIKE.match(value)):
        return phone_digits(value)
    return value.lower()


def _telecom(only: str | None) -> Extractor:
    """Token keys `system|normal-value` of Patient.telecom (of one system if given)."""

    def extract(res: Mapping[str, Any]) -> list[str]:
        out: list[str] = []
        for cp in res.get("telecom") or []:
            if not isinstance(cp, dict) or not isinstance(cp.get("value"), str):
                continue
            system = str(cp.get("system") or "")
            if only is not None and system != only:
                continue
            normal = contact_value(system, cp["value"])
            if normal:
                out.append(f"{system}|{normal}")
        return out

    return extract


def _participant_status(res: Mapping[str, Any]) -> list[str]:
    return [
        f"|{part['status']}"
        for part in res.get("participant") or []
        if isinstance(part, dict) and isinstance(part.get("status"), str)
    ]


def _last_updated(res: Mapping[str, Any]) -> list[str]:
    meta = res.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, dict) else None
    return [value] if isinstance(value, str) else []


def _name_part(part: str) -> Extractor:
    def extract(res: Mapping[str, Any]) -> list[str]:
        out: list[str] = []
        for name in res.get("name") or []:
            if isinstance(name, dict):
                value = name.get(part)
                for v in value if isinstance(value, list) else [value]:
                    if isinstance(v, str):
                        out.append(v.lower())
        return out

    return extract


def _plain(field_name: str) -> Extractor:
    def extract(res: Mapping[str, Any]) -> list[str]:
        value = res.get(field_name)
        return [value] if isinstance(value, str) else []

    return extract


@dataclass(frozen=True)
class Param:
    kind: str  # token | reference | string | uri | date
    extract: Extractor
    target: str | None = None  # default target type for a bare id in a reference param
    # Token params whose values are compared in a normal form: (system, code) -> code.
    normalize: Callable[[str, str], str] | None = None


_ID = Param("token", lambda r: [f"|{r.get('id')}"])
# Parameters every type has.
COMMON_PARAMS: dict[str, Param] = {
    "_id": _ID,
    "_lastUpdated": Param("date", _last_updated),
}
_IDENT = Param("token", _tokens_of_identifiers)
_STATUS = Param("token", _code("status"))
_NAME = Param("string", _names)

SEARCH_PARAMS: dict[str, dict[str, Param]] = {
    "Patient": {
        "identifier": _IDENT,
        "name": _NAME,
        "family": Param("string", _name_part("family")),
        "given": Param("string", _name_part("given")),
        "birthdate": Param("date", _plain("birthDate")),
        "gender": Param("token", _code("gender")),
        "phone": Param("token", _telecom("phone"), normalize=lambda _s, v: phone_digits(v)),
        "email": Param("token", _telecom("email"), normalize=lambda _s, v: v.strip().lower()),
        "telecom": Param("token", _telecom(None), normalize=contact_value),
    },
    "Practitioner": {"identifier": _IDENT, "name": _NAME},
    "PractitionerRole": {
        "identifier": _IDENT,
        "practitioner": Param("reference", _ref_field("practitioner"), "Practitioner"),
        "location": Param("reference", _ref_field("location"), "Location"),
    },
    "Location": {"identifier": _IDENT, "name": _NAME, "status": _STATUS},
    "Organization": {"identifier": _IDENT, "name": _NAME},
    "Appointment": {
        "identifier": _IDENT,
        "status": _STATUS,
        "patient": Param("reference", _participants("Patient"), "Patient"),
        "actor": Param("reference", _participants(), None),
        "practitioner": Param("reference", _participants("Practitioner"), "Practitioner"),
        "location": Param("reference", _participants("Location"), "Location"),
        "date": Param("date", _plain("start")),
        "based-on": Param("reference", _ref_field("basedOn"), "ServiceRequest"),
        "part-status": Param("token", _participant_status),
    },
    "Coverage": {
        "identifier": _IDENT,
        "status": _STATUS,
        "beneficiary": Param("reference", _ref_field("beneficiary"), "Patient"),
        "patient": Param("reference", _ref_field("beneficiary", only="Patient"), "Patient"),
        "payor": Param("reference", _ref_field("payor"), None),
    },
    "Encounter": {
        "identifier": _IDENT,
        "status": _STATUS,
        "patient": Param("reference", _ref_field("subject", only="Patient"), "Patient"),
        "subject": Param("reference", _ref_field("subject"), "Patient"),
        "appointment": Param("reference", _ref_field("appointment"), "Appointment"),
    },
    "Questionnaire": {
        "identifier": _IDENT,
        "status": _STATUS,
        "url": Param("uri", _plain("url")),
        "version": Param("token", _code("version")),
        "name": _NAME,
    },
    "QuestionnaireResponse": {
        "identifier": _IDENT,
        "status": _STATUS,
        "subject": Param("reference", _ref_field("subject"), "Patient"),
        "patient": Param("reference", _ref_field("subject", only="Patient"), "Patient"),
        "encounter": Param("reference", _ref_field("encounter"), "Encounter"),
        "questionnaire": Param("uri", _plain("questionnaire")),
    },
    "ServiceRequest": {
        "identifier": _IDENT,
        "status": _STATUS,
        "patient": Param("reference", _ref_field("subject", only="Patient"), "Patient"),
        "subject": Param("reference", _ref_field("subject"), "Patient"),
        "requester": Param("reference", _ref_field("requester"), None),
        "performer": Param("reference", _ref_field("performer"), None),
        "authored": Param("date", _plain("authoredOn")),
    },
    "Task": {
        "identifier": _IDENT,
        "status": _STATUS,
        "patient": Param("reference", _ref_field("for", only="Patient"), "Patient"),
        "subject": Param("reference", _ref_field("for"), "Patient"),
        "focus": Param("reference", _ref_field("focus"), None),
        "based-on": Param("reference", _ref_field("basedOn"), None),
        "owner": Param("reference", _ref_field("owner"), None),
        "authored-on": Param("date", _plain("authoredOn")),
        "modified": Param("date", _plain("lastModified")),
    },
}

# Where a resource names its patient, for the Patient compartment (patient/ scopes).
_COMPARTMENT_FIELDS: dict[str, tuple[str, ...]] = {
    "Coverage": ("beneficiary", "subscriber", "policyHolder"),
    "QuestionnaireResponse": ("subject", "author", "source"),
    "Task": ("for",),
}
_DEFAULT_COMPARTMENT_FIELDS = ("subject", "patient", "beneficiary")


def compartment_patients(res: Mapping[str, Any]) -> list[str]:
    """Ids of the patients whose compartment holds this resource."""
    rtype = res.get("resourceType")
    if rtype == "Patient":
        return [str(res.get("id"))]
    if rtype == "Appointment":
        refs = _participants("Patient")(res)
    else:
        fields = _COMPARTMENT_FIELDS.get(str(rtype), _DEFAULT_COMPARTMENT_FIELDS)
        refs = _ref_field(*fields, only="Patient")(res)
    return [r.split("/", 1)[1] for r in refs]


@functools.cache
def params_of(rtype: str) -> dict[str, Param]:
    """Every search parameter of a type, the common ones first."""
    return {**COMMON_PARAMS, **SEARCH_PARAMS.get(rtype, {})}


def search_param_names(rtype: str) -> list[str]:
    return list(params_of(rtype))


# --- the store ---------------------------------------------------------------------


class Record:
    __slots__ = ("seq", "data", "keys", "span", "compartment")

    def __init__(
        self,
        seq: int,
        data: bytes,
        keys: dict[str, list[str]],
        span: dict[str, tuple[float, float]],
        compartment: tuple[str, ...],
    ) -> None:
        self.seq = seq
        self.data = data
        self.keys = keys
        self.span = span
        self.compartment = compartment


@dataclass(frozen=True)
class Criterion:
    name: str
    modifier: str
    values: tuple[str, ...]  # alternatives (comma-separated in the query): OR


def parse_criteria(rtype: str, params: Iterable[tuple[str, str]]) -> list[Criterion]:
    """Turn query pairs into criteria; result parameters (`_count`, `_include`, ...)
    are skipped.

    Unknown parameters are ignored, as lenient FHIR servers do by default.
    """
    known = params_of(rtype)
    out = []
    for raw_name, raw_value in params:
        name, _, modifier = raw_name.partition(":")
        if name not in known:
            continue
        if modifier == "missing":
            raise SearchError(f"modifier :missing is not supported on {name}")
        values = tuple(v for v in raw_value.split(",") if v != "")
        if not values:
            raise SearchError(f"empty value for search parameter {name}")
        out.append(Criterion(name, modifier, values))
    return out


class FhirStore:
    """Resources by type and id; thread-safe; searches are cached per store generation."""

    def __init__(self, tz: str) -> None:
        self.tz = ZoneInfo(tz)
        self._lock = threading.RLock()
        self._types: dict[str, dict[str, Record]] = {}
        self._seq = 0
        self.generation = 0
        self._cache: OrderedDict[tuple[Any, ...], list[str]] = OrderedDict()
        # (type, token parameter) -> "system|code" -> ids: a search for whole tokens
        # (an identifier, as a conditional create's If-None-Exist) looks its candidates
        # up instead of reading every resource of the type, as a real server's index does.
        self._tokens: dict[tuple[str, str], dict[str, set[str]]] = {}

    # -- writes

    def put(self, resource: Mapping[str, Any]) -> None:
        """Store a resource exactly as given (it must carry resourceType and id)."""
        rtype = str(resource["resourceType"])
        rid = str(resource["id"])
        params = params_of(rtype)
        keys: dict[str, list[str]] = {}
        span: dict[str, tuple[float, float]] = {}
        for name, param in params.items():
            try:
                values = param.extract(resource)
            except (AttributeError, TypeError):
                values = []  # odd shapes in messy data: not searchable, still served
            if param.kind == "date":
                rng = _safe_range(values[0], self.tz) if values else None
                if rng is not None:
                    span[name] = rng
            elif values:
                # Interned: 50,000 appointments share a handful of patients and places.
                keys[name] = [sys.intern(v) for v in values]
        data = json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode()
        with self._lock:
            of_type = self._types.setdefault(rtype, {})
            old = of_type.get(rid)
            if old is not None:
                self._index(rtype, rid, old.keys, add=False)
                seq = old.seq  # a new version keeps its place in the insertion order
            else:
                self._seq += 1
                seq = self._seq
            of_type[rid] = Record(seq, data, keys, span, tuple(compartment_patients(resource)))
            self._index(rtype, rid, keys, add=True)
            self.generation += 1
            self._cache.clear()

    def _index(self, rtype: str, rid: str, keys: Mapping[str, list[str]], *, add: bool) -> None:
        params = params_of(rtype)
        for name, values in keys.items():
            param = params[name]
            if param.kind != "token" or param.normalize is not None:
                continue
            index = self._tokens.setdefault((rtype, name), {})
            for value in values:
                if add:
                    index.setdefault(value, set()).add(rid)
                elif value in index:
                    index[value].discard(rid)

    def clear(self) -> None:
        with self._lock:
            self._types.clear()
            self._tokens.clear()
            self.generation += 1
            self._cache.clear()

    # -- reads

    def get(self, rtype: str, rid: str) -> dict[str, Any] | None:
        with self._lock:
            rec = self._types.get(rtype, {}).get(rid)
        return json.loads(rec.data) if rec else None

    def compartment_of(self, rtype: str, rid: str) -> tuple[str, ...]:
        with self._lock:
            rec = self._types.get(rtype, {}).get(rid)
        return rec.compartment if rec else ()

    def count(self, rtype: str) -> int:
        with self._lock:
            return len(self._types.get(rtype, {}))

    def types(self) -> list[str]:
        with self._lock:
            return sorted(self._types)

    def all_of(self, rtype: str) -> Iterator[dict[str, Any]]:
        with self._lock:
            records = list(self._types.get(rtype, {}).values())
        for rec in records:
            yield json.loads(rec.data)

    def search(
        self,
        rtype: str,
        criteria: Sequence[Criterion],
        *,
        compartment: str | None = None,
        canonical: bool = True,
    ) -> list[str]:
        """Ids matching all criteria, in insertion order; within one patient if given.

        `canonical=False`: uri parameters match the whole value literally, so
        `url=X|1.0.0` finds nothing (a server without canonical `|version` search).
        """
        cache_key = (rtype, tuple(criteria), compartment, canonical, self.generation)
        with self._lock:
            cached = self._cache.get(cache_key)
            if cached is not None:
                self._cache.move_to_end(cache_key)
                return cached
            of_type = self._types.get(rtype, {})
            candidates = self._indexed(rtype, criteria)
            if candidates is None:
                records = list(of_type.items())
            else:
                found = [(rid, of_type[rid]) for rid in candidates if rid in of_type]
                records = sorted(found, key=lambda item: item[1].seq)
        matchers = [self._matcher(rtype, c, canonical) for c in criteria]
        ids = [
            rid
            for rid, rec in records
            if (compartment is None or compartment in rec.compartment)
            and all(m(rec) for m in matchers)
        ]
        with self._lock:
            if self.generation == cache_key[-1]:
                self._cache[cache_key] = ids
                while len(self._cache) > 64:
                    self._cache.popitem(last=False)
        return ids

    def _indexed(self, rtype: str, criteria: Sequence[Criterion]) -> set[str] | None:
        """The ids that can match a criterion on whole tokens (``system|code``, no
        modifier), the fewest of them when several can; None when no criterion can be
        looked up (every resource of the type is a candidate). The caller still applies
        every criterion to the candidates."""
        best: set[str] | None = None
        params = params_of(rtype)
        for crit in criteria:
            param = params[crit.name]
            if param.kind != "token" or param.normalize is not None or crit.modifier:
                continue
            if not all(v.partition("|")[1] and v.partition("|")[2] for v in crit.values):
                continue
            index = self._tokens.get((rtype, crit.name), {})
            ids: set[str] = set()
            for value in crit.values:
                ids |= index.get(value, set())
            if best is None or len(ids) < len(best):
                best = ids
        return best

    def _matcher(self, rtype: str, crit: Criterion, canonical: bool) -> Callable[[Record], bool]:
        param = params_of(rtype)[crit.name]
        name = crit.name
        if param.kind == "date":
            tests = [self._date_test(v) for v in crit.values]
            return lambda rec: name in rec.span and any(t(rec.span[name]) for t in tests)
        if param.kind == "token":
            values = crit.values
            if param.normalize is not None:
                values = tuple(_normalized(v, param.normalize) for v in values)
            wanted = [_token_test(v) for v in values]
            if crit.modifier == "not":
                return lambda rec: not any(t(k) for k in rec.keys.get(name, ()) for t in wanted)
            if crit.modifier:
                raise SearchError(f"modifier :{crit.modifier} is not supported on {name}")
            return lambda rec: any(t(k) for k in rec.keys.get(name, ()) for t in wanted)
        if param.kind == "reference":
            refs: set[str] = set()
            bare: set[str] = set()  # ids on a polymorphic parameter (actor=123): any type
            target = crit.modifier or param.target
            for value in crit.values:
                if "/" in value:
                    key = ref_key(value)
                    if key:
                        refs.add(key)
                elif target:
                    refs.add(f"{target}/{value}")
                else:
                    bare.add(value)

            def match_ref(rec: Record) -> bool:
                return any(k in refs or k.split("/", 1)[1] in bare for k in rec.keys.get(name, ()))

            return match_ref
        if param.kind == "uri":
            if not canonical:
                literal = set(crit.values)
                return lambda rec: any(k in literal for k in rec.keys.get(name, ()))
            return _uri_matcher(name, crit.values)
        # string: starts-with, case-insensitive (":exact" and ":contains" as in the spec)
        lowered = [fold(v) for v in crit.values]
        if crit.modifier == "exact":
            exact = set(lowered)
            return lambda rec: any(k in exact for k in rec.keys.get(name, ()))
        if crit.modifier == "contains":
            return lambda rec: any(v in k for k in rec.keys.get(name, ()) for v in lowered)
        if crit.modifier:
            raise SearchError(f"modifier :{crit.modifier} is not supported on {name}")
        return lambda rec: any(k.startswith(v) for k in rec.keys.get(name, ()) for v in lowered)

    def _date_test(self, value: str) -> Callable[[tuple[float, float]], bool]:
        prefix = value[:2] if value[:2].isalpha() else "eq"
        lo, hi = parse_range(value[2:] if value[:2].isalpha() else value, self.tz)
        # The resource's value is an instant range [s, e]; comparisons per FHIR R4 3.1.1.4.
        tests: dict[str, Callable[[tuple[float, float]], bool]] = {
            "eq": lambda s: lo <= s[0] and s[1] <= hi,
            "ne": lambda s: not (lo <= s[0] and s[1] <= hi),
            "gt": lambda s: s[1] >= hi,
            "ge": lambda s: s[1] >= lo,
            "lt": lambda s: s[0] < lo,
            "le": lambda s: s[0] < hi,
            "sa": lambda s: s[0] >= hi,
            "eb": lambda s: s[1] < lo,
        }
        if prefix not in tests:
            raise SearchError(f"unsupported date prefix {prefix!r}")
        return tests[prefix]


def _normalized(value: str, normalize: Callable[[str, str], str]) -> str:
    system, bar, code = value.rpartition("|")
    if bar and not code:
        return value  # `system|`: any value of that system
    return f"{system}{bar}{normalize(system, code)}"


def _token_test(value: str) -> Callable[[str], bool]:
    if "|" not in value:
        return lambda key: key.split("|", 1)[1] == value
    system, _, code = value.partition("|")
    if not code:
        return lambda key: key.split("|", 1)[0] == system
    return lambda key: key == f"{system}|{code}"


def _uri_matcher(name: str, values: Sequence[str]) -> Callable[[Record], bool]:
    """Canonical matching: `url` or `url|version` (Questionnaire.url, QR.questionnaire)."""
    wanted = [v.partition("|") for v in values]

    def match(rec: Record) -> bool:
        for key in rec.keys.get(name, ()):
            url, _, version = key.partition("|")
            for w_url, _, w_version in wanted:
                if url == w_url and (not w_version or version == w_version):
                    return True
        return False

    if name == "url":
        # For Questionnaire.url the version lives in its own element.
        def match_url(rec: Record) -> bool:
            urls = rec.keys.get("url", ())
            versions = [k.split("|", 1)[1] for k in rec.keys.get("version", ())]
            for w_url, _, w_version in wanted:
                if w_url in urls and (not w_version or w_version in versions):
                    return True
            return False

        return match_url
    return match
