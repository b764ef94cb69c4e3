"""``caredesk demo``: CareDesk and the sandbox EHR, two origins on loopback, as in real life."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import click
import requests
from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

from helpdesk import migrate, registry
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from jobs.queue import start_embedded_worker, stop_embedded_worker
from plugin import create_app

DEMO_CLIENT_ID = "caredesk-demo"


def run_demo(*, host: str, port: int, with_sandbox: bool, profile: str) -> None:
    app_origin = f"http://{host}:{port}"
    # Survey links in the demo point at this server.
    overrides: dict[str, object] = {"PUBLIC_URL": os.environ.get("CAREDESK_PUBLIC_URL", app_origin)}
    # A demo should show a survey link within a minute, day or night; deployments keep
    # the real delay (2 h) and quiet hours.
    if "CAREDESK_SURVEY_DELAY_MINUTES" not in os.environ:
        overrides["SURVEY_DELAY_MINUTES"] = 0
    if "CAREDESK_SURVEY_QUIET_HOURS" not in os.environ:
        overrides["SURVEY_QUIET_HOURS"] = ""
    # The console shows the URLs to open, then warnings only: job summaries at INFO and
    # access logs at DEBUG would scroll the URLs away. CAREDESK_LOG_LEVEL=INFO shows the
    # jobs' lines, DEBUG every request of CareDesk and of the sandbox too.
    if "CAREDESK_LOG_LEVEL" not in os.environ:
        overrides["LOG_LEVEL"] = "WARNING"
    app = create_app(overrides)
    migrate.upgrade(app.config["DATABASE_URL"])
    level = str(app.config["LOG_LEVEL"]).upper()
    # Access lines are logged at DEBUG (_NoQueryLog); werkzeug's logger follows ours.
    logging.getLogger("werkzeug").setLevel(level)
    sandbox: subprocess.Popen[bytes] | None = None
    worker_started = False

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C stops the demo even when it was started with SIGINT ignored (in the
    # background of a script, or under a parent that ignores it): inherited otherwise.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if with_sandbox:
            sandbox_port = port + 1
            sandbox_origin = f"http://{host}:{sandbox_port}"
            jwks = _register_sandbox(app, sandbox_origin, profile)
            Path(app.instance_path).mkdir(parents=True, exist_ok=True)
            clients = Path(app.instance_path) / "demo-sandbox-clients.json"
            clients.write_text(json.dumps(_demo_clients(app_origin, jwks), indent=2))
            sandbox = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [
                    sys.executable,
                    "-m",
                    "sandbox",
                    "--host",
                    host,
                    "--port",
                    str(sandbox_port),
                    "--profile",
                    profile,
                    "--clients",
                    str(clients),
                    "--log-level",
                    "DEBUG" if level == "DEBUG" else "WARNING",
                    # Gone with this process even if it is killed outright.
                    "--exit-with-parent",
                ],
                # Its own process group: a terminal's Ctrl-C reaches it once, as the
                # terminate() below, not twice.
                process_group=0,
            )
            _wait_until_up(f"{sandbox_origin}/fhir/metadata", sandbox)
            app.extensions["caredesk.frame_origins"].invalidate()
        # Jobs and the cron's sweeps start only once the sandbox answers: a sweep fired at
        # an EHR that is still starting would only print a traceback.
        start_embedded_worker(app)
        worker_started = True
        # Bind before printing: whoever reads the URLs can use them at once.
        server = make_server(host, port, app, threaded=True, request_handler=_NoQueryLog)
        # The URL to open is the last line printed: what follows are warnings only.
        click.echo(
            "\nCtrl-C stops CareDesk and the sandbox. The console shows warnings only "
            "(CAREDESK_LOG_LEVEL=INFO for jobs, DEBUG for every request)."
        )
        click.secho(f"  CareDesk:      {app_origin}/   health: {app_origin}/healthz", bold=True)
        if with_sandbox:
            click.secho(f"  EHR (sandbox): {sandbox_origin}/ehr   <- open this", bold=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if worker_started:
            # Jobs first: one still running against a stopped sandbox would only print a
            # warning and a retry.
            stop_embedded_worker(app)
        if sandbox is not None:
            sandbox.terminate()
            try:
                sandbox.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sandbox.kill()
        click.echo("CareDesk demo stopped.")


class _NoQueryLog(WSGIRequestHandler):
    """Access log lines without query strings (callbacks carry the authorization code and
    launches the launch token, and neither may reach a log, not even the demo's), at
    DEBUG: a click-through makes dozens of requests a second."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.split("?", 1)[0]
        self.log("debug", '"%s %s" %s %s', self.command, path, code, size)


DEMO_BACKEND_CLIENT_ID = "caredesk-demo-jobs"
DEMO_BACKEND_SCOPES = " ".join(
    f"system/{t}.{p}"
    for t, p in [
        ("Patient", "rs"),
        ("Appointment", "rs"),
        ("Coverage", "rs"),
        ("Practitioner", "rs"),
        ("Location", "rs"),
        ("Encounter", "rs"),
        ("Organization", "rs"),
        ("Questionnaire", "rs"),
        ("QuestionnaireResponse", "crs"),
        ("ServiceRequest", "crs"),
        ("Task", "crs"),
    ]
)


def _register_sandbox(app: Flask, sandbox_origin: str, profile: str) -> dict[str, object]:
    """Register the sandbox EHR; jobs use Backend Services with a key made once per checkout.
    Returns the public JWKS the sandbox needs to know CareDesk's backend client."""
    with app.app_context(), get_store(app).session() as session:
        reg = registry.upsert(
            session,
            get_vault(app),
            slug="sandbox",
            name=f"Sandbox EHR ({profile})",
            iss=f"{sandbox_origin}/fhir",
            client_id=DEMO_CLIENT_ID,
            frame_origins=[sandbox_origin],
            backend_client_id=DEMO_BACKEND_CLIENT_ID,
            backend_scopes=DEMO_BACKEND_SCOPES,
        )
        if not [k for k in reg.signing_keys if k.retired_at is None]:
            registry.add_signing_key(reg, get_vault(app), "ES384")
            session.flush()
        return {"keys": [dict(k.public_jwk) for k in reg.signing_keys]}


def _demo_clients(app_origin: str, jwks: dict[str, object]) -> list[dict[str, object]]:
    return [
        {
            "client_id": DEMO_CLIENT_ID,
            "type": "public",
            "redirect_uris": [f"{app_origin}/callback"],
            "launch_url": f"{app_origin}/launch",
            "scopes": registry.DEFAULT_SCOPES,
            "backend": False,
        },
        {
            "client_id": DEMO_BACKEND_CLIENT_ID,
            "type": "confidential-asymmetric",
            "jwks": jwks,
            "scopes": DEMO_BACKEND_SCOPES,
            "backend": True,
        },
    ]


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"the sandbox exited with code {proc.returncode}")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise click.ClickException(f"the sandbox did not answer at {url} within {timeout:.0f} s")
