"""Fuzz: generated malformed FHIR through every mapper entry point never raises (issue 12
§1). What a mapper cannot read becomes a warning.

`make test` runs a seeded sample of FUZZ_EXAMPLES = 600 cases, the same cases in any
process (same_sample): the whole file takes about 38 s of CPU under coverage on the 2-core
test machine and 320 MB (65 s and 1 GB while generated strings reached 120,000
characters). `CAREDESK_FUZZ_EXAMPLES=10000` runs the full count through this same test,
and `python -m bench.fuzz` counts all 10,000 for `make bench` without stopping at the
first failure.

Every failure found so far (each re-found by the fuzzer with its fix undone) was shrunk by
Hypothesis, then minimized (`bench.fuzz --find`), and is kept in fuzz_corpus/, named for
the bug, and replayed below on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fuzzing import cases, constants_of_the_mappers, drive, seeded
from hypothesis import given

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
FUZZ_EXAMPLES = int(os.environ.get("CAREDESK_FUZZ_EXAMPLES", "600"))


@pytest.fixture
def same_sample() -> Iterator[None]:
    """The sample's cases depend on nothing else the test process has imported."""
    with constants_of_the_mappers():
        yield


@seeded(FUZZ_EXAMPLES)
@given(cases())
def test_no_generated_case_makes_a_mapper_raise(same_sample: None, case: dict[str, Any]) -> None:
    assert drive(case) >= 20 * len(case["resources"])  # every entry point ran


def _fingerprint(count: int) -> str:
    """A digest of the first ``count`` cases the sample's settings generate."""
    digest = hashlib.sha256()

    @seeded(count)
    @given(cases())
    def sample(case: dict[str, Any]) -> None:
        digest.update(json.dumps(case, sort_keys=True, default=repr).encode("utf-8", "replace"))

    sample()
    return digest.hexdigest()


def test_the_sample_is_the_same_whatever_else_the_process_imported(
    same_sample: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hypothesis draws constants from the source of the local modules imported so far: a
    module full of them, imported between two samples, changes neither."""
    before = _fingerprint(40)
    module = tmp_path / "many_constants.py"
    # Hypothesis keeps integers outside -100..100 and strings of up to 20 characters, from
    # modules with at most 1,024 constants.
    numbers = ", ".join(str(n) for n in range(100, 10_001, 25))
    words = ", ".join(f"'w{n}'" for n in range(300))
    module.write_text(f"NUMBERS = ({numbers})\nWORDS = ({words})\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("many_constants")
    try:
        assert _fingerprint(40) == before
    finally:
        # Gone before the pool is unpinned: no later test draws from it.
        del sys.modules["many_constants"]


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
