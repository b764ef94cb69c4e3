"""``caredesk ehr ...``: register EHRs, manage signing keys, check conformance."""

from __future__ import annotations

import inspect
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import update_wrapper
from pathlib import Path
from typing import Any

import click
from flask import current_app
from marshmallow import ValidationError
from sqlalchemy import select

from helpdesk import ehr as ehr_bridge
from helpdesk import registry
from helpdesk import surveys as domain_surveys
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import EhrRegistration, SigningKey
from helpdesk.timeutil import utcnow
from plugin.cli import ehr, with_appcontext
from plugin.rowjson import columns
from smart_launch.check import check_ehr
from smart_launch.features import FEATURES, feature_table, scopes_for_features


def _invalidate_frames() -> None:
    current_app.extensions["caredesk.frame_origins"].invalidate()


class RegistrationInputError(click.ClickException):
    """Bad registration input: every bad field, one line each. Exit code 2, as for any
    other usage error."""

    exit_code = 2


def _bad_fields(messages: Any, source: str) -> RegistrationInputError:
    lines: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}[{key}]" if isinstance(key, int) else _join(prefix, key), inner)
        elif isinstance(value, list):
            for item in value:
                walk(prefix, item)
        else:
            lines.append(f"  {prefix or 'file'}: {value}")

    walk("", messages)
    count = f"{len(lines)} problem" + ("s" if len(lines) != 1 else "")
    return RegistrationInputError(f"{source}: {count}\n" + "\n".join(lines))


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _read_file(path: str) -> dict[str, Any]:
    """A registration file: JSON, or TOML for a name ending in .toml."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RegistrationInputError(f"{path}: not valid {_kind(path)}: {exc}") from exc
    if not isinstance(data, dict):
        raise RegistrationInputError(f"{path}: must hold one registration (a JSON object)")
    return data


def _kind(path: str) -> str:
    return "TOML" if path.endswith(".toml") else "JSON"


@dataclass(frozen=True)
class RegistrationInput:
    """What ``add`` and ``update`` are given alike: a registration file, the registration
    fields given as options (None where not given; they win over the file), and a client
    secret (an argument of its own: it is encrypted, never a field of the values)."""

    from_file: str | None
    client_secret: str | None
    options: dict[str, Any]

    @classmethod
    def of(
        cls,
        from_file: str | None,
        client_secret: str | None,
        frame_origins: tuple[str, ...],
        **options: Any,
    ) -> RegistrationInput:
        # A repeatable option not given is (); a list given replaces the registered one.
        options["frame_origins"] = list(frame_origins) if frame_origins else None
        return cls(from_file, client_secret, options)

    def fields(self, **more: Any) -> tuple[dict[str, Any], str]:
        """The file's fields, then the options given here and the command's own (``more``),
        and where they came from, for the error messages."""
        given = {k: v for k, v in {**self.options, **more}.items() if v is not None}
        data = {**_read_file(self.from_file), **given} if self.from_file else given
        source = self.from_file or "the options"
        if self.from_file and given:
            source = f"{self.from_file} with the options"
        return data, source


def _registration_options(func: Callable[..., None]) -> Callable[..., None]:
    """The options ``add`` and ``update`` share, in the order `--help` shows them, handed
    to the command as one ``given`` (a :class:`RegistrationInput`)."""

    own = inspect.signature(func).parameters

    def command(**kwargs: Any) -> None:
        shared = {name: kwargs.pop(name) for name in list(kwargs) if name not in own}
        func(given=RegistrationInput.of(**shared), **kwargs)

    update_wrapper(command, func)  # the options the command declared below this one stay
    options = [
        click.option(
            "--from-file",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="A registration file (JSON, or TOML for *.toml; the format is in "
            "docs/integration.md, example fixtures/registrations/sample-ehr.json). "
            "Options given as well win over the file.",
        ),
        click.option("--client-id", default=None, help="CareDesk's client_id at this EHR."),
        click.option(
            "--type",
            "--client-type",
            "client_type",
            default=None,
            type=click.Choice(registry.CLIENT_TYPES),
            help="OAuth client type (new registrations: public).",
        ),
        click.option(
            "--client-secret",
            envvar="CAREDESK_CLIENT_SECRET",
            default=None,
            help="For confidential-symmetric; better passed as $CAREDESK_CLIENT_SECRET.",
        ),
        click.option(
            "--scopes",
            default=None,
            help="Space-separated user-level scopes (new registrations: CareDesk's "
            "defaults; `caredesk ehr scopes` lists what each feature needs).",
        ),
        click.option(
            "--frame-origin",
            "frame_origins",
            multiple=True,
            help="Origin allowed to frame CareDesk, e.g. https://ehr.example (repeatable; "
            "the list given replaces the registered one).",
        ),
        click.option(
            "--backend-client-id", default=None, help="Client id for SMART Backend Services."
        ),
        click.option(
            "--backend-scopes",
            default=None,
            help="system/ scopes for backend jobs (default with a backend client: every "
            "feature's, see `caredesk ehr scopes`).",
        ),
        click.option("--name", default=None, help="Display name."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@ehr.command(
    "add",
    help="Register a new EHR, from options or a registration file (--from-file). An EHR "
    "already registered is left as it is: the same settings again change nothing, "
    "different ones are refused (change them with `caredesk ehr update`).",
)
@click.option("--iss", default=None, help="The EHR's FHIR base URL, exactly as it launches.")
@_registration_options
@click.option(
    "--generate-key",
    "key_alg",
    type=click.Choice(registry.KEY_ALGS),
    default=None,
    help="Algorithm of the signing key made for confidential-asymmetric and backend "
    "clients (default RS384).",
)
@click.option("--slug", default=None, help="Short name, used in links (default: from the iss).")
@click.option("--read-only", is_flag=True, help="Never write to this EHR (no write-back).")
@with_appcontext
def add(
    iss: str | None,
    given: RegistrationInput,
    key_alg: str | None,
    slug: str | None,
    read_only: bool,
) -> None:
    data, source = given.fields(
        iss=iss, signing_key_alg=key_alg, slug=slug, allow_writes=False if read_only else None
    )
    client_secret = given.client_secret
    vault = get_vault()
    with get_store().session() as session:
        try:
            values = registry.load_registration(data)
            reg = registry.create(session, vault, values, client_secret=client_secret)
        except ValidationError as exc:
            raise _bad_fields(exc.messages, source) from None
        except registry.RegistrationConflict:
            existing = registry.find_by_iss(session, values["iss"])
            assert existing is not None
            _already_registered(existing, registry.with_defaults(values), client_secret)
            return
        click.echo(f"registered {reg.slug} (id {reg.id}): {reg.iss}")
        for key in reg.signing_keys:
            click.echo(f"  signing key {key.kid} ({key.alg}) published at /.well-known/jwks.json")
        if reg.backend_client_id and "backend_scopes" not in values:
            click.echo(f"  backend scopes (every feature's): {reg.backend_scopes}")
        _echo_scope_gaps(reg)
    _invalidate_frames()


def _echo_scope_gaps(reg: EhrRegistration) -> None:
    gaps = registry.scope_gaps(reg)
    if gaps:
        click.echo(
            "  not covered by these scopes (`caredesk ehr scopes` lists what each feature needs):"
        )
        for gap in gaps:
            click.echo(f"    {gap}")


def _already_registered(
    reg: EhrRegistration, values: dict[str, Any], client_secret: str | None
) -> None:
    """`ehr add` for an iss already registered: a re-run with the same settings is a
    no-op (so a provisioning script may run twice); anything else is refused, since
    replacing a registration wholesale would drop settings the new command left out."""
    diff = registry.differences(reg, values)
    if (
        client_secret
        and reg.client_type == "confidential-symmetric"
        and (
            reg.client_secret_enc is None
            or get_vault().decrypt(reg.client_secret_enc) != client_secret
        )
    ):
        diff.append("client_secret")
    if not diff:
        click.echo(f"{reg.slug} (id {reg.id}) is already registered as given; nothing changed")
        return
    raise click.ClickException(
        f"{reg.iss} is already registered as {reg.slug} (id {reg.id}), and these differ: "
        f"{', '.join(diff)}. Nothing was changed: `ehr add` never replaces a registration. "
        f"Change what you mean to with `caredesk ehr update {reg.slug} --...` (or "
        f"`--from-file FILE`; only what is given changes)."
    )


@ehr.command(
    "update",
    help="Change a registration: only what is given changes; the slug and iss stay. "
    "Changing --type clears a client secret or signing keys that no longer apply "
    "(and says so); a type that signs gets a key.",
)
@click.argument("key")
@_registration_options
@click.option(
    "--no-backend",
    is_flag=True,
    help="Remove the backend client (id and scopes).",
)
@click.option(
    "--read-only/--allow-writes",
    "read_only",
    default=None,
    help="Never write to this EHR / allow write-back again.",
)
@with_appcontext
def update(
    key: str,
    given: RegistrationInput,
    no_backend: bool,
    read_only: bool | None,
) -> None:
    if no_backend and (given.options["backend_client_id"] or given.options["backend_scopes"]):
        raise RegistrationInputError("--no-backend with --backend-client-id/--backend-scopes")
    data, source = given.fields(allow_writes=None if read_only is None else not read_only)
    vault = get_vault()
    with get_store().session() as session:
        reg = _load(session, key)
        try:
            changes = registry.load_changes(reg, data)
            notes = registry.update(
                session,
                vault,
                reg,
                changes,
                client_secret=given.client_secret,
                remove_backend=no_backend,
            )
        except ValidationError as exc:
            raise _bad_fields(exc.messages, source) from None
        if not notes:
            click.echo(f"{reg.slug}: nothing to change")
            return
        click.echo(f"updated {reg.slug} (id {reg.id}):")
        for note in notes:
            click.echo(f"  {note}")
        _echo_scope_gaps(reg)
    _invalidate_frames()


@ehr.command(
    "scopes",
    help="The scopes each CareDesk feature needs, user-level (a launch) and backend "
    "(system/, jobs and the command line), and the scope strings that cover them all.",
)
@click.option("--markdown", is_flag=True, help="As the Markdown table of docs/integration.md.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def scopes_cmd(markdown: bool, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(feature_table(), indent=2))
    elif markdown:
        click.echo(scopes_markdown())
    else:
        for row in feature_table():
            click.echo(f"{row['title']} ({row['context']})")
            for level in ("user", "backend"):
                if row[f"{level}_scopes"]:
                    click.echo(f"  {level + ':':<8} {' '.join(row[f'{level}_scopes'])}")
        click.echo(f"\nall, user-level: {scopes_for_features(FEATURES, 'user')}")
        click.echo(f"all, backend:    {scopes_for_features(FEATURES, 'backend')}")


def scopes_markdown() -> str:
    """The guide's scope table, generated from ``smart_launch.features`` (a test keeps the
    guide equal to it)."""
    where = {
        "user": "launch only",
        "backend": "backend only",
        "both": "launch, or backend",
    }
    rows = [
        "| feature | runs on | user-level scopes (a launch) | backend scopes |",
        "|---|---|---|---|",
    ]
    for row in feature_table():
        user = " ".join(f"`{s}`" for s in row["user_scopes"]) or "—"
        backend = " ".join(f"`{s}`" for s in row["backend_scopes"]) or "—"
        rows.append(f"| {row['title']} | {where[row['context']]} | {user} | {backend} |")
    rows += [
        "",
        "Every feature at once, user-level (with the launch and identity scopes):",
        "",
        "```text",
        scopes_for_features(FEATURES, "user"),
        "```",
        "",
        "and backend:",
        "",
        "```text",
        scopes_for_features(FEATURES, "backend"),
        "```",
    ]
    return "\n".join(rows)


def _add_key(reg: EhrRegistration, alg: str) -> SigningKey:
    return registry.add_signing_key(reg, get_vault(), alg)


def _load(session, key: str) -> EhrRegistration:  # type: ignore[no-untyped-def]
    reg = registry.find(session, key)
    if reg is None:
        raise click.ClickException(f"no registered EHR {key!r} (see `caredesk ehr list`)")
    return reg


@ehr.command("list", help="List registered EHRs.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_appcontext
def list_(as_json: bool) -> None:
    with get_store().session() as session:
        regs = session.scalars(select(EhrRegistration).order_by(EhrRegistration.id)).all()
        rows = [_summary(r) for r in regs]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no EHRs registered (add one with `caredesk ehr add`)")
    for r in rows:
        click.echo(f"{r['id']:>3}  {r['slug']:<24} {r['client_type']:<24} {r['iss']}")


def _summary(reg: EhrRegistration) -> dict[str, object]:
    return {
        **columns(reg, "id", "slug", "name", "iss", "client_id", "client_type"),
        "has_client_secret": reg.client_secret_enc is not None,
        **columns(
            reg, "scopes", "frame_origins", "backend_client_id", "backend_scopes", "allow_writes"
        ),
        "signing_keys": [
            columns(k, "kid", "alg", "created_at", "retired_at") for k in reg.signing_keys
        ],
        "capabilities": reg.capabilities,
    }


@ehr.command("show", help="Show one registration (secrets are never printed).")
@click.argument("key")
@with_appcontext
def show(key: str) -> None:
    with get_store().session() as session:
        click.echo(json.dumps(_summary(_load(session, key)), indent=2))


@ehr.command("remove", help="Remove a registration, or only a retired signing key (--kid).")
@click.argument("key")
@click.option("--kid", default=None, help="Remove just this (retired) signing key.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def remove(key: str, kid: str | None, yes: bool) -> None:
    with get_store().session() as session:
        reg = _load(session, key)
        if kid:
            found = [k for k in reg.signing_keys if k.kid == kid]
            if not found:
                raise click.ClickException(f"{reg.slug} has no key {kid}")
            if found[0].retired_at is None:
                raise click.ClickException("that key is current; rotate first (`ehr rotate-key`)")
            reg.signing_keys.remove(found[0])
            click.echo(f"removed key {kid}; it is no longer published")
            return
        if not yes and not click.confirm(f"Remove {reg.slug} ({reg.iss})?", default=False):
            raise click.Abort()
        session.delete(reg)
        click.echo(f"removed {reg.slug}")
    _invalidate_frames()


@ehr.command(
    "rotate-key",
    help="Make a new signing key current; the old stays published "
    "until removed with `ehr remove KEY --kid KID`.",
)
@click.argument("key")
@click.option(
    "--alg",
    type=click.Choice(["RS384", "ES384"]),
    default=None,
    help="Algorithm of the new key (default: the current key's).",
)
@with_appcontext
def rotate_key(key: str, alg: str | None) -> None:
    with get_store().session() as session:
        reg = _load(session, key)
        current = [k for k in reg.signing_keys if k.retired_at is None]
        new = _add_key(reg, alg or (current[0].alg if current else "RS384"))
        for old in current:
            old.retired_at = utcnow()
        session.flush()
        click.echo(f"new signing key {new.kid} ({new.alg}) is current")
        for old in current:
            click.echo(f"  {old.kid} retired, still published until removed")


@ehr.command(
    "check",
    help="Conformance report: what this EHR supports and which CareDesk "
    "features will work. Exit code 1 when a required capability is missing.",
)
@click.argument("iss_or_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_appcontext
def check(iss_or_id: str, as_json: bool) -> None:
    with get_store().session() as session:
        row = registry.find(session, iss_or_id)
        target = ehr_bridge.to_registration(row) if row is not None else iss_or_id
        if row is None and not iss_or_id.startswith(("https://", "http://")):
            raise click.ClickException(f"{iss_or_id!r} is neither a registered EHR nor a URL")
        http = ehr_bridge.clients().http(row.id if row else 0)
        # The Questionnaire `caredesk survey publish` puts there: without it the report
        # said "no Questionnaire to look for was given" and left survey write-back
        # unchecked, right after the guide had published it.
        csat = domain_surveys.questionnaire()
        report = check_ehr(
            target, http=http, questionnaire=(str(csat["url"]), str(csat["version"]))
        )
        if row is not None:
            row.capabilities = report.to_json()
            row.checked_at = utcnow()
    click.echo(report.to_json_text() if as_json else report.render_text())
    raise SystemExit(report.exit_code)
