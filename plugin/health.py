"""``/healthz``: is the store reachable, is the queue reachable, and which backends are they."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from helpdesk.db import get_store
from jobs.queue import get_queue_state

bp = Blueprint("health", __name__)
log = logging.getLogger("caredesk.health")


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    store = get_store()
    queue = get_queue_state()
    store_ok = _check(store.ping)
    queue_ok = _check(queue.ping)
    body = {
        "status": "ok" if store_ok and queue_ok else "degraded",
        "store": {"backend": store.backend, "ok": store_ok},
        "queue": {"backend": queue.backend, "ok": queue_ok, "queues": list(queue.queue_names)},
    }
    return jsonify(body), 200 if store_ok and queue_ok else 503


def _check(probe: object) -> bool:
    try:
        probe()  # type: ignore[operator]
    except Exception:  # noqa: BLE001 - health reports failure instead of raising it
        log.warning("health probe failed: %s", getattr(probe, "__qualname__", probe))
        return False
    return True
