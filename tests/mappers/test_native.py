"""The mypyc build of the mappers (scripts/build_native.py, issue 16 §2) is current, is
what a CareDesk process imports, and maps exactly as the Python does.

The rest of the suite runs the mappers as Python (tests/conftest.py sets
CAREDESK_NATIVE_MAPPERS=0: coverage and the call-count tests see Python calls only); these
tests start a process with the build, as `caredesk`, gunicorn and the workers run, and
compare what it maps with what this process maps, field for field (the records' repr),
over the fixture population at several clocks and zones, the fuzz corpus, and a seeded
sample of the fuzzer's generated cases. `make test` builds the native mappers first, so
a missing or stale build fails here; it is never skipped.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import fhir_mappers

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SAMPLE = 150


def _guarded(func: Any, *args: Any, **kwargs: Any) -> str:
    """The result's repr, and whether it survives pickling and deep copying (a class
    mypyc made native and frozen would not: the records must stay plain dataclasses)."""
    try:
        result = func(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the same failure, by type, is what counts
        return f"raised {type(exc).__name__}"
    try:
        kept = pickle.loads(pickle.dumps(result)) == result == copy.deepcopy(result)
    except Exception as exc:  # noqa: BLE001
        kept = f"copying raised {type(exc).__name__}"
    # A context's JSON (the API's answer) is built by compiled code too.
    shown = json.dumps(result.to_json(), sort_keys=True) if hasattr(result, "to_json") else ""
    return f"{result!r} copies: {kept} {shown}"


def sample_cases(sample: int = SAMPLE) -> list[dict[str, Any]]:
    """The fuzzer's first `sample` seeded cases, generated here (with the native build the
    mappers' modules have no source for Hypothesis to draw constants from)."""
    from fuzzing import cases, constants_of_the_mappers, seeded
    from hypothesis import given

    drawn: list[dict[str, Any]] = []

    @seeded(sample)
    @given(cases())
    def generated(case: dict[str, Any]) -> None:
        drawn.append(case)

    with constants_of_the_mappers():
        generated()
    return drawn


def outputs(generated: list[dict[str, Any]]) -> list[str]:
    """What the mappers make of the fixture population, the corpus and the generated cases,
    one string per result; in whichever build this process imported."""
    from fuzzing import NOWS

    from bench.mapping import _split, fixture_bundles
    from fhir_mappers.appointment import to_visit
    from fhir_mappers.contact import reachable
    from fhir_mappers.context import build_context
    from fhir_mappers.coverage import to_policy
    from fhir_mappers.fhirutil import index_resources
    from fhir_mappers.patient import to_contact

    found: list[str] = []
    for now in NOWS:
        for zone in ("America/Chicago", "Pacific/Kiritimati"):
            for _, blob in fixture_bundles(now):
                parts = _split(json.loads(blob))
                found.append(_guarded(build_context, **parts, now=now, viewer_tz=zone))

    def one(members: list[Any], now: dt.datetime, zone: str) -> None:
        index = index_resources(members)
        for res in members:
            found.append(_guarded(to_contact, res, now=now))
            found.append(_guarded(to_visit, res, now=now, viewer_tz=zone, included=index))
            found.append(_guarded(to_policy, res, today=now.date()))
            found.append(_guarded(reachable, res, now=now))
        typed = [r for r in members if isinstance(r, dict)]
        found.append(
            _guarded(
                build_context,
                patient=next((r for r in typed if r.get("resourceType") == "Patient"), None),
                appointments=[r for r in typed if r.get("resourceType") == "Appointment"],
                included=[r for r in typed if r.get("resourceType") != "Patient"],
                coverages=[r for r in typed if r.get("resourceType") == "Coverage"],
                now=now,
                viewer_tz=zone,
            )
        )

    for path in sorted((HERE / "fuzz_corpus").glob("*.json")):
        case = json.loads(path.read_text(encoding="utf-8"))
        members = case.get("resources") if isinstance(case, dict) else None
        one(list(members) if isinstance(members, list) else [case], NOWS[0], "America/Chicago")
    for case in generated:
        one(list(case["resources"]), NOWS[case["now"] % len(NOWS)], str(case["viewer_tz"]))
    return found


_CHILD = """
import json, pickle, sys
import fhir_mappers, fhir_mappers.context as context
from test_native import outputs
with open(sys.argv[1], "rb") as f:
    generated = pickle.load(f)
print(json.dumps({"native": fhir_mappers.NATIVE, "file": context.__file__,
                  "outputs": outputs(generated)}))
"""


def _native_run(generated: list[dict[str, Any]], tmp_path: Path) -> dict[str, Any]:
    cases_file = tmp_path / "cases.pickle"
    cases_file.write_bytes(pickle.dumps(generated))
    env = {**os.environ, "CAREDESK_NATIVE_MAPPERS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)])
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(cases_file)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def test_a_caredesk_process_runs_the_native_build_and_it_maps_as_the_python_does(
    tmp_path: Path,
) -> None:
    assert not fhir_mappers.NATIVE, "the suite itself runs the mappers as Python"
    generated = sample_cases()
    native = _native_run(generated, tmp_path)
    assert native["native"], (
        f"no current native build under {fhir_mappers.NATIVE_DIR}: "
        "`make test` builds it (scripts/build_native.py)"
    )
    assert native["file"].endswith(".so")
    python = outputs(generated)
    assert len(native["outputs"]) == len(python) > 1000
    differing = [(n, p) for n, p in zip(native["outputs"], python, strict=True) if n != p]
    assert not differing, differing[:3]


def _manifest(directory: Path, digests: dict[str, str]) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "manifest.json").write_text(json.dumps(digests))


def test_a_build_is_used_only_while_every_compiled_source_is_the_one_it_was_made_from(
    tmp_path: Path, monkeypatch: Any
) -> None:
    import hashlib

    digest = hashlib.sha256((ROOT / "fhir_mappers" / "context.py").read_bytes()).hexdigest()
    monkeypatch.setattr(fhir_mappers, "NATIVE_DIR", tmp_path / "native")
    monkeypatch.setenv("CAREDESK_NATIVE_MAPPERS", "1")
    assert fhir_mappers._native_build() is None  # no build at all
    _manifest(tmp_path / "native", {"context": digest})
    assert fhir_mappers._native_build() == tmp_path / "native"
    _manifest(tmp_path / "native", {"context": digest, "appointment": "0" * 64})
    assert fhir_mappers._native_build() is None  # appointment.py edited since the build
    _manifest(tmp_path / "native", {"context": digest})
    monkeypatch.setenv("CAREDESK_NATIVE_MAPPERS", "0")
    assert fhir_mappers._native_build() is None  # turned off
