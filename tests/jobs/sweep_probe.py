"""Run one reminder sweep in a fresh process and print its peak RSS (VmHWM).

Used by test_sweep_scale: peak memory must be measured per sweep, in a process that did
nothing else first (a test process's high-water mark hides any growth).
Configuration comes from CAREDESK_* variables, as for `caredesk worker`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json


def _vm_hwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--registration", type=int, required=True)
    parser.add_argument("--at", required=True, help="ISO datetime with offset")
    args = parser.parse_args()

    from jobs.reminders import sweep_registration
    from plugin import create_app

    app = create_app()
    before = _vm_hwm_mb()
    with app.app_context():
        result = sweep_registration(app, args.registration, now=dt.datetime.fromisoformat(args.at))
    print(
        json.dumps(
            {
                "seen": result.seen,
                "created": result.queued,
                "before_mb": before,
                "peak_mb": _vm_hwm_mb(),
            }
        )
    )  # noqa: T201 - the test reads this line


if __name__ == "__main__":
    main()
