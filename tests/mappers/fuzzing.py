"""Generated malformed FHIR for the mapper fuzz suite (issue 12 §1), and `drive`, which
runs one generated case through every public mapper entry point.

A case starts from real fixture resources (so the mappers' deep paths are reached, not
just their first type check) and applies random damage at random places: wrong JSON
types at any level, keys removed, objects where lists belong and lists where objects
belong, extreme and partial dates with and without offsets, every reference form,
extensions without url, unpaired surrogates, huge strings and long arrays. The damaged
resources are also packed into Bundles (searchset, collection, transaction with
`urn:uuid` fullUrls, batch-response with nested searchsets) that are damaged in turn.

Used by tests/mappers/test_mappers_fuzz.py (a seeded sample in `make test`, the corpus
of past failures replayed) and bench/fuzz.py (all 10,000 cases, counted).
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib
import json
import pkgutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from fhir_mappers import contact, flags, names
from fhir_mappers.appointment import patient_of, patients_of, to_visit
from fhir_mappers.board import board_rows, coverages_by_patient, sort_by_flags
from fhir_mappers.bundle import (
    NotFhirError,
    contexts_for_file,
    read_entries,
    run_map,
    search_entries,
)
from fhir_mappers.context import build_context, patient_refs
from fhir_mappers.coverage import beneficiary_of, to_insurance, to_policy
from fhir_mappers.fhirutil import index_resources, resource_zone
from fhir_mappers.patient import to_contact
from fhir_mappers.referral import ReferralTarget, booked_at, scheduling_of
from fhir_mappers.survey import (
    AnswerError,
    QuestionnaireError,
    language_for_patient,
    parse_answers,
    to_form,
)
from fhir_mappers.validation import validation_warnings
from fixtures.population import QUESTIONNAIRE_PATH, build_population

DAY = dt.date(2026, 11, 30)
# `now` is CareDesk's clock, not EHR data: realistic, always at a non-UTC offset.
NOWS = (
    dt.datetime(2026, 11, 30, 22, 13, tzinfo=ZoneInfo("America/Chicago")),
    dt.datetime(2026, 3, 8, 2, 30, tzinfo=ZoneInfo("America/Denver")),  # DST gap day
    dt.datetime(2026, 12, 31, 23, 59, tzinfo=ZoneInfo("Pacific/Kiritimati")),  # +14:00
)
VIEWER_ZONES = ("America/Chicago", "America/Denver", "Pacific/Kiritimati", "Etc/GMT+12", "UTC")

_POP = build_population(DAY)
SEEDS: list[dict[str, Any]] = [
    r for t in ("Patient", "Appointment", "Coverage", "Practitioner", "Location") for r in _POP[t]
]
SEEDS += _POP["Organization"] + _POP["Encounter"][:3]
QUESTIONNAIRE: dict[str, Any] = json.loads(QUESTIONNAIRE_PATH.read_text(encoding="utf-8"))

RESTRICTION = contact.CONTACT_RESTRICTION_URL
TZ_EXT = "http://hl7.org/fhir/StructureDefinition/timezone"

# --- values ------------------------------------------------------------------------------

SURROGATES = ["\ud800", "\udfff", "\udc00abc", "a\ud83d", "\ud83d\ude00"]  # lone, and a pair


def _text() -> st.SearchStrategy[str]:
    plain = st.text(max_size=20)
    odd = st.sampled_from(["", " ", "\x00", "\n", "\u202e", "<script>", "null", *SURROGATES])
    # Up to 10,000 characters: over twice the longest length any mapper checks
    # (fhirutil.MAX_REFERENCE_LENGTH, 4,096); no failure in fuzz_corpus/ needed a string
    # longer than 51. Up to 120,000 made a few cases of hundreds of megabytes and spent half
    # the sample's time in json.dumps.
    huge = st.builds(
        lambda c, n: c * n, st.sampled_from(["x", "é", "/", "\ud800"]), st.integers(1, 10_000)
    )
    return st.one_of(plain, odd, huge)


def _offset() -> st.SearchStrategy[str]:
    return st.sampled_from(
        ["Z", "+14:00", "-12:00", "+00:00", "-06:00", "+05:30", "+99:99", "-00:00"]
    )


def _datetime_text() -> st.SearchStrategy[str]:
    """Dates and dateTimes: partial, extreme years, with and without offsets, and broken."""

    def render(moment: dt.datetime, cut: int, offset: str | None) -> str:
        full = (
            moment.strftime("%Y-%m-%dT%H:%M:%S")
            if moment.year >= 1000
            else (f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}")
        )
        lengths = (4, 7, 10, 16, 19)
        text = full[: lengths[cut]]
        if cut >= 3 and offset is not None:
            text += offset
        return text

    generated = st.builds(
        render,
        st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59)),
        st.integers(0, 4),
        st.one_of(st.none(), _offset()),
    )
    fixed = st.sampled_from(
        [
            "0001-01-01T00:00:00+14:00",
            "0001-01-01T00:30:00+14:00",
            "9999-12-31T23:59:59-12:00",
            "9999-12-31T23:30:00.999999-12:00",
            "0001",
            "9999-12",
            "0000-01-01",
            "2026-02-30",
            "2026-13",
            "2026-11-30T25:00:00Z",
            "2026-11-30T10:00:60Z",
            "2026-11-30T10:00",
            "2026-11-30T10:00:00.1234567890123-06:00",
            " 2026-11-30 ",
            "2026-11-30T10:00:00+14:00",
            "+2026-11-30",
            "２０２６-11-30",
        ]
    )
    return st.one_of(generated, fixed)


def _reference_text() -> st.SearchStrategy[str]:
    rtype = st.sampled_from(
        [
            "Patient",
            "Practitioner",
            "PractitionerRole",
            "Location",
            "Organization",
            "HealthcareService",
            "Device",
            "patient",
            "X",
        ]
    )
    rid = st.one_of(
        st.sampled_from(["1", "pat-001", "prac-clinician-okafor", "loc-denver", "a" * 65]),
        st.text(max_size=8),
    )
    forms = st.sampled_from(
        [
            "{t}/{i}",
            "https://ehr.example/fhir/{t}/{i}",
            "https://ehr.example/fhir/{t}/{i}/_history/2",
            "{t}/{i}/_history/x",
            "#{i}",
            "urn:uuid:{i}",
            "urn:oid:1.2.{i}",
            "{t}?identifier={i}",
            "{t}/",
            "/{t}/{i}",
            "{t}/{i}/extra",
            "http://{t}/{i}",
            "{t} / {i}",
            "https://" + "a/" * 3000 + "{t}/{i}",
        ]
    )
    return st.builds(lambda f, t, i: f.format(t=t, i=i), forms, rtype, rid)


_KEYS = st.sampled_from(
    [
        "reference",
        "display",
        "url",
        "valueCode",
        "coding",
        "code",
        "system",
        "start",
        "end",
        "extension",
        "id",
        "resourceType",
        "x",
    ]
) | st.text(max_size=6)


def _scalar() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.sampled_from([0, -1, 1, 2**63, 10**400]),
        st.floats(allow_nan=True, allow_infinity=True),
        _text(),
        _datetime_text(),
        _reference_text(),
    )


def _json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    return st.recursive(
        _scalar(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(
                st.sampled_from(
                    [
                        "reference",
                        "display",
                        "url",
                        "valueCode",
                        "coding",
                        "code",
                        "system",
                        "start",
                        "end",
                        "extension",
                        "id",
                        "resourceType",
                        "x",
                    ]
                )
                | st.text(max_size=6),
                inner,
                max_size=4,
            ),
        ),
        max_leaves=max_leaves,
    )


def _special_piece() -> st.SearchStrategy[Any]:
    """Structures real EHR JSON gets wrong, in FHIR's own vocabulary."""
    return st.one_of(
        st.builds(lambda r: {"reference": r}, _reference_text()),
        st.builds(lambda r, d: {"reference": r, "display": d}, _reference_text(), _text()),
        st.just({"display": "Dr. Display Only"}),
        st.builds(
            lambda v: {"valueCode": v}, st.sampled_from(["no-sms", "America/Denver"])
        ),  # no url
        st.builds(
            lambda c: {"url": RESTRICTION, "valueCode": c},
            st.sampled_from(["no-contact", "no-sms", "no-phone", "no-survey", ""]),
        ),
        st.builds(lambda c: {"url": RESTRICTION, "valueCoding": c}, JSON_SMALL),
        st.builds(
            lambda z: {"url": TZ_EXT, "valueCode": z},
            st.one_of(st.sampled_from(["America/Denver", "Mars/Base", "../etc", ""]), _text()),
        ),
        st.builds(lambda v: {"url": v}, JSON_SMALL),
        st.lists(st.builds(lambda r: {"actor": {"reference": r}}, _reference_text()), max_size=3),
        st.builds(lambda n, item: [item] * n, st.integers(100, 1500), JSON_SMALL),  # a long array
        st.builds(lambda depth: _nest(depth), st.integers(50, 400)),
    )


