"""`docs/integration.md` is a script: its ```sh blocks run, in order, from nothing (an empty
environment, a fresh store, a fresh sandbox EHR) to a launch that shows the patient.

The guide is written for one machine with CareDesk on 127.0.0.1:8000 and the sandbox on
127.0.0.1:8090, PostgreSQL and Redis at their usual addresses. The test runs it with
free ports, its own PostgreSQL schema and its own Redis database, and changes nothing
else: every other word of each block runs as written. ```sh server blocks start a
long-running process (the guide says: in its own terminal); here they run in the
background of the same shell, in one process group that the test ends.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from click.testing import CliRunner

from plugin.cli import cli
from plugin.ehr_cli import scopes_markdown

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "integration.md"
SAMPLE = ROOT / "fixtures" / "registrations" / "sample-ehr.json"
# A fence opens with ```info (a language, then an optional marker) and closes with ```.
_FENCE = re.compile(r"^```([\w-]*)[ \t]*([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
# What the guide assumes about the machine, and what the test gives instead.
GUIDE_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/caredesk"
GUIDE_REDIS = "redis://127.0.0.1:6379/0"
GUIDE_APP_PORT = "8000"
GUIDE_SANDBOX_PORT = "8090"
PATIENT_NAME = "Okonkwo"  # pat-001, the patient the guide's launch asks for


def _blocks() -> list[tuple[str, str, str]]:
    """(language, marker, body) of every fenced block, in order."""
    return [m.groups() for m in _FENCE.finditer(GUIDE.read_text("utf-8"))]  # type: ignore[misc]


def _shell_blocks() -> list[tuple[str, str]]:
    blocks = [(marker, body) for lang, marker, body in _blocks() if lang == "sh"]
    # Every shell command of the guide is in a block this test runs: no other spelling.
    others = {lang for lang, _, _ in _blocks()} - {"sh", "text", "json", "toml"}
    assert not others, f"blocks the test would not run: {others}"
    assert {marker for marker, _ in blocks} <= {"", "server"}
    return blocks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _script(blocks: list[tuple[str, str]], logs: Path, values: dict[str, str]) -> str:
    lines = ["set -euo pipefail"]
    for n, (marker, body) in enumerate(blocks):
        text = body.replace(GUIDE_PG, f"'{values['pg']}'").replace(GUIDE_REDIS, values["redis"])
        text = re.sub(rf"\b{GUIDE_APP_PORT}\b", values["app_port"], text)
        text = re.sub(rf"\b{GUIDE_SANDBOX_PORT}\b", values["sandbox_port"], text)
        lines.append(f'echo "### block {n} $(date +%T.%N)" >&2')
        if marker == "server":
            lines.append(f"( {text.strip()}\n) > {logs}/server-{n}.log 2>&1 &")
        else:
            lines.append(text)
    return "\n".join(lines) + "\n"


def _end_group(pgid: int) -> None:
    """End every process the guide started (gunicorn and its workers, the worker, the
    sandbox and its child): they share the script's process group."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def test_the_guide_runs_from_nothing_to_a_launch(pg_url, redis_url, tmp_path) -> None:
    blocks = _shell_blocks()
    guide_text = "\n".join(body for _, body in blocks)
    for assumed in (GUIDE_PG, GUIDE_REDIS, f"127.0.0.1:{GUIDE_APP_PORT}", GUIDE_SANDBOX_PORT):
        assert assumed in guide_text, assumed  # what the test replaces is really there
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    # "The commands run in the checkout": gunicorn reads these two files from there.
    for name in ("wsgi.py", "gunicorn.conf.py"):
        (checkout / name).symlink_to(ROOT / name)
    logs = tmp_path / "logs"
    logs.mkdir()
    home = tmp_path / "home"  # gunicorn keeps its control socket under $HOME
    home.mkdir()
    values = {
        "pg": pg_url,
        "redis": redis_url,
        "app_port": str(_free_port()),
        "sandbox_port": str(_free_port()),
    }
    script = _script(blocks, logs, values)
    # Nothing of the test's own environment: the guide's exports are all there is.
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }
    proc = subprocess.Popen(
        ["bash", "-c", script],  # noqa: S607 - bash from PATH, the guide's own shell
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            _end_group(proc.pid)
            out, err = proc.communicate()
        server_logs = "\n".join(
            f"--- {p.name}\n{p.read_text('utf-8')[-3000:]}" for p in sorted(logs.iterdir())
        )
        report = f"stdout:\n{out[-3000:]}\nstderr:\n{err[-5000:]}\n{server_logs}"
        assert proc.returncode == 0, report
        # The guide's last command asked the sandbox for a launch link; open it as the
        # EHR's browser would, and the sidebar shows the patient.
        launch = json.loads(out.strip().splitlines()[-1])
        app_url = f"http://127.0.0.1:{values['app_port']}"
        assert launch["url"].startswith(f"{app_url}/launch?"), launch
        browser = requests.Session()
        page = browser.get(launch["url"], timeout=60)
        assert page.status_code == 200 and "/l/" in page.url, page.text[:500]
        sidebar = browser.get(page.url + "?wait=1", timeout=60)
        assert PATIENT_NAME in sidebar.text, report
    finally:
        _end_group(proc.pid)


def test_the_guide_registers_the_sample_registration_file() -> None:
    """The registration file the guide writes is fixtures/registrations/sample-ehr.json."""
    [heredoc] = [
        m.group(1)
        for _, body in _shell_blocks()
        for m in re.finditer(r"cat > sandbox-ehr\.json <<'EOF'\n(.*?)^EOF$", body, re.M | re.S)
    ]
    assert json.loads(heredoc) == json.loads(SAMPLE.read_text("utf-8"))


def test_the_guide_scope_table_is_the_generated_one() -> None:
    text = GUIDE.read_text("utf-8")
    match = re.search(
        r"<!-- generated by `caredesk ehr scopes --markdown` -->\n(.*?)\n<!-- end of generated -->",
        text,
        re.S,
    )
    assert match is not None
    assert match.group(1) == scopes_markdown()
    shown = CliRunner().invoke(cli, ["ehr", "scopes", "--markdown"])
    assert shown.exit_code == 0 and shown.output.strip() == scopes_markdown()


def test_every_gunicorn_setting_is_in_caredesk_config_and_the_guide() -> None:
    read = re.findall(r'env_setting\("(\w+)"\)', (ROOT / "gunicorn.conf.py").read_text("utf-8"))
    assert read, "gunicorn.conf.py reads its settings with env_setting"
    table = CliRunner().invoke(cli, ["config"]).output
    guide = GUIDE.read_text("utf-8")
    for name in read:
        assert f"`CAREDESK_{name}`" in table, name
        assert f"CAREDESK_{name}" in guide, name
