"""``/healthz``: is the store reachable and migrated to this code's schema, is the queue
reachable, and which backends are they."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify

from helpdesk import migrate
from helpdesk.db import Store, get_store
from jobs.queue import get_queue_state

bp = Blueprint("health", __name__)
log = logging.getLogger("caredesk.health")


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    store = get_store()
    queue = get_queue_state()
    store_ok = _check(store.ping)
    queue_ok = _check(queue.ping)
    store_body: dict[str, Any] = {"backend": store.backend, "ok": store_ok}
    if store_ok:
        # A store that answers but has no CareDesk tables (or an older schema) fails every
        # request but this one: say so here, where a deploy and a load balancer look.
        schema = _schema(store)
        store_body["schema"] = schema
        store_ok = bool(schema["ok"])
        store_body["ok"] = store_ok
    body = {
        "status": "ok" if store_ok and queue_ok else "degraded",
        "store": store_body,
        "queue": {"backend": queue.backend, "ok": queue_ok, "queues": list(queue.queue_names)},
    }
    return jsonify(body), 200 if store_ok and queue_ok else 503


def _schema(store: Store) -> dict[str, Any]:
    """The store's schema against this code's migrations: ``ok`` when at this code's head,
    or newer (old processes of a rolling deploy, after the new code migrated); not when
    never migrated or behind."""
    head, known = migrate.known_revisions()
    try:
        revision = store.revision()
    except Exception:  # noqa: BLE001 - health reports failure instead of raising it
        log.warning("health probe failed: the store's schema revision")
        return {"ok": False, "revision": None, "head": head, "says": "unreadable"}
    if revision is None:
        says = "no CareDesk tables: run `caredesk db upgrade`"
    elif revision == head:
        says = "at head"
    elif revision in known:
        says = f"behind ({revision}, this code needs {head}): run `caredesk db upgrade`"
    else:
        says = f"newer than this code ({revision})"
    ok = revision == head or (revision is not None and revision not in known)
    return {"ok": ok, "revision": revision, "head": head, "says": says}


def _check(probe: object) -> bool:
    try:
        probe()  # type: ignore[operator]
    except Exception:  # noqa: BLE001 - health reports failure instead of raising it
        log.warning("health probe failed: %s", getattr(probe, "__qualname__", probe))
        return False
    return True