# Strategies are built once: building one validates it, which costs more than drawing.
SCALAR = _scalar()
JSON_VALUES = _json_values()
JSON_SMALL = _json_values(3)
SPECIAL = _special_piece()
VALUE = st.one_of(SCALAR, SPECIAL, JSON_VALUES)
DATES = _datetime_text()
REFERENCES = _reference_text()
EXTENSIONS = st.lists(SPECIAL, min_size=1, max_size=3)
# Where a key says what belongs there, most damage is of that kind: a wrong date in a date
# field reaches the date code, where a random value would stop at the first type check.
_DATE_KEYS = frozenset(
    {"start", "end", "birthDate", "deceasedDateTime", "created", "lastUpdated", "due_at"}
)
_BY_KEY: dict[str, st.SearchStrategy[Any]] = {
    **{key: st.one_of(DATES, DATES, DATES, VALUE) for key in _DATE_KEYS},
    "reference": st.one_of(REFERENCES, REFERENCES, REFERENCES, VALUE),
    "extension": st.one_of(EXTENSIONS, EXTENSIONS, VALUE),
}
ACTIONS = st.sampled_from(
    ["replace", "replace", "replace", "delete", "wrap", "unwrap", "add", "stringify"]
)


def json_values() -> st.SearchStrategy[Any]:
    return JSON_VALUES


