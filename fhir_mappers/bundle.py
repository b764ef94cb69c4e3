"""Reading FHIR files (Bundles of any type, single resources, NDJSON) into per-patient
contexts: the pure core of `caredesk map FILE`."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from fhir_mappers.context import build_context, patient_refs
from fhir_mappers.fhirutil import get_list, get_str, parse_reference, zone

_MAX_NESTING = 4  # a batch-response Bundle holds searchset Bundles; deeper is not FHIR use


class NotFhirError(ValueError):
    """The input is not FHIR JSON; the message is one line, safe to print."""


def _entries(
    data: Mapping[str, Any], where: str, depth: int = 0
) -> list[tuple[str | None, dict[str, Any]]]:
    rtype = data.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise NotFhirError(f"{where} is JSON but not a FHIR resource (no resourceType)")
    if rtype != "Bundle":
        return [(None, dict(data))]
    if depth >= _MAX_NESTING:
        raise NotFhirError(f"{where} nests Bundles too deeply")
    out: list[tuple[str | None, dict[str, Any]]] = []
    for entry in get_list(data, "entry"):
        resource = entry.get("resource")
        if not isinstance(resource, Mapping):
            continue  # e.g. a transaction-response entry with only `response`
        nested = _entries(resource, where, depth + 1)
        if len(nested) == 1 and nested[0][1].get("resourceType") != "Bundle":
            out.append((get_str(entry, "fullUrl"), nested[0][1]))
        else:
            out.extend(nested)
    return out


def read_entries(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(fullUrl, resource) pairs from a Bundle, a single resource, or NDJSON."""
    stripped = text.lstrip("\ufeff").strip()
    if not stripped:
        raise NotFhirError("input is empty")
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
        return _entries(data, "input")
    out: list[tuple[str | None, dict[str, Any]]] = []
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
        out.extend(_entries(item, f"line {number}"))
    return out


def read_resources(text: str) -> list[dict[str, Any]]:
    """Every resource in a Bundle (any type, nested Bundles flattened), a single resource
    or NDJSON. Raises NotFhirError for anything else."""
    return [resource for _, resource in read_entries(text)]


def contexts_for_file(text: str, *, now: dt.datetime, viewer_tz: str) -> list[dict[str, Any]]:
    """One context JSON per patient in the input, in order of first appearance.

    Appointments go to the patients among their participants, Coverages to their
    beneficiary; everything else is available as `_include`d targets. A patient that is
    referenced but whose Patient resource is absent still gets a context (without
    contact). Appointments and Coverages that name no patient are not shown.
    """
    entries = read_entries(text)
    # Transactions refer to each other by fullUrl (`urn:uuid:...`): map those to Type/id.
    alias: dict[str, str] = {}
    included: list[dict[str, Any]] = []
    order: list[str] = []
    patients: dict[str, dict[str, Any]] = {}
    for index, (full_url, res) in enumerate(entries):
        rtype, rid = get_str(res, "resourceType"), get_str(res, "id")
        key = f"{rtype}/{rid}" if rid else (full_url or f"{rtype}/#{index}")
        if full_url:
            alias[full_url] = key
            try:
                alias[parse_reference(full_url).key] = key
            except ValueError:
                pass
        if rtype == "Patient":
            if key not in patients:
                patients[key] = res
                order.append(key)
        elif rtype not in ("Appointment", "Coverage"):
            if not rid and full_url:
                # give unidentified resources their urn so references can still resolve
                res = {**res, "id": full_url.rsplit(":", 1)[-1]}
            included.append(res)

    appts: dict[str, list[dict[str, Any]]] = {}
    covs: dict[str, list[dict[str, Any]]] = {}
    any_coverage = False
    for _, res in entries:
        rtype = get_str(res, "resourceType")
        if rtype not in ("Appointment", "Coverage"):
            continue
        any_coverage = any_coverage or rtype == "Coverage"
        target = appts if rtype == "Appointment" else covs
        for ref in patient_refs(res):
            key = alias.get(ref, ref)
            if not key.startswith("Patient/") and key not in patients:
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
