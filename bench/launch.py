"""1. Launch to sidebar against the sandbox with L ms added to every EHR request.

Measured: from the EHR's launch request to the complete sidebar (the page, and the parts
its script fetches when the page was sent before the EHR answered), by a client that
follows redirects and keeps cookies as a browser does (the sandbox approves EHR launches
at once). Floor: the round trips no SMART app can avoid, authorize + token + one wave of
FHIR reads = 3 L, plus discovery = 4 L when it is not cached yet ("cold": a brand-new
CareDesk app per sample; "warm": the same app, discovery cached).

The same is measured for a straightforward sequential client (``bench.seqclient``) for
comparison. The sandbox runs as a separate process so its sleeps do not share this
process's GIL.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench import seqclient
from bench.common import (
    Figure,
    Outcome,
    Row,
    SwappableApp,
    browser_launch,
    close_app,
    new_app,
    register_public_client,
    serve,
    sqlite_store,
)

PATIENT = "pat-001"


def _ehr_requests(sb: Any) -> list[str]:
    return [f"{r['method']} {r['path']}" for r in sb.requests()]


def _caredesk(sb: Any, latency_ms: float, samples: int) -> dict[str, Any]:
    from helpdesk import migrate

    with sqlite_store() as db_url:
        migrate.upgrade(db_url)
        app = new_app(db_url)
        wsgi = SwappableApp(app)
        with serve(wsgi) as base:
            register_public_client(app, sb, base)
            # Cold: every sample on a brand-new app (nothing discovered yet).
            cold: list[float] = []
            cold_requests: list[str] = []
            for i in range(samples):
                fresh = new_app(db_url)
                old, wsgi.app = wsgi.app, fresh
                close_app(old)
                sb.clear_requests()
                browser, _, elapsed = browser_launch(sb, PATIENT)
                browser.close()
                cold.append(elapsed)
                if i == 0:
                    cold_requests = _ehr_requests(sb)
            # Warm: the last app has discovery cached; one more launch first (not counted).
            browser, _, _ = browser_launch(sb, PATIENT)
            browser.close()
            warm: list[float] = []
            warm_requests: list[str] = []
            for i in range(samples):
                sb.clear_requests()
                browser, _, elapsed = browser_launch(sb, PATIENT)
                browser.close()
                warm.append(elapsed)
                if i == 0:
                    warm_requests = _ehr_requests(sb)
            close_app(wsgi.app)
    return {
        "cold_s": cold,
        "warm_s": warm,
        "cold_ehr_requests": cold_requests,
        "warm_ehr_requests": warm_requests,
        "redirect_uri": f"{base}/callback",
    }


def run(*, quick: bool) -> Outcome:
    from sandbox.testing import running_sandbox

    # The targets read L = 100; a quick run (two minutes for every section) measures only
    # that latency, a full run both.
    latencies = [100] if quick else [50, 100]
    samples = 3 if quick else 7
    out = Outcome()
    out.data = {"samples": samples, "by_latency_ms": {}}
    for latency in latencies:
        with running_sandbox(in_process=False, latency_ms=latency) as sb:
            ours = _caredesk(sb, latency, samples)
            seq = seqclient.measure(
                sb, patient=PATIENT, samples=samples, redirect_uri=ours["redirect_uri"]
            )
        floor_warm = 3 * latency / 1000
        floor_cold = 4 * latency / 1000
        figures = {
            "caredesk_warm": (statistics.median(ours["warm_s"]), floor_warm),
            "caredesk_cold": (statistics.median(ours["cold_s"]), floor_cold),
            "sequential_warm": (statistics.median(seq["warm_s"]), floor_warm),
            "sequential_cold": (statistics.median(seq["cold_s"]), floor_cold),
        }
        entry: dict[str, Any] = {"caredesk": ours, "sequential": seq, "figures": {}}
        for name, (measured, floor) in figures.items():
            who, mode = name.split("_")
            ratio = measured / floor
            entry["figures"][name] = {
                "median_s": measured,
                "floor_s": floor,
                "ratio": ratio,
            }
            requests_seen = (
                len(ours[f"{mode}_ehr_requests"])
                if who == "caredesk"
                else seq[f"{mode}_round_trips"]
            )
            note = f"median of {samples}; {requests_seen} EHR requests"
            if who == "caredesk" and latency == 100:
                out.figures.append(
                    Figure(
                        f"launch.{mode}",
                        measured * 1000,
                        "ms",
                        floor * 1000,
                        f"{3 if mode == 'warm' else 4} L",
                        note=f"median of {samples}",
                    )
                )
            label = "CareDesk" if who == "caredesk" else "sequential client"
            out.rows.append(
                Row(
                    "1 launch",
                    f"{label}, {mode}, L={latency} ms",
                    measured * 1000,
                    "ms",
                    floor=floor * 1000,
                    ratio=ratio,
                    note=note,
                )
            )
        out.data["by_latency_ms"][str(latency)] = entry
    return out
