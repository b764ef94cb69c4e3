"""``python -m bench [--quick] [--only N ...]``: run the benchmarks, print the table of
every figure and then issue 16's table of targets (each figure beside its floor, the
ratio, the bound, met or not), write bench/results.json (every figure, the floors, the
ratios, core count, load average and git revision).

A benchmark that cannot run is shown as "not measured: <why>" in both tables; nothing is
ever filled in for it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    Figure,
    Outcome,
    Row,
    git_revision,
    not_measured,
    table,
    targets_table,
    utc_now_iso,
)

RESULTS = Path(__file__).resolve().parent / "results.json"


def _suites() -> list[tuple[str, str, Callable[..., Outcome]]]:
    from bench import (
        board,
        fault_soak,
        fuzz,
        job_throughput,
        launch,
        load,
        mapping,
        survey_burst,
        sweep,
    )

    return [
        ("1", "1 launch", launch.run),
        ("2", "2 mapping", mapping.run),
        ("3", "3 jobs", job_throughput.run),
        ("4", "4 sweep", sweep.run),
        ("5", "5 load", load.run),
        ("6", "6 soak", fault_soak.run),
        ("7", "7 survey burst", survey_burst.run),
        ("8", "8 board", board.run),
        ("9", fuzz.SECTION, fuzz.run),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a reduced run (< 2 minutes)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["1", "2", "3", "4", "5", "6", "7", "8", "9"],
        help="run only these benchmarks (by number)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    started = time.perf_counter()
    rows: list[Row] = []
    figures: list[Figure] = []
    why_missing: dict[str, str] = {}
    sections: dict[str, Any] = {}
    load_before = os.getloadavg()
    for number, section, run in _suites():
        if args.only and number not in args.only:
            why_missing[number] = f"not measured: section {number} not run (--only)"
            continue
        t0 = time.perf_counter()
        sys.stderr.write(f"[bench] {section} ...\n")
        try:
            outcome = run(quick=args.quick)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the rest
            why = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            traceback.print_exc(file=sys.stderr)
            outcome = Outcome(rows=[not_measured(section, why)], data={"error": why})
            why_missing[number] = f"not measured: {why}"
        elapsed = time.perf_counter() - t0
        sys.stderr.write(f"[bench] {section} took {elapsed:.0f} s\n")
        rows.extend(outcome.rows)
        figures.extend(outcome.figures)
        sections[section] = {
            "seconds": elapsed,
            "rows": [r.to_json() for r in outcome.rows],
            "figures": [f.to_json() for f in outcome.figures],
            "data": outcome.data,
        }
    meta: dict[str, Any] = {
        "mode": mode,
        "generated_at": utc_now_iso(),
        "git": git_revision(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "duration_s": time.perf_counter() - started,
        # The machine is shared: the 1/5/15-minute load averages before and after the run.
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "ratio_means": "measured / floor (latency: >= 1 is slower; rates: <= 1 is slower)",
    }
    text = table(rows, meta)
    goals = targets_table(figures, why_missing)
    sys.stdout.write(text + "\n\n" + goals + "\n")
    args.out.write_text(
        json.dumps(
            {
                **meta,
                "table": text,
                "targets_table": goals,
                "targets": [f.to_json() for f in figures],
                "sections": sections,
            },
            indent=2,
            default=str,
        )
        + "\n",
        encoding="utf-8",
    )
    sys.stdout.write(f"\nwrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
