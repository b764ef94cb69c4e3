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
  of it is used again, as a cache with perfect invalidation would allow.

Each removes something the product must keep (an audit row committed for every read of
patient data, limits on every route, a launch that can end at any moment), so these
figures bound what making a part cheaper could gain; they are no configuration.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from flask import Response, request

import plugin.api
import plugin.launch
import plugin.ratelimit
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


def _audit_unless_ablated(*args: Any, **kwargs: Any) -> None:
    if not _ablated("audit"):
        _audit(*args, **kwargs)


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
