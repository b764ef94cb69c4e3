"""The app benchmark 5 serves under gunicorn: CareDesk as ``wsgi.py`` builds it, plus one
route that does nothing (``/bench/noop``), the floor of the load figures.

The no-op route is registered on the same app, so it passes the same WSGI stack, the
same before/after-request hooks (request id, transport check, security headers, no-store)
and the same gunicorn settings and access log as the routes measured beside it; what it
lacks is exactly the work of a CareDesk view. It exists only here, never in the product.
"""

from __future__ import annotations

from plugin import create_app

app = create_app()


@app.get("/bench/noop")
def noop() -> str:
    return "ok"
