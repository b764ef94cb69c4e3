"""Fuzz: generated malformed FHIR through every mapper entry point never raises (issue 12
§1). What a mapper cannot read becomes a warning.

`make test` runs a seeded sample of FUZZ_EXAMPLES = 600 cases (23-33 s under coverage on
the 2-core test machine, 12-16 s without); `CAREDESK_FUZZ_EXAMPLES=10000` runs the full
count through this same test, and `python -m bench.fuzz` counts all 10,000 for `make
bench` without stopping at the first failure.

Every failure found so far (each re-found by the fuzzer with its fix undone) was shrunk by
Hypothesis, then minimized (`bench.fuzz --find`), and is kept in fuzz_corpus/, named for
the bug, and replayed below on every run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fuzzing import cases, drive
from hypothesis import HealthCheck, given, settings

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
FUZZ_EXAMPLES = int(os.environ.get("CAREDESK_FUZZ_EXAMPLES", "600"))


@settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,  # the same cases on every run: a red CI run is reproducible
    database=None,  # nothing written under the checkout
    deadline=None,  # a huge generated string takes long on a busy machine, which is fine
    suppress_health_check=list(HealthCheck),
)
@given(cases())
def test_no_generated_case_makes_a_mapper_raise(case: dict[str, Any]) -> None:
    assert drive(case) >= 20 * len(case["resources"])  # every entry point ran


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.json")), ids=lambda p: p.stem)
def test_corpus_case_replays_without_raising(path: Path) -> None:
    drive(json.loads(path.read_text(encoding="utf-8")))


def test_the_corpus_holds_the_failures_found_so_far() -> None:
    assert len(list(CORPUS.glob("*.json"))) >= 5


def test_a_resource_with_thousands_of_bad_entries_says_so_once() -> None:
    """Found by the fuzzer as a hang, not an exception: 3,000 bad telecoms made 3,000
    warnings, deduplicated by a list scan (4.5 million comparisons, seconds per resource)."""
    from fhir_mappers.validation import MAX_WARNINGS, validation_warnings

    patient = {
        "resourceType": "Patient",
        "id": "p",
        "telecom": [{"rank": f"r{i}"} for i in range(3000)],
    }
    warnings = validation_warnings(patient)
    assert len(warnings) == MAX_WARNINGS + 1
    assert warnings[-1].message == f"{3000 - MAX_WARNINGS} more problems not listed"
    assert warnings[-1].plain == (
        f"The patient record has {3000 - MAX_WARNINGS} more problems like these; "
        "they are not listed."
    )
