"""Reading FHIR files (Bundles of any type, single resources, NDJSON) into per-patient
contexts: the pure core of `caredesk map FILE`."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fhir_mappers import issues
from fhir_mappers.context import build_context, patient_refs
from fhir_mappers.fhirutil import get_dict, get_list, get_str, zone

_MAX_NESTING = 4  # a batch-response Bundle holds searchset Bundles; deeper is not FHIR use


class NotFhirError(ValueError):
    """The input is not FHIR JSON; the message is one line, safe to print."""


_SEARCH_TYPE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/?(?:\?|$)")


@dataclass
class _Reading:
    entries: list[tuple[str | None, dict[str, Any]]] = field(default_factory=list)
    # Resource types a searchset in the input says it searched (from its `self` link), so
    # an empty result means "none on file" rather than "not asked".
    searched: set[str] = field(default_factory=set)


def search_entries(
    bundle: object, *, expect: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """A searchset page: (matches, included, whether a `next` link exists). Never raises.

    `entry`, `search`, `link` of the wrong shape are read as far as they go (an object
    where a list belongs counts as one item; anything else is skipped). An entry whose
    `search.mode` is `include` is included; `outcome` entries (OperationOutcome notes some
    servers add) are dropped. Some servers leave out `search.mode`: with `expect` (the
    type searched for), a resource of another type is taken as included, never as a
    match.
    """
    matches: list[dict[str, Any]] = []
    included: list[dict[str, Any]] = []
    for entry in get_list(bundle, "entry"):
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            continue
        mode = get_str(get_dict(entry, "search"), "mode")
        if mode == "outcome":
            continue
        rtype = get_str(resource, "resourceType")
        if mode == "include" or (expect is not None and rtype != expect):
            if rtype == "OperationOutcome" and mode != "include":
                continue
            included.append(resource)
        else:
            matches.append(resource)
    more = any(get_str(link, "relation") == "next" for link in get_list(bundle, "link"))
    return matches, included, more


def _searched_type(bundle: Mapping[str, Any]) -> str | None:
    if get_str(bundle, "type") != "searchset":
        return None
    for link in get_list(bundle, "link"):
        url = get_str(link, "url")
        if get_str(link, "relation") == "self" and url:
            match = _SEARCH_TYPE.search(url.split("#", 1)[0])
            if match:
                return match[1]
    return None


def _collect(data: Mapping[str, Any], where: str, reading: _Reading, depth: int = 0) -> None:
    rtype = data.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise NotFhirError(f"{where} is JSON but not a FHIR resource (no resourceType)")
    if rtype != "Bundle":
        reading.entries.append((None, dict(data)))
        return
    if depth >= _MAX_NESTING:
        raise NotFhirError(f"{where} nests Bundles too deeply")
    searched = _searched_type(data)
    if searched:
        reading.searched.add(searched)
    for entry in get_list(data, "entry"):
        resource = entry.get("resource")
        if not isinstance(resource, Mapping):
            continue  # e.g. a transaction-response entry with only `response`
        _collect(resource, where, reading, depth + 1)
        if resource.get("resourceType") != "Bundle":
            reading.entries[-1] = (get_str(entry, "fullUrl"), reading.entries[-1][1])


def _read(text: str) -> _Reading:
    stripped = text.lstrip("\ufeff").strip()
    if not stripped:
        raise NotFhirError("input is empty")
    reading = _Reading()
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError:
        data = None
        if "\n" not in stripped:
            raise NotFhirError("input is not JSON") from None
    except RecursionError:
        raise NotFhirError("input JSON is nested too deeply") from None
    if data is not None:
        if not isinstance(data, Mapping):
            raise NotFhirError("input is JSON but not a FHIR resource (not an object)")
        _collect(data, "input", reading)
        return reading
    for number, line in enumerate(stripped.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise NotFhirError(
                f"line {number} is not JSON (input is neither JSON nor NDJSON)"
            ) from None
        if not isinstance(item, Mapping):
            raise NotFhirError(f"line {number} is JSON but not a FHIR resource")
        _collect(item, f"line {number}", reading)
    return reading


def read_entries(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(fullUrl, resource) pairs from a Bundle, a single resource, or NDJSON."""
    return _read(text).entries


def read_resources(text: str) -> list[dict[str, Any]]:
    """Every resource in a Bundle (any type, nested Bundles flattened), a single resource
    or NDJSON. Raises NotFhirError for anything else."""
    return [resource for _, resource in read_entries(text)]


def contexts_for_file(text: str, *, now: dt.datetime, viewer_tz: str) -> list[dict[str, Any]]:
    """One context JSON per patient in the input, in order of first appearance.

    Appointments go to the patients among their participants, Coverages to their
    beneficiary; everything else is available as `_include`d targets. Coverage counts as
    "not available" unless the input holds a Coverage or a searchset whose `self` link
    searched Coverage (a batch-response of the context searches does). A patient that is
    referenced but whose Patient resource is absent still gets a context (without
    contact). Appointments and Coverages that name no patient are not shown.
    """
    return _contexts(_read(text), now=now, viewer_tz=viewer_tz)


