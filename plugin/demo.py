"""``caredesk demo``: CareDesk and the sandbox EHR, two origins on loopback, as in real life."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import click
import requests
from werkzeug.serving import WSGIRequestHandler, make_server

from plugin import create_app, migrate, registry
from plugin.crypto import get_vault
from plugin.db import get_store

DEMO_CLIENT_ID = "caredesk-demo"


def run_demo(*, host: str, port: int, with_sandbox: bool, profile: str) -> None:
    app = create_app()
    migrate.upgrade(app.config["DATABASE_URL"])
    sandbox: subprocess.Popen[bytes] | None = None

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    app_origin = f"http://{host}:{port}"
    try:
        if with_sandbox:
            sandbox_port = port + 1
            sandbox_origin = f"http://{host}:{sandbox_port}"
            clients = Path(app.instance_path) / "demo-sandbox-clients.json"
            clients.write_text(json.dumps([_demo_client(app_origin)], indent=2))
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
                ]
            )
            _wait_until_up(f"{sandbox_origin}/fhir/metadata", sandbox)
            with app.app_context(), get_store(app).session() as session:
                registry.upsert(
                    session,
                    get_vault(app),
                    slug="sandbox",
                    name=f"Sandbox EHR ({profile})",
                    iss=f"{sandbox_origin}/fhir",
                    client_id=DEMO_CLIENT_ID,
                    frame_origins=[sandbox_origin],
                )
            app.extensions["caredesk.frame_origins"].invalidate()
        # Bind before printing: whoever reads the URLs can use them at once.
        server = make_server(host, port, app, threaded=True, request_handler=_NoQueryLog)
        if with_sandbox:
            click.secho(f"\n  EHR (sandbox): {sandbox_origin}/ehr   <- open this", bold=True)
        click.secho(f"  CareDesk:      {app_origin}/   health: {app_origin}/healthz\n", bold=True)
        click.echo("Ctrl-C stops CareDesk and the sandbox.")
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if sandbox is not None:
            sandbox.terminate()
            try:
                sandbox.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sandbox.kill()
        click.echo("CareDesk demo stopped.")


class _NoQueryLog(WSGIRequestHandler):
    """Access log lines without query strings: callbacks carry the authorization code and
    launches the launch token, and neither may reach a log, not even the demo's."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.split("?", 1)[0]
        self.log("info", '"%s %s" %s %s', self.command, path, code, size)


def _demo_client(app_origin: str) -> dict[str, object]:
    return {
        "client_id": DEMO_CLIENT_ID,
        "type": "public",
        "redirect_uris": [f"{app_origin}/callback"],
        "launch_url": f"{app_origin}/launch",
        "scopes": registry.DEFAULT_SCOPES,
        "backend": False,
    }


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
