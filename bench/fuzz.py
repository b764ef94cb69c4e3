"""9. Fuzz: generated malformed FHIR through every mapper entry point and through the
readers outside fhir_mappers (issue 12 §1), counted.

Two suites, 10,000 seeded Hypothesis cases each in `make bench` (`--quick`: a sample):

- the mappers: `run_fuzz(n)` drives n cases (tests/mappers/fuzzing.py) through `drive`,
  every public mapper entry point;
- the readers: `run_readers(n)` drives n cases in all, spread evenly over the targets of
  tests/plugin/reader_fuzzing.py (the sidebar context and the board through the real FHIR
  client over a fake transport, the job readers, the encounter look-up).

Both count instead of stopping at the first failure: cases, seconds, exceptions by type.
`make test` runs a sample of the same generators (tests/mappers/test_mappers_fuzz.py,
tests/plugin/test_fuzz_readers.py); this is the full count for `make bench`.

    .venv/bin/python -m bench.fuzz [--examples N]        # count the mapper suite
    .venv/bin/python -m bench.fuzz --readers [--examples N] # count the reader suite
    .venv/bin/python -m bench.fuzz --find [--examples N] # shrink the first mapper failure
                                                          # and add it to the corpus
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flask import Flask
from hypothesis import HealthCheck, Phase, find, given, settings

from bench.common import Outcome, Row

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "mappers" / "fuzz_corpus"
FULL_EXAMPLES = 10_000
# A sample for `make bench-quick`, which has two minutes for every section.
QUICK_EXAMPLES = 60
SECTION = "9 fuzz"


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


class _Count:
    """Cases run, calls made and exceptions by type, over one or more targets."""

    def __init__(self) -> None:
        self.cases = 0
        self.calls = 0
        self.by_type: Counter[str] = Counter()
        self.first: dict[str, str] = {}
        self.started = time.perf_counter()

    def run(self, strategy: Any, drive: Callable[[Any], int | None], examples: int) -> None:
        @_settings(examples)
        @given(strategy)
        def one(case: Any) -> None:
            self.cases += 1
            try:
                self.calls += drive(case) or 1
            except Exception as exc:  # noqa: BLE001 - counting every failure is the point
                name = type(exc).__name__
                self.by_type[name] += 1
                text = "".join(traceback.format_exception_only(exc)).strip()[:300]
                self.first.setdefault(name, text)

        one()

    def result(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "seconds": time.perf_counter() - self.started,
            "calls": self.calls,
            "exceptions": sum(self.by_type.values()),
            "by_type": dict(self.by_type),
            "first_of_each": self.first,
        }


def run_fuzz(examples: int = FULL_EXAMPLES) -> dict[str, Any]:
    """Drive `examples` generated cases through every mapper entry point; never raises.
    Returns the counts."""
    fuzzing = _fuzzing()
    count = _Count()
    count.run(fuzzing.cases(), fuzzing.drive, examples)
    return count.result()


def run_readers(examples: int = FULL_EXAMPLES, *, app: Flask | None = None) -> dict[str, Any]:
    """Drive `examples` generated cases in all, an equal share per reader target, through
    the readers outside fhir_mappers; never raises. Returns the counts, per target too.
    Without `app`, a CareDesk app on a throwaway SQLite store and the bench's Redis."""
    from bench.common import close_app, new_app, sqlite_store
    from helpdesk import migrate
    from tests.plugin import reader_fuzzing as rf

    if app is None:
        with sqlite_store() as db_url:
            migrate.upgrade(db_url)
            own = new_app(db_url)
            try:
                return run_readers(examples, app=own)
            finally:
                close_app(own)
    count = _Count()
    per_target: dict[str, int] = {}
    share, extra = divmod(examples, len(rf.TARGETS))
    with rf.fake_ehr(app) as ehr:
        for index, target in enumerate(rf.TARGETS):
            before = count.cases

            def drive(case: Any, target: Any = target) -> None:
                target.drive(ehr, case)

            count.run(target.cases, drive, share + (1 if index < extra else 0))
            per_target[target.name] = count.cases - before
    return {**count.result(), "per_target": per_target}


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


def _row(figure: str, found: dict[str, Any], detail: str) -> Row:
    note = f"{found['cases']:,} cases run in {found['seconds']:.0f} s; {detail}"
    if found["by_type"]:
        note += "; " + ", ".join(f"{k} {v}" for k, v in sorted(found["by_type"].items()))
        note += " (first: " + "; ".join(found["first_of_each"].values())[:300] + ")"
    return Row(SECTION, figure, found["exceptions"], "exceptions", note=note)


def run(*, quick: bool) -> Outcome:
    """For the bench table: 10,000 cases per suite (a sample of QUICK_EXAMPLES with
    --quick), one row each: exceptions (the target is 0), cases run and time."""
    examples = QUICK_EXAMPLES if quick else FULL_EXAMPLES
    mappers = run_fuzz(examples)
    readers = run_readers(examples)
    out = Outcome(data={"mappers": mappers, "readers": readers})
    out.rows.append(
        _row(
            f"mapper fuzz: exceptions in {examples:,} generated cases (target 0)",
            mappers,
            f"{mappers['calls']:,} mapper entry-point calls",
        )
    )
    shares = ", ".join(f"{k} {v:,}" for k, v in readers["per_target"].items())
    out.rows.append(
        _row(
            f"reader fuzz: exceptions in {examples:,} generated cases (target 0)",
            readers,
            f"context/board assembly and job readers ({shares})",
        )
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__)
    parser.add_argument("--examples", type=int, default=FULL_EXAMPLES)
    parser.add_argument("--find", action="store_true", help="shrink a failure into the corpus")
    parser.add_argument(
        "--readers", action="store_true", help="count the reader suite, not the mappers'"
    )
    args = parser.parse_args(argv)
    if args.find:
        path = find_failure(args.examples)
        sys.stdout.write(f"{path or 'no failing case found'}\n")
        return 1 if path else 0
    found = run_readers(args.examples) if args.readers else run_fuzz(args.examples)
    sys.stdout.write(json.dumps(found, indent=2) + "\n")
    return 1 if found["exceptions"] else 0


if __name__ == "__main__":
    sys.exit(main())