def _contexts(reading: _Reading, *, now: dt.datetime, viewer_tz: str) -> list[dict[str, Any]]:
    # Transaction entries refer to each other by fullUrl (`urn:uuid:...`) and may have no
    # id yet. Do what the server would: give each an id and rewrite those references.
    alias: dict[str, str] = {}
    resources: list[dict[str, Any]] = []
    for index, (full_url, res) in enumerate(reading.entries):
        rtype, rid = get_str(res, "resourceType"), get_str(res, "id")
        if rid is None and full_url and full_url.startswith("urn:"):
            rid = full_url.rsplit(":", 1)[-1]
            res = {**res, "id": rid}
        if full_url and full_url.startswith("urn:"):
            alias[full_url] = f"{rtype}/{rid or '#' + str(index)}"
        resources.append(res)
    if alias:
        resources = [_rewrite_refs(res, alias) for res in resources]

    included: list[dict[str, Any]] = []
    order: list[str] = []
    patients: dict[str, dict[str, Any]] = {}
    for index, res in enumerate(resources):
        rtype, rid = get_str(res, "resourceType"), get_str(res, "id")
        key = f"{rtype}/{rid}" if rid else f"{rtype}/#{index}"
        if rtype == "Patient":
            if key not in patients:
                patients[key] = res
                order.append(key)
        elif rtype not in ("Appointment", "Coverage"):
            included.append(res)

    appts: dict[str, list[dict[str, Any]]] = {}
    covs: dict[str, list[dict[str, Any]]] = {}
    any_coverage = "Coverage" in reading.searched
    for res in resources:
        rtype = get_str(res, "resourceType")
        if rtype not in ("Appointment", "Coverage"):
            continue
        any_coverage = any_coverage or rtype == "Coverage"
        target = appts if rtype == "Appointment" else covs
        for key in patient_refs(res):
            if not key.startswith("Patient/"):
                continue
            target.setdefault(key, []).append(res)
            if key not in order:
                order.append(key)

    contexts: list[dict[str, Any]] = []
    for key in order:
        unavailable = {} if key in patients else {"patient": "not in the input"}
        coverages = covs.get(key, []) if any_coverage else None
        if coverages is None:
            unavailable["coverage"] = "no Coverage resources in the input"
        context = build_context(
            patient=patients.get(key),
            appointments=appts.get(key, []),
            included=included,
            coverages=coverages,
            now=now,
            viewer_tz=viewer_tz,
            unavailable=unavailable,
        )
        data = context.to_json()
        if data["patient_id"] is None and key.startswith("Patient/"):
            data["patient_id"] = key.removeprefix("Patient/")
        contexts.append(data)
    return contexts


def _rewrite_refs(node: Any, alias: Mapping[str, str]) -> Any:
    if isinstance(node, Mapping):
        out = {k: _rewrite_refs(v, alias) for k, v in node.items()}
        ref = node.get("reference")
        if isinstance(ref, str) and ref in alias:
            out["reference"] = alias[ref]
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, alias) for v in node]
    return node


# Exit codes of `caredesk map` (run_map): documented in its docstring and the CLI help.
EXIT_OK = 0
EXIT_NOT_FHIR = 2  # not JSON/NDJSON, not FHIR, or an unknown time zone
EXIT_NO_PATIENT = 3  # valid FHIR, but nothing in it concerns a patient

_TOP_WARNINGS = 3
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def run_map(
    text: str, *, now: dt.datetime, viewer_tz: str, as_json: bool = True
) -> tuple[int, str]:
    """What `caredesk map` does: (exit code, output). Never raises.

    With `as_json=False`, a short block per patient (name, flags in words, visits,
    coverage, warning count and the top 3 warnings in plain words); with `as_json=True`,
    the full contexts as a JSON array. Exit codes, output on stdout only for 0:

    - 0 (EXIT_OK): at least one patient's context;
    - 2 (EXIT_NOT_FHIR): a one-line error: the input is not FHIR JSON or NDJSON, or the
      time zone is unknown;
    - 3 (EXIT_NO_PATIENT): the input is valid FHIR but concerns no patient (a lone
      Practitioner, an empty searchset): a one-line message saying what it held.
    """
    if zone(viewer_tz) is None:
        return EXIT_NOT_FHIR, f"caredesk map: unknown time zone {viewer_tz!r}"
    try:
        reading = _read(text)
        contexts = _contexts(reading, now=now, viewer_tz=viewer_tz)
    except NotFhirError as exc:
        return EXIT_NOT_FHIR, _printable(f"caredesk map: not FHIR: {exc}")
    if not contexts:
        return EXIT_NO_PATIENT, _printable(_no_patient_message(reading))
    if as_json:
        return EXIT_OK, _printable(json.dumps(contexts, indent=2, ensure_ascii=False) + "\n")
    return EXIT_OK, _printable(summarize(contexts, now=now, viewer_tz=viewer_tz))


