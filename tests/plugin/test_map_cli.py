"""`caredesk map`: what CareDesk makes of an EHR's data, without launching anything."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "mappers" / "golden"
NOW = "2026-11-27T09:30:00-06:00"


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    return subprocess.run(
        [sys.executable, "-m", "plugin.cli", "map", *args],
        input=stdin,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("case", ["patient-pat-001", "patient-pat-002", "patient-long-id"])
def test_map_prints_the_expected_context_for_a_fixture_bundle(case: str) -> None:
    result = _run(
        str(GOLDEN / f"{case}.input.json"), "--json", "--now", NOW, "--timezone", "America/Chicago"
    )
    assert result.returncode == 0, result.stderr
    expected = json.loads((GOLDEN / f"{case}.expected.json").read_text())
    assert json.loads(result.stdout) == expected


def test_map_reads_ndjson_from_stdin() -> None:
    text = (GOLDEN / "patient-pat-001.input.json").read_text()
    bundle = json.loads(text)
    ndjson = "\n".join(
        json.dumps(e["resource"])
        for e in bundle.get("entry", [])
        if "resource" in e and e["resource"].get("resourceType") in ("Patient", "Coverage")
    )
    result = _run("-", "--json", "--now", NOW, stdin=ndjson)
    assert result.returncode == 0, result.stderr
    [context] = json.loads(result.stdout)
    assert context["patient_id"] == "pat-001"


@pytest.mark.parametrize("content", ["this is not json at all", '{"hello": "world"}', ""])
def test_map_on_a_file_that_is_not_fhir_is_one_line_and_exit_2(tmp_path, content: str) -> None:
    path = tmp_path / "notes.txt"
    path.write_text(content)
    result = _run(str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "not FHIR" in result.stderr


def test_map_prints_a_summary_per_patient_by_default() -> None:
    from fixtures.population import build_population

    population = build_population(dt.date(2026, 11, 27))
    ndjson = "\n".join(json.dumps(r) for rs in population.values() for r in rs)
    result = _run("-", "--now", NOW, "--timezone", "America/Chicago", stdin=ndjson)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # The warnings are counted up front, not buried in a 4,500-line JSON array.
    assert lines[0].startswith("32 patients · 85 visits · 10 data warnings · as of ")
    assert len(lines) < 300
    assert "Margaret Ann Okonkwo (goes by Peggy) · Patient/pat-001 · MRN 00100237" in lines
    assert sum(line.startswith("  warnings: ") for line in lines) == 32
    assert lines[-1] == "The full context of each patient: caredesk map --json FILE"
    full = _run("-", "--json", "--now", NOW, "--timezone", "America/Chicago", stdin=ndjson)
    assert len(json.loads(full.stdout)) == 32


@pytest.mark.parametrize("flag", [(), ("--json",)], ids=["summary", "json"])
def test_map_on_valid_fhir_about_no_patient_says_so_and_exits_3(tmp_path, flag) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "practitioner.json"
    path.write_text(json.dumps({"resourceType": "Practitioner", "id": "prac-1"}))
    result = _run(str(path), *flag)
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "caredesk map: the input is FHIR (1 Practitioner) but concerns no patient: give a "
        "Patient, or Appointments or Coverages that name one."
    )


def test_map_on_a_missing_file_is_exit_2() -> None:
    result = _run("/nonexistent/file.json")
    assert result.returncode == 2