def _nest(depth: int) -> Any:
    node: Any = {"reference": "Patient/deep"}
    for i in range(depth):
        node = [node] if i % 2 else {"extension": node}
    return node


# --- damage ------------------------------------------------------------------------------


def _paths(
    node: Any,
    here: tuple[Any, ...] = (),
    out: list[tuple[Any, ...]] | None = None,
    limit: int = 400,
) -> list[tuple[Any, ...]]:
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    out.append(here)
    if isinstance(node, dict):
        for key, value in list(node.items())[:40]:
            _paths(value, (*here, key), out, limit)
    elif isinstance(node, list):
        for index, value in enumerate(node[:10]):
            _paths(value, (*here, index), out, limit)
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


def _apply(doc: Any, path: tuple[Any, ...], action: str, value: Any) -> Any:
    if not path:
        return value if action == "replace" else doc
    parent = _get(doc, path[:-1])
    key = path[-1]
    current = parent[key]
    if action == "replace":
        parent[key] = value
    elif action == "delete":
        del parent[key]
    elif action == "wrap":
        parent[key] = [current]
    elif action == "unwrap" and isinstance(current, list):
        parent[key] = current[0] if current else None
    elif action == "add" and isinstance(current, dict):
        current[value if isinstance(value, str) else "extra"] = copy.deepcopy(current)
    elif action == "add" and isinstance(current, list):
        current.append(value)
    elif action == "stringify":
        parent[key] = json.dumps(current)[:200]
    return doc


STEPS = st.integers(0, 5)
FEW_STEPS = st.integers(0, 3)
PICK = st.integers(0, 10_000)
SEED = st.sampled_from(SEEDS)
ONE_IN_TEN = st.integers(0, 9)
ONE_IN_FOUR = st.integers(0, 3)
KINDS = st.sampled_from(["searchset", "collection", "transaction", "batch-response", "bad"])
MODES = st.sampled_from(["match", "include", "outcome", None])
CLOCKS = st.integers(0, len(NOWS) - 1)
ZONES = st.sampled_from(VIEWER_ZONES)


def _damage(draw: st.DrawFn, base: Any, steps: st.SearchStrategy[int]) -> Any:
    """`base`, copied, with a few random changes at random places."""
    doc = copy.deepcopy(base)
    for _ in range(draw(steps)):
        paths = _paths(doc)
        path = paths[draw(PICK) % len(paths)]
        action = draw(ACTIONS)
        key = path[-1] if path else None
        # A copy: a drawn constant (st.just, sampled_from) must not change under later
        # damage, or the next draw of it differs and Hypothesis cannot replay the case.
        value = copy.deepcopy(draw(_BY_KEY.get(key, VALUE) if isinstance(key, str) else VALUE))
        try:
            doc = _apply(doc, path, action, value)
        except (KeyError, IndexError, TypeError):
            continue
    return doc


@st.composite
def resources(draw: st.DrawFn) -> Any:
    if draw(ONE_IN_TEN) == 0:
        return draw(JSON_VALUES)  # not a resource at all
    return _damage(draw, draw(SEED), STEPS)


