"""Property-based fuzzing of the readers outside fhir_mappers: the sidebar's context and
the board's assembly (plugin.context, through the real FHIR client over a fake transport)
and the job readers (jobs.survey; the senders use fhir_mappers.contact). Whatever JSON an EHR
sends, they never raise: what cannot be read is left out or marked unavailable.

The strategies and drivers are tests/plugin/reader_fuzzing.py, shared with `make bench`,
which counts 10,000 cases over these targets (`python -m bench.fuzz --readers`).
(The mappers themselves and `caredesk map` have their own suite in tests/mappers.)
Seeded (derandomized) and bounded: FUZZ_EXAMPLES examples per target in `make test`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.plugin import reader_fuzzing as rf

FUZZ_EXAMPLES = int(os.environ.get("CAREDESK_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def ehr(make_app: Any) -> Iterator[dict[str, Any]]:
    with rf.fake_ehr(make_app()) as answers:
        yield answers


@FUZZ
@given(case=rf.CONTEXT.cases)
def test_the_sidebar_context_never_raises_on_odd_fhir(ehr: Any, case: Any) -> None:
    rf.drive_context(ehr, case)


@FUZZ
@given(case=rf.BOARD.cases)
def test_the_board_never_raises_on_odd_fhir(ehr: Any, case: Any) -> None:
    rf.drive_board(ehr, case)


@FUZZ
@given(case=rf.JOB_READERS.cases)
def test_the_job_readers_never_raise_on_odd_fhir(case: Any) -> None:
    rf.drive_job_readers({}, case)


@FUZZ
@given(case=rf.ENCOUNTER_LOOKUP.cases)
def test_the_encounter_lookup_never_raises_on_odd_fhir(case: Any) -> None:
    rf.drive_encounter_lookup({}, case)


def test_the_bench_counts_every_reader_case_and_every_failure(make_app: Any) -> None:
    """`make bench` counts instead of stopping at the first failure: a failing case is
    counted by type and the run goes on; every target gets its share of the cases."""
    from bench.fuzz import _Count, run_readers

    seen: list[str] = []

    def drive(text: str) -> None:
        seen.append(text)
        if len(text) % 2 == 0:
            raise ValueError("even")

    count = _Count()
    count.run(st.text(), drive, 60)
    found = count.result()
    assert found["cases"] == len(seen) == 60
    assert found["exceptions"] == sum(1 for t in seen if len(t) % 2 == 0) > 0
    assert set(found["by_type"]) == {"ValueError"}

    readers = run_readers(9, app=make_app())
    assert readers["per_target"] == {
        "sidebar context": 3,
        "board": 2,
        "job readers": 2,
        "encounter lookup": 2,
    }
    assert (readers["cases"], readers["exceptions"]) == (9, 0), readers["first_of_each"]
