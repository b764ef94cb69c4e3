"""Golden cases for the mappers: FHIR input Bundles beside the context JSON they produce.

Inputs come from `build_population(GOLDEN_DAY)`: one case per fixture patient (a
batch-response Bundle as CareDesk's context fetch gets it: the Patient read, then an
Appointment and a Coverage searchset with their `_include`d practitioners, locations and
payors) and one per MESSY resource
(a collection Bundle: the odd resource with just what it refers to). Expected outputs
are what `contexts_for_file` returns with `now` frozen at GOLDEN_NOW (a non-UTC offset).

Regenerate after an intended change, then review the diff by eye (the goldens are the
spec):

    .venv/bin/python -m tests.mappers.regen
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fhir_mappers.bundle import contexts_for_file
from fhir_mappers.fhirutil import parse_reference
from fixtures.population import MESSY, build_population

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
GOLDEN_DAY = dt.date(2026, 11, 27)
VIEWER_TZ = "America/Chicago"
GOLDEN_NOW = dt.datetime(2026, 11, 27, 9, 30, tzinfo=ZoneInfo(VIEWER_TZ))
EHR_BASE = "https://ehr.example.org/fhir/r4"

Resource = dict[str, Any]


def _slug(rid: str) -> str:
    return rid if len(rid) <= 40 else "long-id"


def _refs(resource: Resource) -> list[str]:
    """Every `Type/id` a resource refers to (anywhere in it), for picking includes."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            raw = node.get("reference")
            if isinstance(raw, str):
                try:
                    ref = parse_reference(raw)
                except ValueError:
                    ref = None
                if ref is not None and ref.type is not None and ref.key not in found:
                    found.append(ref.key)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(resource)
    return found


def _index(pop: dict[str, list[Resource]]) -> dict[str, Resource]:
    return {f"{r['resourceType']}/{r['id']}": r for rs in pop.values() for r in rs}


def _includes(primary: list[Resource], index: dict[str, Resource]) -> list[Resource]:
    keys: list[str] = []
    for res in primary:
        for key in _refs(res):
            if key not in keys and not key.startswith(("Patient/", "Appointment/")):
                keys.append(key)
    # Organizations referenced by included Locations are not part of an EHR's _include.
    return [index[k] for k in keys if k in index]


def _searchset(self_url: str, matches: list[Resource], includes: list[Resource]) -> Resource:
    entries = [
        {
            "fullUrl": f"{EHR_BASE}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "search": {"mode": mode},
        }
        for mode, group in (("match", matches), ("include", includes))
        for r in group
    ]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(matches),
        "link": [{"relation": "self", "url": self_url}],
        "entry": entries,
    }


def _batch_response(
    patient: Resource, appts: list[Resource], covs: list[Resource], index: dict[str, Resource]
) -> Resource:
    """What CareDesk's one-batch context fetch gets back: a read and two searches."""
    pid = patient["id"]
    searches = [
        patient,
        _searchset(
            f"{EHR_BASE}/Appointment?patient={pid}&_include=Appointment:actor",
            appts,
            _includes(appts, index),
        ),
        _searchset(
            f"{EHR_BASE}/Coverage?beneficiary={pid}&_include=Coverage:payor",
            covs,
            _includes(covs, index),
        ),
    ]
    return {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [{"resource": r, "response": {"status": "200 OK"}} for r in searches],
    }


def _collection(resources: list[Resource]) -> Resource:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }


def _for_patient(resource: Resource, pid: str) -> bool:
    refs = [p.get("actor", {}).get("reference") for p in resource.get("participant", [])]
    refs.append(resource.get("beneficiary", {}).get("reference"))
    return f"Patient/{pid}" in refs


def build_cases() -> dict[str, Resource]:
    """case name -> input Bundle, in a stable order."""
    pop = build_population(GOLDEN_DAY)
    index = _index(pop)
    cases: dict[str, Resource] = {}
    for patient in pop["Patient"]:
        pid = patient["id"]
        appts = [a for a in pop["Appointment"] if _for_patient(a, pid)]
        covs = [c for c in pop["Coverage"] if _for_patient(c, pid)]
        cases[f"patient-{_slug(pid)}"] = _batch_response(patient, appts, covs, index)
    for rtype, rid, _why in MESSY:
        odd = index[f"{rtype}/{rid}"]
        if rtype == "Patient":
            resources = [odd]
        else:
            patient_key = next(k for k in _refs(odd) if k.startswith("Patient/"))
            resources = [index[patient_key], odd, *_includes([odd], index)]
        cases[f"messy-{rtype.lower()}-{_slug(rid)}"] = _collection(resources)
    return cases


def run_case(bundle: Resource) -> list[dict[str, Any]]:
    return contexts_for_file(json.dumps(bundle), now=GOLDEN_NOW, viewer_tz=VIEWER_TZ)


def dump(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_all(directory: Path = GOLDEN_DIR) -> list[Path]:
    """Rewrite every golden pair and delete stale ones; return the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    cases = build_cases()
    written: list[Path] = []
    for name, bundle in cases.items():
        for suffix, data in (("input", bundle), ("expected", run_case(bundle))):
            path = directory / f"{name}.{suffix}.json"
            path.write_text(dump(data), encoding="utf-8")
            written.append(path)
    for stale in directory.glob("*.json"):
        if stale not in written:
            stale.unlink()
    return written
