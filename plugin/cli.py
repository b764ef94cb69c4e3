"""The ``caredesk`` command. Every command has ``--help``.

A plain click group rather than Flask's ``FlaskGroup``: ``caredesk --help`` must work before
any configuration exists (FlaskGroup builds the app just to list commands). Commands that
need the app build it with ``with_app`` and run inside its app context.

The command groups ``ehr``, ``jobs``, ``inbound`` and ``survey`` are defined here, but
their commands live in their own modules (``plugin.ehr_cli``, ...), imported only when the
group is used: importing all four took ~1.3 of the 1.7 s of CPU every ``caredesk``
invocation spent before doing anything (``caredesk map``, ``db upgrade`` and ``--help``
need none of them; the EHR registry's imports alone bring in fhir.resources).
"""

from __future__ import annotations

import importlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from flask import Flask, current_app

from plugin import __version__, create_app

F = TypeVar("F", bound=Callable[..., Any])


class LazyGroup(click.Group):
    """A command group whose commands are defined in ``commands_from``, a module imported
    the first time the group is asked for its commands (its ``--help`` included); the
    module attaches them with ``@group.command``."""

    def __init__(self, *args: Any, commands_from: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands_from = commands_from

    def list_commands(self, ctx: click.Context) -> list[str]:
        importlib.import_module(self.commands_from)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        importlib.import_module(self.commands_from)
        return super().get_command(ctx, cmd_name)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    help="CareDesk: the SMART on FHIR help desk that lives inside the EHR.\n\n"
    "Configuration comes from CAREDESK_* environment variables (see `caredesk config`).",
)
@click.version_option(__version__, prog_name="caredesk")
def cli() -> None:
    pass


def flask_app() -> Flask:
    """The app behind ``current_app``, for a command that hands it to code taking an app."""
    return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


