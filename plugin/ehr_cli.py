"""``caredesk ehr ...``: register EHRs, manage signing keys, check conformance."""

from __future__ import annotations

import json
import re

import click
from flask import current_app
from sqlalchemy import select

from helpdesk import ehr as ehr_bridge
from helpdesk import registry
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import EhrRegistration, SigningKey
from helpdesk.timeutil import utcnow
from plugin.cli import cli, with_appcontext
from smart_launch.check import check_ehr
from smart_launch.keys import generate_signing_key


@cli.group(help="The EHR registry: which EHRs may launch CareDesk, and how to reach them.")
def ehr() -> None:
    pass


def _slugify(iss: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", iss.lower().split("://", 1)[-1]).strip("-")[:64]


def _invalidate_frames() -> None:
    current_app.extensions["caredesk.frame_origins"].invalidate()


@ehr.command("add", help="Register an EHR (or update the registration with the same iss).")
@click.option("--iss", required=True, help="The EHR's FHIR base URL, exactly as it launches.")
@click.option("--client-id", required=True, help="CareDesk's client_id at this EHR.")
@click.option(
    "--type",
    "client_type",
    default="public",
    show_default=True,
    type=click.Choice(registry.CLIENT_TYPES),
    help="OAuth client type.",
)
@click.option(
    "--client-secret",
    envvar="CAREDESK_CLIENT_SECRET",
    default=None,
    help="For confidential-symmetric; better passed as $CAREDESK_CLIENT_SECRET.",
)
@click.option(
    "--generate-key",
    "key_alg",
    type=click.Choice(["RS384", "ES384"]),
    default=None,
    help="Generate a signing key pair (confidential-asymmetric, backend services).",
)
@click.option(
    "--scopes",
    default=registry.DEFAULT_SCOPES,
    show_default="CareDesk's defaults",
    help="Space-separated scopes to request.",
)
@click.option(
    "--frame-origin",
    "frame_origins",
    multiple=True,
    help="Origin allowed to frame CareDesk, e.g. https://ehr.example (repeatable).",
)
@click.option("--backend-client-id", default=None, help="Client id for SMART Backend Services.")
@click.option("--backend-scopes", default=None, help="system/ scopes for backend jobs.")
@click.option("--slug", default=None, help="Short name (default: from the iss).")
@click.option("--name", default=None, help="Display name.")
@click.option("--read-only", is_flag=True, help="Never write to this EHR (no write-back).")
@with_appcontext
def add(
    iss: str,
    client_id: str,
    client_type: str,
    client_secret: str | None,
    key_alg: str | None,
    scopes: str,
    frame_origins: tuple[str, ...],
    backend_client_id: str | None,
    backend_scopes: str | None,
    slug: str | None,
    name: str | None,
    read_only: bool,
) -> None:
    if (client_type == "confidential-asymmetric" or backend_client_id) and not key_alg:
        # Both sign client assertions (private_key_jwt): they need a key from the start.
        key_alg = "RS384"
    vault = get_vault()
    with get_store().session() as session:
        try:
            reg = registry.upsert(
                session,
                vault,
                slug=slug or _slugify(iss),
                name=name,
                iss=iss,
                client_id=client_id,
                client_type=client_type,
                client_secret=client_secret,
                scopes=scopes,
                frame_origins=frame_origins,
                backend_client_id=backend_client_id,
                backend_scopes=backend_scopes,
                allow_writes=not read_only,
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        if key_alg and not [k for k in reg.signing_keys if k.retired_at is None]:
            _add_key(reg, key_alg)
        click.echo(f"registered {reg.slug} (id {reg.id}): {reg.iss}")
        for key in reg.signing_keys:
            click.echo(f"  signing key {key.kid} ({key.alg}) published at /.well-known/jwks.json")
    _invalidate_frames()


def _add_key(reg: EhrRegistration, alg: str) -> SigningKey:
    key = generate_signing_key(alg)  # type: ignore[arg-type]
    row = SigningKey(
        kid=key.kid,
        alg=key.alg,
        private_key_enc=get_vault().encrypt(key.private_pem),
        public_jwk=key.public_jwk(),
    )
    reg.signing_keys.append(row)
    return row


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
        "id": reg.id,
        "slug": reg.slug,
        "name": reg.name,
        "iss": reg.iss,
        "client_id": reg.client_id,
        "client_type": reg.client_type,
        "has_client_secret": reg.client_secret_enc is not None,
        "scopes": reg.scopes,
        "frame_origins": reg.frame_origins,
        "backend_client_id": reg.backend_client_id,
        "backend_scopes": reg.backend_scopes,
        "allow_writes": reg.allow_writes,
        "signing_keys": [
            {
                "kid": k.kid,
                "alg": k.alg,
                "created_at": k.created_at.isoformat(),
                "retired_at": k.retired_at.isoformat() if k.retired_at else None,
            }
            for k in reg.signing_keys
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
        report = check_ehr(target, http=http)
        if row is not None:
            row.capabilities = report.to_json()
            row.checked_at = utcnow()
    click.echo(report.to_json_text() if as_json else report.render_text())
    raise SystemExit(report.exit_code)
