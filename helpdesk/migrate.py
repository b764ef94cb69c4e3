"""Running Alembic from CareDesk's configuration (``caredesk db upgrade``)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def current(url: str) -> None:
    command.current(alembic_config(url), verbose=False)


def check(url: str) -> None:
    """Raise if the models have changes no migration covers."""
    command.check(alembic_config(url))


@cache
def known_revisions() -> tuple[str, frozenset[str]]:
    """This code's head revision and every revision its migrations know (read once)."""
    scripts = ScriptDirectory.from_config(alembic_config(""))
    head = scripts.get_current_head()
    if head is None:
        raise RuntimeError("no migration in helpdesk/migrations")
    return head, frozenset(s.revision for s in scripts.walk_revisions())
