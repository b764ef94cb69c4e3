"""4. Reminder sweep scale: a sandbox day of 1,000, 10,000 and 50,000 appointments.

Each size is swept by a fresh child process (``python -m bench.sweep --child ...``) so its
peak RSS is that sweep's own, not the largest so far; the child reports the wall time of
``jobs.reminders.sweep_registration`` (paged searches, one outbox row and one RQ job per
reminder), its RSS before the sweep and its peak (VmHWM). Growth should be linear in time (flat
time per appointment) and flat in memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.common import ROOT, Outcome, Row, close_app, flush_bench_redis, new_app, postgres_store

TZ = ZoneInfo("America/Chicago")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(db_url: str, reg_id: int, day: dt.date) -> dict[str, float | int]:
    from jobs.reminders import sweep_registration

    app = new_app(db_url)
    try:
        with app.app_context():
            before = _status_mb("VmRSS")
            at = dt.datetime.combine(day, dt.time(6, 0), tzinfo=TZ)
            started = time.perf_counter()
            result = sweep_registration(app, reg_id, now=at)
            seconds = time.perf_counter() - started
    finally:
        close_app(app)
    return {
        "seconds": seconds,
        "seen": result.seen,
        "created": result.queued,
        "pages": result.pages,
        "rss_before_mb": before,
        # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec from the
        # parent, so it would report the bench process's own size, not this sweep's.
        "peak_rss_mb": _status_mb("VmHWM"),
    }


def run(*, quick: bool) -> Outcome:
    from bench.job_throughput import _register_backend
    from helpdesk import migrate
    from sandbox.testing import running_sandbox

    # Quick: two sizes four times apart still show the growth per appointment and in memory,
    # in a quarter of the sweeping time of 1,000 and 5,000 (bench-quick has two minutes).
    sizes = (250, 1_000) if quick else (1_000, 10_000, 50_000)
    out = Outcome()
    results: dict[str, dict[str, float | int]] = {}
    out.data = {"sizes": list(sizes), "by_size": results}
    with postgres_store() as db_url, running_sandbox(in_process=False) as sb:
        migrate.upgrade(db_url)
        app = new_app(db_url)
        try:
            reg_id = _register_backend(app, sb)
        finally:
            close_app(app)
        # Far enough ahead that no fixture appointment shares the day.
        first_day = dt.datetime.now(TZ).date() + dt.timedelta(days=400)
        for i, size in enumerate(sizes):
            flush_bench_redis()
            day = first_day + dt.timedelta(days=7 * i)
            sb.generate_appointments(day.isoformat(), size)
            proc = subprocess.run(  # noqa: S603 - our own module, fixed arguments
                [sys.executable, "-m", "bench.sweep", "--child", db_url, str(reg_id), str(day)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"sweep of {size} failed: {proc.stderr[-1500:]}")
            results[str(size)] = json.loads(proc.stdout.strip().splitlines()[-1])
    flush_bench_redis()
    base = results[str(sizes[0])]
    base_per = float(base["seconds"]) / sizes[0]
    for size in sizes:
        r = results[str(size)]
        per_ms = float(r["seconds"]) / size * 1000
        r["ms_per_appointment"] = per_ms
        growth = float(r["peak_rss_mb"]) - float(r["rss_before_mb"])
        r["rss_growth_mb"] = growth
        out.rows.append(
            Row(
                "4 sweep",
                f"reminder sweep, {size:,} appointments",
                float(r["seconds"]),
                "s",
                note=(
                    f"{per_ms:.2f} ms/appointment ({per_ms / (base_per * 1000):.2f}x the "
                    f"{sizes[0]:,} run); peak RSS {float(r['peak_rss_mb']):.0f} MB "
                    f"(+{growth:.0f} MB over {float(r['rss_before_mb']):.0f} MB before); "
                    f"{r['created']:,} reminders queued"
                ),
            )
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="one reminder sweep (bench child process)")
    parser.add_argument("--child", nargs=3, metavar=("DB_URL", "REG_ID", "DAY"), required=True)
    args = parser.parse_args()
    db_url, reg_id, day = args.child
    result = child(db_url, int(reg_id), dt.date.fromisoformat(day))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