def _bundle(draw: st.DrawFn, members: list[Any]) -> Any:
    kind = draw(KINDS)
    bundle: Any
    if kind == "batch-response":
        half = len(members) // 2
        inner = [
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "link": [{"relation": "self", "url": "https://ehr/fhir/Appointment?patient=1"}],
                "entry": [{"resource": m, "search": {"mode": draw(MODES)}} for m in part],
            }
            for part in (members[:half], members[half:])
        ]
        bundle = {
            "resourceType": "Bundle",
            "type": kind,
            "entry": [{"resource": b, "response": {"status": "200"}} for b in inner],
        }
    else:
        entries = []
        for index, member in enumerate(members):
            entry: dict[str, Any] = {"resource": member}
            if kind == "transaction":
                entry["fullUrl"] = f"urn:uuid:00000000-0000-0000-0000-{index:012d}"
            if kind == "searchset":
                entry["search"] = {"mode": draw(MODES)}
            entries.append(entry)
        bundle = {
            "resourceType": "Bundle",
            "type": kind,
            "entry": entries,
            "link": [{"relation": "next", "url": "https://ehr/fhir/x?page=2"}],
        }
    return _damage(draw, bundle, FEW_STEPS)


MEMBERS = st.lists(resources(), min_size=1, max_size=6)


@st.composite
def _cases(draw: st.DrawFn) -> dict[str, Any]:
    members = draw(MEMBERS)
    return {
        "resources": members,
        "bundle": _bundle(draw, members),
        "now": draw(CLOCKS),
        "viewer_tz": draw(ZONES),
        "questionnaire": _damage(draw, QUESTIONNAIRE, FEW_STEPS)
        if draw(ONE_IN_FOUR) == 0
        else None,
    }


CASES = _cases()


def cases() -> st.SearchStrategy[dict[str, Any]]:
    """One fuzz case: a handful of damaged resources, a Bundle of them, a clock, and
    sometimes a damaged Questionnaire."""
    return CASES


# Packages whose source constants Hypothesis may draw from while generating cases.
CONSTANTS_FROM = ("fhir_mappers", "fixtures")


def seeded(count: int) -> settings:
    """The sample's settings: the same `count` cases on every run and machine (a red CI run
    is reproducible), nothing written under the checkout, no deadline (a huge generated
    string takes long on a busy machine, which is fine)."""
    return settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


@contextmanager
def constants_of_the_mappers() -> Iterator[None]:
    """Generate with the source constants of the mappers and their fixture data only.

    Hypothesis (6.13x) also draws, now and then, an integer or a string it found in the
    source of every local module imported so far (hypothesis.internal.conjecture.providers),
    so a derandomized sample was the same only in a process that had imported the same
    modules: alone, the 600 cases took ~22 s of CPU and 0.8 GB; after other tests of the
    same pytest-xdist process had imported the app and the jobs, 137 s and 10 GB. This pins
    the pool to what the sample gets when it runs alone (every module of CONSTANTS_FROM).
    It reaches into Hypothesis' internals (hypothesis<7 is pinned in pyproject.toml);
    tests/mappers/test_mappers_fuzz.py checks the pool stays pinned.
    """
    from hypothesis.internal.conjecture import providers
    from hypothesis.internal.constants_ast import Constants, constants_from_module
    from hypothesis.internal.floats import float_to_int
    from sortedcontainers import SortedSet

    pool = Constants(
        integers=SortedSet(),
        floats=SortedSet(key=float_to_int),
        bytes=SortedSet(),
        strings=SortedSet(),
    )
    for package in map(importlib.import_module, CONSTANTS_FROM):
        pool |= constants_from_module(package)
        for info in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            pool |= constants_from_module(importlib.import_module(info.name))
    saved = providers._get_local_constants
    providers._get_local_constants = lambda: pool
    providers.CONSTANTS_CACHE.cache.clear()  # constant choices cached from another pool
    try:
        yield
    finally:
        providers._get_local_constants = saved
        providers.CONSTANTS_CACHE.cache.clear()


# --- driving every entry point -----------------------------------------------------------


def _typed(resources: list[Any], rtype: str) -> list[Any]:
    return [r for r in resources if isinstance(r, dict) and r.get("resourceType") == rtype]


def _check_visit_warnings(resource: Any, visit: Any) -> None:
    """What the mapper could not read is a warning, not silence."""
    if isinstance(resource, dict) and resource.get("start") is not None and visit.start is None:
        assert any(w.field == "start" for w in visit.warnings), "unreadable start without a warning"


