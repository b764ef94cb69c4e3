"""CareDesk: a SMART on FHIR help desk that lives inside the EHR."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from flask import Flask
from jinja2.bccache import Bucket, BytecodeCache
from werkzeug.middleware.proxy_fix import ProxyFix

from plugin import config as _config

__version__ = "0.1.0"


class _SharedBytecode(BytecodeCache):
    """Compiled templates, shared by every app this process builds: a new app (a test,
    the benchmark's cold launch, a CLI command) loads them instead of compiling its
    templates again (about half of a first request's time). Jinja keys each entry by the
    template's name and checks it against the source's checksum, so an edited template
    is compiled anew."""

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def load_bytecode(self, bucket: Bucket) -> None:
        with self._lock:
            code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: Bucket) -> None:
        code = bucket.bytecode_to_string()
        with self._lock:
            self._code[bucket.key] = code


_TEMPLATES = _SharedBytecode()


def create_app(test_config: Mapping[str, Any] | None = None, *, command: bool = False) -> Flask:
    """Build the app: configuration, extensions, blueprints, error handlers.

    Configuration comes from ``CAREDESK_*`` environment variables over documented defaults
    (``plugin.config.SETTINGS``); ``test_config`` overrides both. The web app refuses to
    start without the services it needs; ``command=True`` builds the app for a one-shot
    CLI command, which connects to Redis only if it uses it.
    """
    # CAREDESK_INSTANCE moves the instance folder (SQLite file, demo keys) off the checkout.
    instance = os.environ.get("CAREDESK_INSTANCE")
    app = Flask(
        __name__,
        instance_relative_config=True,
        instance_path=os.path.abspath(instance) if instance else None,
    )
    app.config.update(_config.load(app.instance_path, test_config))
    app.jinja_env.bytecode_cache = _TEMPLATES
    register_extensions(app, command=command)
    register_blueprints(app)
    register_errorhandlers(app)
    register_limits(app)
    return app


def register_extensions(app: Flask, *, command: bool = False) -> None:
    from helpdesk import crypto, db, ehr, kv, stamps
    from plugin import logs, security

    logs.configure(app)
    db.init_app(app)
    crypto.init_app(app)
    kv.init_app(app, required=not command)
    stamps.init_app(app)
    security.init_app(app)
    ehr.init_app(app)
    if app.config.get("PROXY_FIX"):
        hops = int(app.config["PROXY_FIX"])
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops
        )


def register_blueprints(app: Flask) -> None:
    from plugin import (
        api,
        board,
        calls,
        health,
        home,
        jobs_admin,
        launch,
        messages,
        openapi,
        reports,
        sidebar,
        survey,
        ticket_pages,
    )
    from plugin.launched import RowId

    app.url_map.converters["rowid"] = RowId
    app.register_blueprint(health.bp)
    app.register_blueprint(home.bp)
    app.register_blueprint(launch.bp)
    app.register_blueprint(sidebar.bp)
    app.register_blueprint(board.bp)  # /l/<launch_id>/board
    app.register_blueprint(calls.bp)  # /l/<launch_id>/calls: My calls and their outcomes
    openapi.init_app(app, api.bp)  # /api/... (flask-smorest), /api/openapi.json
    app.register_blueprint(ticket_pages.bp)  # /l/<launch_id>/tickets...
    app.register_blueprint(survey.bp)  # /s/<token>; importing it registers the survey jobs
    app.register_blueprint(reports.bp)  # /reports/csat
    app.register_blueprint(jobs_admin.bp)  # /l/<launch_id>/tasks/<id>/retry, /jobs, /worklist
    app.register_blueprint(messages.inbound_bp)  # /inbound/sms/<slug> (public, signed)
    app.register_blueprint(messages.bp)  # unmatched queue, replies, automation rules


def register_limits(app: Flask) -> None:
    from plugin import ratelimit

    ratelimit.init_app(app)


def register_errorhandlers(app: Flask) -> None:
    from plugin import errors

    errors.register(app)
