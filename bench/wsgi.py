"""The WSGI app the load benchmark serves with gunicorn: ``wsgi:app`` plus the JSON API
blueprints while the factory does not register them yet (a no-op once it does)."""

from bench.common import ensure_api
from plugin import create_app

app = create_app()
ensure_api(app)
