"""Every `caredesk` command answers --help, without any configuration."""

from __future__ import annotations

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
    assert (defaults["bind"], defaults["workers"], defaults["threads"]) == ("0.0.0.0:8000", 4, 4)
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
