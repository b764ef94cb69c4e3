"""Reading FHIR files (Bundles of any type, single resources, NDJSON) into per-patient
contexts: the pure core of `caredesk map FILE`."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
    reading = _read(text)
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


def run_map(text: str, *, now: dt.datetime, viewer_tz: str) -> tuple[int, str]:
    """What `caredesk map` does: (exit code, output).

    0 with a JSON array of contexts (print to stdout), or 2 with a one-line error
    (print to stderr) when the input is not FHIR or the time zone is unknown.
    """
    if zone(viewer_tz) is None:
        return 2, f"caredesk map: unknown time zone {viewer_tz!r}"
    try:
        contexts = contexts_for_file(text, now=now, viewer_tz=viewer_tz)
    except NotFhirError as exc:
        return 2, f"caredesk map: not FHIR: {exc}"
    return 0, json.dumps(contexts, indent=2, ensure_ascii=False) + "\n"