def with_appcontext(func: F) -> F:
    """Build the app from the environment and run the command inside its app context."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        app = create_app(command=True)
        with app.app_context():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def main() -> None:
    """Console entry point: a configuration error, a store without CareDesk's tables and a
    store that does not answer are each one clear line, not a traceback."""
    from sqlalchemy.exc import DBAPIError

    from helpdesk.db import store_problem
    from helpdesk.errors import ConfigError

    try:
        cli.main(prog_name="caredesk")
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(2) from None
    except DBAPIError as exc:
        problem = store_problem(exc)
        if problem is None:
            raise
        if problem.kind == "not_migrated":
            said = (
                "the store (CAREDESK_DATABASE_URL) has no CareDesk tables yet, or an older "
                f"schema ({problem.detail}). Run `caredesk db upgrade` first."
            )
        else:
            said = f"cannot reach the store (CAREDESK_DATABASE_URL): {problem.detail}"
        click.echo(f"Error: {said}", err=True)
        raise SystemExit(2) from None


# --- db ---------------------------------------------------------------------------------


@cli.group(help="The help-desk store: migrations.")
def db() -> None:
    pass


@db.command("upgrade", help="Migrate the store to the newest schema (or to --revision).")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@with_appcontext
def db_upgrade(revision: str) -> None:
    from sqlalchemy.exc import OperationalError

    from helpdesk import migrate

    try:
        migrate.upgrade(current_app.config["DATABASE_URL"], revision)
    except OperationalError as exc:
        # The integrator's first command: a database not created yet, a server not
        # running, a wrong password. One line that says so, not a traceback (the
        # driver's message names host and database, never the password).
        raise click.ClickException(
            f"cannot open the store at CAREDESK_DATABASE_URL: {str(exc.orig).strip()}"
        ) from exc
    click.echo(f"store at {revision} ({current_app.extensions['caredesk.db'].backend})")


@db.command("downgrade", help="Step the store back to --revision (e.g. base).")
@click.option("--revision", required=True, help="Target revision, e.g. -1 or base.")
@with_appcontext
def db_downgrade(revision: str) -> None:
    from helpdesk import migrate

    migrate.downgrade(current_app.config["DATABASE_URL"], revision)
    click.echo(f"store at {revision}")


@db.command("current", help="Print the store's current revision.")
@with_appcontext
def db_current() -> None:
    from helpdesk import migrate

    migrate.current(current_app.config["DATABASE_URL"])


# --- worker -----------------------------------------------------------------------------


@cli.command(help="Run an RQ worker (with the scheduler) on CAREDESK_REDIS_URL.")
@click.option("--queues", "-q", default=None, help="Comma-separated queues (default: config).")
@click.option("--burst", is_flag=True, help="Work until the queues are empty, then exit.")
@click.option("--no-scheduler", is_flag=True, help="Do not run RQ's scheduler in this worker.")
@click.option("--name", default=None, help="Worker name (default: RQ's).")
@with_appcontext
def worker(queues: str | None, burst: bool, no_scheduler: bool, name: str | None) -> None:
    from jobs.queue import get_queue_state
    from jobs.worker import AppWorker

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    state = get_queue_state(app)
    if state.embedded:
        raise click.ClickException(
            "CAREDESK_REDIS_URL is not set: `caredesk worker` needs a real Redis. "
            "(The demo runs its own in-process worker.)"
        )
    names = [q.strip() for q in (queues or ",".join(state.queue_names)).split(",") if q.strip()]
    w = AppWorker([state.queue(n) for n in names], connection=state.connection, app=app, name=name)
    click.echo(f"worker {w.name} on {', '.join(names)}", err=True)
    w.work(burst=burst, with_scheduler=not no_scheduler, logging_level="INFO")


# --- config -----------------------------------------------------------------------------


@cli.command("config", help="Print every CAREDESK_* setting, its default and meaning.")
def config_table() -> None:
    from plugin.config import markdown_table

    click.echo(markdown_table())


# --- map -------------------------------------------------------------------------------


@cli.command(
    "map",
    help="Summarise, per patient, the help-desk context CareDesk makes of a FHIR Bundle "
    "(searchset, collection, transaction, batch-response) or NDJSON file: name, flags, "
    "visits, coverage, warning count and the top warnings; --json prints the full contexts. "
    "FILE may be - for stdin. Exit code 2 when the input is not FHIR, 3 when it is FHIR "
    "about no patient.",
)
@click.argument("file", type=click.Path(allow_dash=True, dir_okay=False), default="-")
@click.option(
    "--timezone",
    "viewer_tz",
    default=None,
    help="Viewer time zone (default: CAREDESK_VIEWER_TIMEZONE or America/Chicago).",
)
@click.option(
    "--now",
    "now_text",
    default=None,
    metavar="ISO-DATETIME",
    help="Evaluate as of this moment (with offset), e.g. 2026-11-27T09:30-06:00.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="The full context of each patient, as a JSON array."
)
def map_cmd(file: str, viewer_tz: str | None, now_text: str | None, as_json: bool) -> None:
    import datetime as dt

    from fhir_mappers.bundle import run_map

    tz = viewer_tz or os.environ.get("CAREDESK_VIEWER_TIMEZONE", "America/Chicago")
    if now_text:
        try:
            now = dt.datetime.fromisoformat(now_text)
        except ValueError:
            raise click.BadParameter("not an ISO 8601 datetime", param_hint="--now") from None
        if now.tzinfo is None:
            raise click.BadParameter("needs a UTC offset, e.g. -06:00", param_hint="--now")
    else:
        now = dt.datetime.now(dt.UTC)
    try:
        with click.open_file(file, "r", encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        click.echo(f"caredesk map: cannot read {file}: {exc}", err=True)
        raise SystemExit(2) from None
    code, output = run_map(text, now=now, viewer_tz=tz, as_json=as_json)
    click.echo(output, err=code != 0, nl=not output.endswith("\n"))
    raise SystemExit(code)


# --- sandbox and demo -------------------------------------------------------------------


@cli.command(
    "sandbox",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
    help="Run the sandbox EHR alone (all options: caredesk sandbox --help).",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sandbox_cmd(args: tuple[str, ...]) -> None:
    # The sandbox is the other side of the protocol and is never imported by the product:
    # it runs as its own process, and that process ends with this one. SIGTERM and SIGINT
    # are passed on (a bare subprocess.call left the child listening after a SIGTERM);
    # the child has its own process group so a terminal's Ctrl-C reaches it once, through
    # here; --exit-with-parent covers this process being killed outright.
    raise SystemExit(run_child([sys.executable, "-m", "sandbox", "--exit-with-parent", *args]))


def run_child(argv: list[str]) -> int:
    """Run ``argv`` to its end, passing SIGTERM and SIGINT on; its exit code."""
    child = subprocess.Popen(argv, process_group=0)  # noqa: S603 - our own interpreter

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:  # pragma: no cover - only if wait() itself was interrupted
            child.kill()
            child.wait()


@cli.command(help="Run CareDesk and the sandbox EHR on loopback, ready to click through.")
@click.option("--port", default=5000, show_default=True, help="CareDesk's port; sandbox: +1.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--no-sandbox", is_flag=True, help="Serve only CareDesk.")
@click.option(
    "--profile",
    default="smart",
    show_default=True,
    type=click.Choice(["smart", "epic", "oracle"]),
    help="Sandbox vendor profile.",
)
def demo(port: int, host: str, no_sandbox: bool, profile: str) -> None:
    from plugin.demo import run_demo

    os.environ["CAREDESK_ENV"] = "demo"
    instance = Path(os.environ.get("CAREDESK_INSTANCE", "instance")).resolve()
    os.environ.setdefault("CAREDESK_SECRET_KEY", _demo_secret(instance))
    run_demo(host=host, port=port, with_sandbox=not no_sandbox, profile=profile)


def _demo_secret(instance: Path) -> str:
    """One generated secret per checkout, so demo data encrypted at rest stays readable."""
    instance.mkdir(parents=True, exist_ok=True)
    path = instance / "demo-secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


# --- command groups whose commands live in their own modules -----------------------------


def _lazy_group(name: str, commands_from: str, help_text: str) -> LazyGroup:
    group = LazyGroup(name, commands_from=commands_from, help=help_text)
    cli.add_command(group)
    return group


ehr = _lazy_group(
    "ehr",
    "plugin.ehr_cli",
    "The EHR registry: which EHRs may launch CareDesk, and how to reach them.",
)
jobs = _lazy_group(
    "jobs",
    "plugin.jobs_cli",
    "Follow-up, referral, reminder and survey jobs (CareTask rows + RQ).",
)
inbound = _lazy_group(
    "inbound",
    "plugin.messages_cli",
    "Inbound messages, automation rules and outreach (two-way messaging).",
)
survey = _lazy_group("survey", "plugin.survey_cli", "Patient satisfaction surveys.")


if __name__ == "__main__":  # pragma: no cover
    # `python -m plugin.cli`: run the groups of the module as imported (`plugin.cli`), the
    # ones the command modules attach their commands to, not `__main__`'s copy.
    from plugin.cli import main as _main

    _main()