def _printable(text: str) -> str:
    """Text a UTF-8 terminal can take: a lone surrogate from the input (valid in JSON
    escapes, invalid in UTF-8) is written as its `\\udxxx` escape, which JSON reads back."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _no_patient_message(reading: _Reading) -> str:
    counts: dict[str, int] = {}
    for _, res in reading.entries:
        rtype = get_str(res, "resourceType") or "?"
        counts[rtype] = counts.get(rtype, 0) + 1
    held = ", ".join(f"{n} {t}" for t, n in sorted(counts.items())[:6]) or "no resources"
    return (
        f"caredesk map: the input is FHIR ({_clean(held, 120)}) but concerns no patient: give a "
        "Patient, or Appointments or Coverages that name one."
    )


def _clean(value: object, limit: int = 80) -> str:
    """EHR text for a terminal: control and direction-override characters replaced (no
    escape sequences reach the screen), long values cut."""
    text = _CONTROL.sub("?", str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(value: object) -> str:
    if not isinstance(value, str):
        return "time unknown"
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return _clean(value, 30)
    return moment.strftime("%Y-%m-%d %H:%M")


def summarize(contexts: list[dict[str, Any]], *, now: dt.datetime, viewer_tz: str) -> str:
    """The short form of `caredesk map`: one block per patient, warnings in plain words.

    Works on the JSON contexts (`contexts_for_file`'s output).
    """
    visits = sum(len(c.get("visits") or []) for c in contexts)
    warnings = sum(len(c.get("warnings") or []) for c in contexts)
    lines = [
        f"{len(contexts)} patient{'s' if len(contexts) != 1 else ''} · {visits} visits · "
        f"{warnings} data warning{'s' if warnings != 1 else ''} · as of "
        f"{now.isoformat(timespec='minutes')}, times in {viewer_tz}",
    ]
    for context in contexts:
        lines.append("")
        lines.extend(_patient_block(context))
    lines.append("")
    lines.append("The full context of each patient: caredesk map --json FILE")
    return "\n".join(lines) + "\n"


def _patient_block(context: dict[str, Any]) -> list[str]:
    contact = context.get("contact") or {}
    name = contact.get("display_name") or "(no name on file)"
    head = _clean(name)
    if contact.get("preferred_name"):
        head += f" (goes by {_clean(contact['preferred_name'], 40)})"
    head += f" · Patient/{_clean(context.get('patient_id') or '?', 70)}"
    if contact.get("mrn"):
        head += f" · MRN {_clean(contact['mrn'], 40)}"
    unavailable = context.get("unavailable") or {}
    if "patient" in unavailable:
        head += f" (Patient: {_clean(unavailable['patient'])})"
    alerts = context.get("alerts") or []
    words = "; ".join(_clean(a.get("text"), 40) for a in alerts) or "none"
    if context.get("needs_call"):
        words += "  [needs a call]"
    upcoming, recent = context.get("upcoming") or [], context.get("recent") or []
    visit_line = f"{len(upcoming)} upcoming, {len(recent)} recent"
    if upcoming:
        live = [v for v in upcoming if v.get("status") not in ("cancelled", "entered-in-error")]
        nxt = (live or upcoming)[0]
        visit_line += f" (next {_when(nxt.get('start'))}"
        if nxt.get("tz_abbr"):
            visit_line += f" {nxt['tz_abbr']}"
        visit_line += f", {_clean(nxt.get('status_text') or '?', 30)})"
    insurance = context.get("insurance") or {}
    coverage = str(insurance.get("state") or "unknown")
    primary = insurance.get("primary") or {}
    if primary.get("payor"):
        coverage += f" ({_clean(primary['payor'], 40)}"
        if primary.get("period_end"):
            coverage += f", ends {primary['period_end']}"
        coverage += ")"
    if "coverage" in unavailable:
        coverage += f" ({_clean(unavailable['coverage'])})"
    warnings = [w for w in context.get("warnings") or [] if isinstance(w, dict)]
    rank = {code: i for i, code in enumerate(issues.SEVERITY)}
    top = sorted(
        enumerate(warnings),
        key=lambda item: (rank.get(str(item[1].get("code")), len(rank)), item[0]),
    )[:_TOP_WARNINGS]
    block = [
        head,
        f"  flags:    {words}",
        f"  visits:   {visit_line}",
        f"  coverage: {coverage}",
        f"  warnings: {len(warnings)}",
    ]
    for _, warning in top:
        where = f"{warning.get('resource_type')}/{warning.get('resource_id') or '?'}"
        block.append(f"    - {_clean(where, 60)}: {_clean(warning.get('plain'), 160)}")
    if len(warnings) > _TOP_WARNINGS:
        block.append(f"    … and {len(warnings) - _TOP_WARNINGS} more (--json shows all)")
    return block
