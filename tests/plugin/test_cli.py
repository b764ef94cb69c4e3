"""Every `caredesk` command answers --help, without any configuration."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from plugin.cli import cli


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        path = (*prefix, name)
        found.append(path)
        if isinstance(command, click.Group):
            found.extend(_commands(command, path))
    return found


ALL_COMMANDS = _commands(cli)


def test_the_command_tree_has_the_documented_commands() -> None:
    names = {" ".join(c) for c in ALL_COMMANDS}
    assert {"demo", "db", "db upgrade", "worker", "config", "sandbox"} <= names


@pytest.mark.parametrize("path", [c for c in ALL_COMMANDS if c != ("sandbox",)], ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...], monkeypatch) -> None:
    monkeypatch.setenv("CAREDESK_ENV", "production")
    monkeypatch.delenv("CAREDESK_SECRET_KEY", raising=False)
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


COMMAND_MODULES = {"plugin.ehr_cli", "plugin.jobs_cli", "plugin.messages_cli", "plugin.survey_cli"}
_HELP_THEN_MODULES = """
import json, sys
from plugin.cli import main
sys.argv = ["caredesk", "--help"]
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


def test_top_level_help_lists_every_group_without_importing_its_commands() -> None:
    """The groups' commands are imported when a group runs: importing the four modules
    was ~1.3 s of CPU at the start of every `caredesk` invocation, `--help` and `map`
    included (a fresh interpreter: this one has imported them all)."""
    proc = subprocess.run(
        [sys.executable, "-c", _HELP_THEN_MODULES], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    *help_lines, modules = proc.stdout.splitlines()
    imported = COMMAND_MODULES & set(json.loads(modules))
    assert not imported, f"caredesk --help imported {sorted(imported)}"
    listed = {line.split()[0] for line in help_lines if line.startswith("  ") and line.strip()}
    assert {"ehr", "jobs", "inbound", "survey", "map", "worker", "db"} <= listed


def test_config_lists_every_setting() -> None:
    from plugin.config import SETTINGS

    result = CliRunner().invoke(cli, ["config"])
    assert result.exit_code == 0
    for setting in SETTINGS:
        assert f"`{setting.env}`" in result.output


def test_readme_configuration_table_is_current() -> None:
    from pathlib import Path

    from plugin.config import markdown_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert markdown_table() in readme, "regenerate the README table with `caredesk config`"


def test_gunicorn_takes_every_web_setting_from_the_documented_settings(monkeypatch) -> None:
    import os
    import re
    import runpy
    from pathlib import Path

    from plugin.config import SETTINGS

    conf_file = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"
    named = set(re.findall(r"CAREDESK_[A-Z_]+", conf_file.read_text()))
    read = set(re.findall(r'env_setting\("([A-Z_]+)"\)', conf_file.read_text()))
    documented = {s.env for s in SETTINGS}
    assert named == {f"CAREDESK_{n}" for n in read} and named <= documented
    assert named == {
        "CAREDESK_BIND",
        "CAREDESK_WEB_WORKERS",
        "CAREDESK_WEB_THREADS",
        "CAREDESK_FORWARDED_ALLOW_IPS",
    }
    defaults = runpy.run_path(str(conf_file))
    # One worker process per core this process may run on, four threads each.
    cores = len(os.sched_getaffinity(0))
    assert (defaults["bind"], defaults["workers"], defaults["threads"]) == (
        "0.0.0.0:8000",
        cores,
        4,
    )
    monkeypatch.setenv("CAREDESK_BIND", "127.0.0.1:9001")
    monkeypatch.setenv("CAREDESK_WEB_WORKERS", "2")
    monkeypatch.setenv("CAREDESK_WEB_THREADS", "8")
    monkeypatch.setenv("CAREDESK_FORWARDED_ALLOW_IPS", "10.0.0.5")
    conf = runpy.run_path(str(conf_file))
    assert (conf["bind"], conf["workers"], conf["threads"], conf["forwarded_allow_ips"]) == (
        "127.0.0.1:9001",
        2,
        8,
        "10.0.0.5",
    )


def _caredesk(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    env.update(
        CAREDESK_ENV="test",
        CAREDESK_SECRET_KEY="cli-test-" + "0123456789abcdef" * 3,
        CAREDESK_DATABASE_URL=database_url,
    )
    code = "import sys; from plugin.cli import main; sys.argv = ['caredesk', *sys.argv[1:]]; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_a_store_without_tables_says_to_migrate_it_instead_of_a_traceback(tmp_path) -> None:
    """An integrator's first `caredesk ehr list` before `caredesk db upgrade` printed 40
    lines of SQLAlchemy traceback ending in "no such table"; now one line says what to do."""
    proc = _caredesk(f"sqlite:///{tmp_path / 'new.db'}", "ehr", "list")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "has no CareDesk tables yet" in proc.stderr and "caredesk db upgrade" in proc.stderr


def test_a_store_that_does_not_answer_is_one_line_without_its_url() -> None:
    proc = _caredesk("postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test", "ehr", "list")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "cannot reach the store" in proc.stderr
    assert "s3cret" not in proc.stderr


def test_any_other_store_error_keeps_its_traceback() -> None:
    from sqlalchemy.exc import IntegrityError

    from helpdesk.db import store_problem

    duplicate = IntegrityError("INSERT ...", {}, Exception("UNIQUE constraint failed: x.y"))
    assert store_problem(duplicate) is None
