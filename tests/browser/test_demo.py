"""`caredesk demo` as a user meets it: the printed EHR page, a patient, CareDesk launched in
the sidebar by a real EHR launch (state, PKCE, code, token). Ctrl-C stops both servers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


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


def test_demo_launches_caredesk_in_the_ehr_sidebar(tmp_path, chromium, screenshots) -> None:
    port = _free_port_pair()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    env["CAREDESK_INSTANCE"] = str(tmp_path / "instance")
    env["CAREDESK_DATABASE_URL"] = f"sqlite:///{tmp_path / 'demo.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "plugin.cli", "demo", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ehr_url = None
        printed: list[str] = []
        deadline = time.monotonic() + 60
        while ehr_url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line and proc.poll() is not None:
                break
            printed.append(line)
            found = re.search(r"EHR \(sandbox\): (\S+)", line)
            ehr_url = found.group(1) if found else None
        assert ehr_url, "".join(printed)
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert health.status_code == 200
        assert health.json()["store"]["backend"] == "sqlite"

        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        page.goto(ehr_url)
        page.get_by_role("link", name=re.compile("Ana Lee")).first.click()
        patients = page.locator("a", has_text="Okonkwo")
        # The click navigates; count() does not wait for the next page, wait_for does.
        patients.first.wait_for(timeout=20_000)
        assert patients.count() >= 1  # the EHR page lists patients
        patients.first.click()
        frame = page.frame_locator("#app-frame")
        frame.get_by_test_id("patient-name").wait_for(timeout=20_000)
        assert "Okonkwo" in frame.get_by_test_id("patient-name").inner_text()
        page.screenshot(path=str(screenshots / "demo-ehr-with-sidebar.png"))
        page.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
    # Both servers are gone: nothing answers on either port.
    for p in (port, port + 1):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p)) != 0
