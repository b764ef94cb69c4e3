"""A sample of `make bench`'s fault soak: mixed jobs under worker SIGKILLs, Redis restarts
and EHR 503/429/latency lose nothing and do nothing twice (bench/fault_soak.py).

The soak runs its own throwaway redis-server (it is killed and restarted), real worker
processes, PostgreSQL and the sandbox EHR over HTTP."""

from __future__ import annotations

from bench.fault_soak import run_soak


def test_worker_kills_and_redis_restarts_lose_and_duplicate_nothing(tmp_path) -> None:
    # Every round has a fault: with this seed, SIGKILLs of a worker and a Redis restart.
    result = run_soak(3, seed=1, kill_rate=0.5, redis_restart_rate=0.5, log_dir=tmp_path)
    assert result.worker_kills >= 1 and result.redis_restarts >= 1, result.to_json()
    assert result.tasks == 12
    assert result.lost == [] and result.duplicated == [] and result.gave_up == [], (
        result.to_json(),
        sorted(p.name for p in tmp_path.iterdir()),
    )