def drive(case: dict[str, Any]) -> int:
    """Every public entry point over one case; returns how many calls were made.

    Raises only what a mapper may raise by contract: NotFhirError from
    read_entries/contexts_for_file on input that is not FHIR (run_map turns it into exit
    2), the survey mapper's QuestionnaireError for a Questionnaire it cannot render and
    AnswerError for posted answers that do not fit. Anything else is a bug.
    """
    calls = 0
    now = NOWS[case["now"] % len(NOWS)]
    viewer = str(case["viewer_tz"])
    members: list[Any] = list(case["resources"])
    index = index_resources(members)
    patients = _typed(members, "Patient")
    appointments = _typed(members, "Appointment")
    coverages = _typed(members, "Coverage")

    def call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return func(*args, **kwargs)

    for res in members:
        call(validation_warnings, res if isinstance(res, dict) else {"resourceType": res})
        call(to_contact, res, now=now)
        visit = call(to_visit, res, now=now, viewer_tz=viewer, included=index)
        _check_visit_warnings(res, visit)
        call(to_policy, res, today=now.date())
        call(patient_of, res)
        call(patients_of, res)
        call(beneficiary_of, res)
        call(patient_refs, res if isinstance(res, dict) else {})
        call(resource_zone, res)
        for predicate in (contact.may_sms, contact.may_email, contact.may_call, contact.may_survey):
            call(predicate, res)
        call(contact.restrictions_of, res)
        call(contact.reachable, res, now=now)
        call(contact.reachable, res, now=now, requested="sms")
        call(contact.preferred_language, res)
        call(contact.pick_language, res, ("en", "es"))
        call(contact.interpreter_needed, res, ("en",))
        call(contact.first_name, res, today=now.date())
        call(contact.reachable_by_phone, res, now)
        call(language_for_patient, QUESTIONNAIRE, res)
    call(to_insurance, members, now=now, included=index)
    target = ReferralTarget(
        patient="Patient/pat-001",
        made_at=now - dt.timedelta(days=30),
        service_request="ServiceRequest/sr-1",
        practitioner="Practitioner/prac-clinician-okafor",
        organization="Organization/org-payor-aetna",
        specialty="Annual physical",
    )
    call(scheduling_of, members, target, default_tz=now.tzinfo or dt.UTC)
    for res in members:
        call(booked_at, res, now.tzinfo or dt.UTC)
    call(names.unresolved_references, members, members)
    # The R4B validation inside build_context and run_map is the slow part; each resource
    # goes through it a few times, not a dozen.
    for patient, validate in ((patients[0] if patients else None, True), (None, False)):
        context = call(
            build_context,
            patient=patient,
            validate=validate,
            appointments=members,
            included=members,
            coverages=members if case["now"] != 1 else None,
            now=now,
            viewer_tz=viewer,
            tickets=[m for m in members if isinstance(m, dict)][:2],
            tasks=[{"kind": "follow-up", "status": "waiting", "due_at": m} for m in members[:2]],
        )
        json.dumps(context.to_json())
        assert context.flags == flags.ordered(context.flags)
    rows = call(
        board_rows,
        appointments=appointments or members,
        included=index,
        patients={f"Patient/{p.get('id')}": p for p in patients},
        coverages=None if case["now"] == 2 else coverages_by_patient(coverages or members),
        open_ticket_patients=frozenset(filter(None, (patient_of(a) for a in appointments))),
        failed_reminder_appointments=frozenset(),
        now=now,
        viewer_tz=viewer,
    )
    call(sort_by_flags, rows)
    for row in rows:
        json.dumps(row.to_json())

    bundle = case["bundle"]
    call(search_entries, bundle)
    call(search_entries, bundle, expect="Appointment")
    texts = [json.dumps(bundle), "\n".join(json.dumps(m) for m in members)]
    for text, as_json in zip(texts, (False, True), strict=True):
        code, out = call(run_map, text, now=now, viewer_tz=viewer, as_json=as_json)
        assert code in (0, 2, 3), code
        out.encode("utf-8")  # printable: no lone surrogate reaches the terminal
    try:
        call(read_entries, texts[1])
        call(contexts_for_file, texts[0], now=now, viewer_tz=viewer)
    except NotFhirError:
        pass

    questionnaire = case.get("questionnaire")
    if questionnaire is not None:
        try:
            form = call(to_form, questionnaire, "es")
            call(parse_answers, form, {"csat": "5", "nps": "10", "comment": "\ud800"})
        except (AnswerError, QuestionnaireError):
            pass
    return calls
