"""`caredesk demo` as a terminal shows it: the sweeps start only once the sandbox answers
(no traceback), the URL to open is the last line printed, and then the console stays
quiet (access logs at DEBUG, RQ's chatter at WARNING) through a click-through's worth of
requests and the first run of every sweep; SIGTERM stops both servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
OPEN_THIS = "<- open this"


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        try:
            with socket.socket() as b:
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two adjacent free ports")


def _sweeps_have_run(sandbox: str) -> bool:
    """The reminder sweep searched the day's appointments and the outreach sweep the
    coverages: the cron's first round reached the EHR."""
    seen = {r["path"] for r in requests.get(f"{sandbox}/admin/requests", timeout=10).json()}
    return {"/fhir/Appointment", "/fhir/Coverage"} <= seen


def test_demo_prints_the_url_last_and_stays_quiet(tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = _free_port_pair()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    env["CAREDESK_INSTANCE"] = str(tmp_path / "instance")
    env["CAREDESK_DATABASE_URL"] = f"sqlite:///{tmp_path / 'demo.db'}"
    out = tmp_path / "console.txt"
    with out.open("w") as console:
        proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [sys.executable, "-m", "plugin.cli", "demo", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=console,
            stderr=subprocess.STDOUT,
            text=True,
        )
    app, sandbox = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
    try:
        deadline = time.monotonic() + 90
        while OPEN_THIS not in out.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, out.read_text()
            time.sleep(0.2)
        assert OPEN_THIS in out.read_text()
        # Some of what a click-through requests, on both servers.
        assert requests.get(f"{app}/healthz", timeout=10).ok
        assert requests.get(f"{sandbox}/ehr", timeout=10).ok
        assert requests.get(f"{sandbox}/fhir/metadata", timeout=10).ok
        assert requests.get(f"{app}/.well-known/jwks.json", timeout=10).ok
        while not _sweeps_have_run(sandbox) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _sweeps_have_run(sandbox)
        time.sleep(1)  # the sweeps' own lines, if they printed any, are out by now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = out.read_text().splitlines()
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    [url_line] = [i for i, line in enumerate(lines) if OPEN_THIS in line]
    assert lines[url_line].strip() == f"EHR (sandbox): {sandbox}/ehr   {OPEN_THIS}"
    # Nothing between the URL and the goodbye: no access line, no RQ, no job summaries.
    assert lines[url_line + 1 :] == ["CareDesk demo stopped."], "\n".join(lines)
    for p in (port, port + 1):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p)) != 0
