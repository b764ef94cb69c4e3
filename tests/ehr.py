"""Connecting a CareDesk app and a sandbox EHR for a test: each registers the other, the
way an integration engineer does with `caredesk ehr add` and the EHR's app registry."""

from __future__ import annotations

from typing import Any

from flask import Flask

from helpdesk import registry
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import SigningKey
from sandbox.testing import SandboxHandle
from smart_launch.keys import generate_signing_key

CLIENT_SECRET = "symmetric-secret-value-1234567890"


def _add_key(app: Flask, reg: Any, alg: str = "RS384") -> dict[str, Any]:
    key = generate_signing_key(alg)  # type: ignore[arg-type]
    reg.signing_keys.append(
        SigningKey(
            kid=key.kid,
            alg=key.alg,
            private_key_enc=get_vault(app).encrypt(key.private_pem),
            public_jwk=key.public_jwk(),
        )
    )
    return key.public_jwk()


def connect(
    app: Flask,
    sb: SandboxHandle,
    app_url: str,
    *,
    client_id: str,
    client_type: str = "public",
    slug: str = "sb",
    scopes: str | None = None,
    sandbox_scopes: str | None = None,
) -> None:
    """CareDesk as a launchable app of the sandbox (EHR and standalone launch).

    A confidential-asymmetric client gets a fresh key; the sandbox fetches CareDesk's
    published JWKS at `/.well-known/jwks.json`, as a real EHR would.
    """
    client: dict[str, Any] = {
        "client_id": client_id,
        "type": client_type,
        "redirect_uris": [f"{app_url}/callback"],
        "launch_url": f"{app_url}/launch",
        "scopes": sandbox_scopes or registry.DEFAULT_SCOPES,
    }
    with app.app_context(), get_store(app).session() as session:
        reg = registry.upsert(
            session,
            get_vault(app),
            slug=slug,
            iss=sb.fhir_base,
            client_id=client_id,
            client_type=client_type,
            scopes=scopes or registry.DEFAULT_SCOPES,
            client_secret=CLIENT_SECRET if client_type == "confidential-symmetric" else None,
            frame_origins=[sb.base_url],
        )
        if client_type == "confidential-asymmetric":
            _add_key(app, reg)
    if client_type == "confidential-symmetric":
        client["client_secret"] = CLIENT_SECRET
    if client_type == "confidential-asymmetric":
        client["jwks_uri"] = f"{app_url}/.well-known/jwks.json"
    app.extensions["caredesk.frame_origins"].invalidate()
    sb.register_client(client)


def connect_backend(
    app: Flask,
    sb: SandboxHandle,
    *,
    client_id: str,
    scopes: str,
    slug: str = "sandbox",
    allow_writes: bool = True,
    capabilities: dict[str, Any] | None = None,
) -> int:
    """A registration whose jobs authenticate with SMART Backend Services at the sandbox."""
    with app.app_context(), get_store(app).session() as session:
        reg = registry.upsert(
            session,
            get_vault(app),
            slug=slug,
            iss=sb.fhir_base,
            client_id=client_id,
            client_type="confidential-asymmetric",
            backend_client_id=client_id,
            backend_scopes=scopes,
            allow_writes=allow_writes,
        )
        public = _add_key(app, reg)
        if capabilities is not None:
            reg.capabilities = capabilities
        session.flush()
        reg_id = int(reg.id)
    sb.register_client(
        {
            "client_id": client_id,
            "type": "confidential-asymmetric",
            "jwks": {"keys": [public]},
            "backend": True,
        }
    )
    return reg_id


def sandbox_token(
    sb: SandboxHandle, scopes: str = "system/ServiceRequest.rs system/Task.rs"
) -> str:
    """A backend token of a separate client, for reading the sandbox in assertions (so a
    test checks what the EHR holds, not what CareDesk believes it wrote)."""
    import requests

    from smart_launch.backend import backend_token
    from smart_launch.config import Registration
    from smart_launch.discovery import discover

    key = generate_signing_key("RS384")
    sb.register_client(
        {
            "client_id": "assertions",
            "type": "confidential-asymmetric",
            "jwks": {"keys": [key.public_jwk()]},
            "backend": True,
        }
    )
    reg = Registration(
        id="assertions",
        iss=sb.fhir_base,
        client_id="assertions",
        client_type="confidential-asymmetric",
        scopes="",
        redirect_uri="urn:test",
        signing_keys=(key,),
        backend_client_id="assertions",
        backend_scopes=scopes,
    )
    with requests.Session() as http:
        return backend_token(reg, discover(reg, http=http), http=http).access_token
