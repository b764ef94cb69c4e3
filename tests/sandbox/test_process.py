"""`python -m sandbox` as a process: start-up flags, and a clean end on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


def _read_port(stream: IO[str] | None) -> int:
    assert stream is not None
    line = stream.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/fhir", line)
    assert match, line
    return int(match.group(1))


@contextmanager
def _sandbox(*flags: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "sandbox", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        yield proc, _read_port(proc.stdout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sandbox_process_exits_cleanly_on_signal(sig: signal.Signals) -> None:
    with _sandbox() as (proc, port):
        assert requests.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=10).ok
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
        assert not _listening(port)


def test_sandbox_process_exits_on_sigterm_with_a_request_in_flight() -> None:
    with _sandbox("--latency-ms", "5000") as (proc, port):
        slow = threading.Thread(
            target=lambda: _swallow(f"http://127.0.0.1:{port}/fhir/metadata"), daemon=True
        )
        slow.start()
        time.sleep(0.3)  # let the request reach its 5 s latency
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 3
        assert not _listening(port)


def _swallow(url: str) -> None:
    try:
        requests.get(url, timeout=10)
    except requests.RequestException:
        return


def test_exit_with_parent_stops_the_sandbox_when_its_parent_is_killed() -> None:
    """A wrapper (like `caredesk sandbox`) killed hard must not leave a listener."""
    wrapper = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-m', 'sandbox', '--port', '0',"
        " '--exit-with-parent'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(  # noqa: S603 - fixed arguments
        [sys.executable, "-c", wrapper], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert parent.stdout is not None
    try:
        child_pid = int(parent.stdout.readline())
        port = _read_port(parent.stdout)
        assert _listening(port)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _listening(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _listening(port)
        status = Path(f"/proc/{child_pid}/status")
        while status.exists() and time.monotonic() < deadline:
            if "zombie" in status.read_text():
                break  # exited; waiting for its new parent to reap it
            time.sleep(0.1)
        assert not status.exists() or "zombie" in status.read_text()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()


def test_start_up_flags_set_the_knobs() -> None:
    flags = [
        "--omit-display",
        "--no-canonical-version-search",
        "--iss-trailing-slash",
        "--fhir-user",
        "absolute",
        "--no-rotate-refresh",
        "--refresh-id-token",
        "no-aud",
        "--refresh-token-lifetime",
        "900",
        "--consent-drop-scope",
        "patient/Coverage.rs",
        "--consent-drop-scope",
        "offline_access",
    ]
    with _sandbox(*flags) as (proc, port):
        knobs = requests.get(f"http://127.0.0.1:{port}/admin/knobs", timeout=10).json()
        proc.terminate()
    assert {
        "omit_display": True,
        "canonical_version_search": False,
        "iss_trailing_slash": True,
        "fhir_user_relative": False,
        "rotate_refresh": False,
        "refresh_id_token": "no-aud",
        "refresh_token_lifetime_s": 900,
        "consent_drop_scopes": ["patient/Coverage.rs", "offline_access"],
    }.items() <= knobs.items()


def test_profile_defaults_apply_and_flags_win() -> None:
    with _sandbox("--profile", "thirdparty", "--refresh-id-token", "omit") as (proc, port):
        knobs = requests.get(f"http://127.0.0.1:{port}/admin/knobs", timeout=10).json()
        proc.terminate()
    assert knobs["omit_display"] is True and knobs["canonical_version_search"] is False
    assert knobs["refresh_id_token"] == "omit"


# --- `caredesk sandbox`: the wrapper and its child end together ---------------------------


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _gone(pid: int, deadline: float) -> bool:
    status = Path(f"/proc/{pid}/status")
    while time.monotonic() < deadline:
        if not status.exists() or "zombie" in status.read_text():
            return True
        time.sleep(0.1)
    return False


@contextmanager
def _caredesk_sandbox() -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    """`caredesk sandbox --port 0`: (the wrapper, its sandbox child's pid, the port)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "plugin.cli", "sandbox", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    started: list[int] = []
    try:
        port = _read_port(proc.stdout)
        started.extend(_children(proc.pid))
        [child] = started
        yield proc, child, port
    finally:
        # Whatever the test saw, nothing of this test keeps running (the child by its own
        # pid: once the wrapper is gone it is no longer listed as its child).
        for pid in [proc.pid, *started]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_caredesk_sandbox_takes_its_child_along_on_signal(sig: signal.Signals) -> None:
    with _caredesk_sandbox() as (proc, child, port):
        assert requests.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=10).ok
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
        assert _gone(child, time.monotonic() + 10)
        assert not _listening(port)
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()


def test_caredesk_sandbox_killed_outright_still_ends_its_child() -> None:
    with _caredesk_sandbox() as (proc, child, port):
        proc.kill()
        proc.wait(timeout=10)
        assert _gone(child, time.monotonic() + 10)
        assert not _listening(port)
