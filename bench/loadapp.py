"""The app benchmark 5 serves under gunicorn: CareDesk as ``wsgi.py`` builds it, plus one
route that does nothing (``/bench/noop``), the floor of the load figures.

The no-op route is registered on the same app, so it passes the same WSGI stack, the
same before/after-request hooks (request id, transport check, security headers, no-store)
and the same gunicorn settings and access log as the routes measured beside it; what it
lacks is exactly the work of a CareDesk view. It exists only here, never in the product.
Every answer names the worker process that gave it (``X-Bench-Worker``), so section 5 can
spread its connections evenly over the workers.

Ablations (diagnostic, never a product setting): a request whose ``X-Bench-Ablate``
header names some of the parts below is served without them, so section 5 can show, in
the same run and the same rounds as the floor, what each per-request cost of the cached
context API is worth:

- ``audit``: the view's audit row (``context.read``) is not written;
- ``limits``: the rate limits are not counted (no Redis round trips for them);
- ``launch-read``: the launch row is not read from the store; this process's first copy
  of it is used again, as a cache with perfect invalidation would allow;
- ``lean-audit``: the audit row is still written and committed before the answer, but as
  the leanest write there is: one prepared INSERT on a psycopg connection of the thread's
  own in autocommit mode (one round trip, no ORM session, no BEGIN, no separate COMMIT),
  where the product's goes through the request's SQLAlchemy session;
- ``no-wal-wait``: with ``lean-audit``, that connection commits without waiting for
  PostgreSQL's WAL flush (``synchronous_commit = off``): a crash of PostgreSQL could then
  lose the last rows it acknowledged, which the product's audit must never do. It shows
  what the flush, the guarantee itself, costs.

Each removes something the product must keep (an audit row committed for every read of
patient data, limits on every route, a launch that can end at any moment), so these
figures bound what making a part cheaper could gain; they are no configuration.
"""

from __future__ import annotations

import os
import threading
from types import ModuleType
from typing import Any, Unpack

import psycopg
from flask import Response, request
from psycopg.types.json import Jsonb
from sqlalchemy.engine import make_url

import plugin.api
import plugin.launch
import plugin.ratelimit
from helpdesk.audit import Audited, columns
from helpdesk.timeutil import utcnow
from plugin import create_app

app = create_app()

HEADER = "X-Bench-Ablate"


@app.get("/bench/noop")
def noop() -> str:
    return "ok"


@app.after_request
def _worker(response: Response) -> Response:
    """Which gunicorn worker answered: section 5 spreads its keep-alive connections evenly
    over the workers with it (``bench.load._connect``)."""
    response.headers["X-Bench-Worker"] = str(os.getpid())
    return response


def _ablated(part: str) -> bool:
    return part in request.headers.get(HEADER, "").split(",")


def _replace(module: ModuleType, name: str, new: Any) -> Any:
    """Put ``new`` in place of ``module.name`` (looked up there at each call); the old."""
    old = getattr(module, name)
    setattr(module, name, new)
    return old


def _audit_unless_ablated(action: str, **row: Unpack[Audited]) -> None:
    if _ablated("audit"):
        return
    if _ablated("lean-audit"):
        _lean_audit(action, row)
        return
    _audit(action, **row)


_LEAN_INSERT = (
    "INSERT INTO audit_event (at, registration_id, actor, action, patient_ref, entity,"
    " outcome, request_id, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_lean = threading.local()


def _lean_connection(no_wal_wait: bool) -> psycopg.Connection[Any]:
    """This thread's own autocommit connection to the app's store (one per setting)."""
    name = "no_wal_wait" if no_wal_wait else "waits"
    conn: psycopg.Connection[Any] | None = getattr(_lean, name, None)
    if conn is None:
        url = make_url(app.config["DATABASE_URL"]).set(drivername="postgresql")
        conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
        if no_wal_wait:
            conn.execute("SET synchronous_commit = off")
        setattr(_lean, name, conn)
    return conn


def _lean_audit(action: str, row: Audited) -> None:
    c = columns(action, row)
    _lean_connection(_ablated("no-wal-wait")).execute(
        _LEAN_INSERT,
        (
            utcnow(),
            c["registration_id"],
            c["actor"],
            c["action"],
            c["patient_ref"],
            c["entity"],
            c["outcome"],
            c["request_id"],
            Jsonb(c["detail"]),
        ),
        prepare=True,
    )


_kept: dict[str, Any] = {}


def _launch_row_unless_ablated(launch_id: str) -> Any:
    if not _ablated("launch-read"):
        return _launch_row(launch_id)
    if launch_id not in _kept:
        _kept[launch_id] = _launch_row(launch_id)
    return _kept[launch_id]


_audit = _replace(plugin.api, "audit", _audit_unless_ablated)
_launch_row = _replace(plugin.launch, "launch_row", _launch_row_unless_ablated)
_replace(plugin.ratelimit, "launch_row", _launch_row_unless_ablated)
app.extensions["caredesk.limiter"].request_filter(lambda: _ablated("limits"))
