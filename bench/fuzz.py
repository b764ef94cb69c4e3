"""6. Mapper fuzz: generated malformed FHIR through every mapper entry point (issue 12 §1).

`run_fuzz(10_000)` drives that many seeded Hypothesis cases (tests/mappers/fuzzing.py)
through `drive` and counts, instead of stopping at the first failure: cases, seconds,
entry-point calls, exceptions by type. `make test` runs a sample of the same generator
(tests/mappers/test_mappers_fuzz.py); this is the full count for `make bench`.

    .venv/bin/python -m bench.fuzz [--examples N]      # count
    .venv/bin/python -m bench.fuzz --find [--examples N] # shrink the first failure and
                                                          # add it to the regression corpus
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, find, given, settings

from bench.common import Outcome, Row

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "mappers" / "fuzz_corpus"
FULL_EXAMPLES = 10_000
QUICK_EXAMPLES = 500


def _fuzzing() -> Any:
    from tests.mappers import fuzzing

    return fuzzing


def _settings(examples: int, *, phases: tuple[Phase, ...] = (Phase.generate,)) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,  # the same cases on every run and machine
        database=None,
        deadline=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
    )


def run_fuzz(examples: int = FULL_EXAMPLES) -> dict[str, Any]:
    """Drive `examples` generated cases; never raises. Returns the counts."""
    fuzzing = _fuzzing()
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    state = {"cases": 0, "calls": 0}

    @_settings(examples)
    @given(fuzzing.cases())
    def one(case: dict[str, Any]) -> None:
        state["cases"] += 1
        try:
            state["calls"] += fuzzing.drive(case)
        except Exception as exc:  # noqa: BLE001 - counting every failure is the point
            name = type(exc).__name__
            counts[name] += 1
            first.setdefault(name, "".join(traceback.format_exception_only(exc)).strip()[:300])

    started = time.perf_counter()
    one()
    seconds = time.perf_counter() - started
    return {
        "cases": state["cases"],
        "seconds": seconds,
        "calls": state["calls"],
        "exceptions": sum(counts.values()),
        "by_type": dict(counts),
        "first_of_each": first,
    }


def _signature(case: Any) -> tuple[str, str, str] | None:
    """Where driving `case` fails: (exception type, file, function); None if it does not."""
    try:
        _fuzzing().drive(case)
    except Exception as exc:  # noqa: BLE001
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        return type(exc).__name__, Path(frame.filename).name, frame.name
    return None


def _smaller(node: Any) -> Iterator[Any]:
    """Candidates one step smaller than `node`: each key or item removed, each value
    replaced by one of its own smaller candidates."""
    if isinstance(node, dict):
        for key in list(node):
            yield {k: v for k, v in node.items() if k != key}
        for key, value in node.items():
            for smaller in _smaller(value):
                yield {**node, key: smaller}
    elif isinstance(node, list):
        for index in range(len(node)):
            yield node[:index] + node[index + 1 :]
        for index, value in enumerate(node):
            for smaller in _smaller(value):
                yield [*node[:index], smaller, *node[index + 1 :]]
    elif isinstance(node, str) and len(node) > 1:
        yield node[: len(node) // 2]


def minimize(case: dict[str, Any], budget: int = 20_000) -> dict[str, Any]:
    """Greedy delta debugging after Hypothesis's shrink: drop whatever is not needed for
    the same failure (same exception, same place), so a corpus file reads as the bug."""
    wanted = _signature(case)
    if wanted is None:
        return case
    tries = 0
    improved = True
    while improved and tries < budget:
        improved = False
        for candidate in _smaller(case):
            tries += 1
            if tries >= budget:
                break
            if (
                isinstance(candidate, dict)
                and _keeps_shape(candidate)
                and (_signature(candidate) == wanted)
            ):
                case, improved = candidate, True
                break
    return case


def _keeps_shape(case: dict[str, Any]) -> bool:
    """Only the FHIR in a case is minimized: the clock and the viewer's zone are CareDesk's
    configuration (an unknown zone is refused by contract)."""
    return all(key in case for key in ("resources", "bundle", "now", "viewer_tz")) and (
        isinstance(case["resources"], list)
        and isinstance(case["now"], int)
        and case["viewer_tz"] in _fuzzing().VIEWER_ZONES
    )


def find_failure(examples: int = FULL_EXAMPLES) -> Path | None:
    """Search for a failing case, shrink it (Hypothesis, then `minimize`), and write it
    into the corpus. None when nothing fails."""
    fuzzing = _fuzzing()

    def fails(case: dict[str, Any]) -> bool:
        return _signature(case) is not None

    try:
        case = find(
            fuzzing.cases(),
            fails,
            settings=_settings(examples, phases=(Phase.generate, Phase.shrink)),
        )
    except Exception as exc:  # hypothesis.errors.NoSuchExample: nothing fails
        if type(exc).__name__ == "NoSuchExample":
            return None
        raise
    case = minimize(case)
    text = json.dumps(case, indent=1, sort_keys=True) + "\n"
    CORPUS.mkdir(parents=True, exist_ok=True)
    path = (
        CORPUS
        / f"case-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}.json"
    )
    path.write_text(text, encoding="utf-8")
    return path


def run(*, quick: bool) -> Outcome:
    """For the bench table: all 10,000 cases (500 with --quick)."""
    examples = QUICK_EXAMPLES if quick else FULL_EXAMPLES
    found = run_fuzz(examples)
    out = Outcome(data=found)
    rate = found["cases"] / found["seconds"] if found["seconds"] else None
    note = (
        f"{found['cases']:,} cases, {found['calls']:,} entry-point calls in "
        f"{found['seconds']:.0f} s; {found['exceptions']} exceptions"
    )
    if found["by_type"]:
        note += " (" + ", ".join(f"{k} {v}" for k, v in sorted(found["by_type"].items())) + ")"
    out.rows.append(Row("6 fuzz", "mapper fuzz cases", rate, "cases/s", note=note))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__)
    parser.add_argument("--examples", type=int, default=FULL_EXAMPLES)
    parser.add_argument("--find", action="store_true", help="shrink a failure into the corpus")
    args = parser.parse_args(argv)
    if args.find:
        path = find_failure(args.examples)
        sys.stdout.write(f"{path or 'no failing case found'}\n")
        return 1 if path else 0
    found = run_fuzz(args.examples)
    sys.stdout.write(json.dumps(found, indent=2) + "\n")
    return 1 if found["exceptions"] else 0


if __name__ == "__main__":
    sys.exit(main())
