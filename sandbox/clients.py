"""Client registrations: from a JSON/TOML file, CLI flags or `POST /admin/clients`."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CLIENT_TYPES = ("public", "confidential-symmetric", "confidential-asymmetric")


@dataclass(frozen=True)
class Client:
    client_id: str
    type: str
    redirect_uris: tuple[str, ...] = ()
    client_secret: str | None = None
    jwks: Mapping[str, Any] | None = None
    jwks_uri: str | None = None
    launch_url: str | None = None
    # Space-separated allowed scopes; None = no restriction.
    scopes: str | None = None
    backend: bool = False
    name: str = field(default="")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["redirect_uris"] = list(self.redirect_uris)
        return {k: v for k, v in data.items() if v is not None}

    def public_json(self) -> dict[str, Any]:
        """The registration without its secret (for listings)."""
        data = self.to_json()
        if "client_secret" in data:
            data["client_secret"] = "***"  # noqa: S105 - a mask, not a secret
        return data


def client_from_json(data: Mapping[str, Any]) -> Client:
    """Check one registration object; raises ValueError with a message a human can act on."""
    if not isinstance(data, Mapping):
        raise ValueError("a client registration must be a JSON object")
    client_id = data.get("client_id")
    if not isinstance(client_id, str) or not client_id:
        raise ValueError("client_id is required")
    ctype = data.get("type", "public")
    if ctype not in CLIENT_TYPES:
        raise ValueError(f"type must be one of {CLIENT_TYPES}")
    redirect_uris = data.get("redirect_uris", [])
    if not isinstance(redirect_uris, list) or not all(isinstance(u, str) for u in redirect_uris):
        raise ValueError("redirect_uris must be a list of strings")
    secret = data.get("client_secret")
    if ctype == "confidential-symmetric" and not (isinstance(secret, str) and secret):
        raise ValueError("a confidential-symmetric client needs client_secret")
    jwks = data.get("jwks")
    jwks_uri = data.get("jwks_uri")
    if ctype == "confidential-asymmetric":
        if jwks is None and not jwks_uri:
            raise ValueError("a confidential-asymmetric client needs jwks or jwks_uri")
        if jwks is not None and not (
            isinstance(jwks, Mapping) and isinstance(jwks.get("keys"), list)
        ):
            raise ValueError('jwks must look like {"keys": [...]}')
    backend = data.get("backend", False)
    if not isinstance(backend, bool):
        raise ValueError("backend must be a boolean")
    if backend and ctype != "confidential-asymmetric":
        # SMART Backend Services authenticates with private_key_jwt only.
        raise ValueError("backend clients must be confidential-asymmetric")
    scopes = data.get("scopes")
    if scopes is not None and not isinstance(scopes, str):
        raise ValueError("scopes must be a space-separated string")
    launch_url = data.get("launch_url")
    if launch_url is not None and not isinstance(launch_url, str):
        raise ValueError("launch_url must be a string")
    return Client(
        client_id=client_id,
        type=ctype,
        redirect_uris=tuple(redirect_uris),
        client_secret=secret if isinstance(secret, str) else None,
        jwks=dict(jwks) if jwks is not None else None,
        jwks_uri=jwks_uri if isinstance(jwks_uri, str) else None,
        launch_url=launch_url,
        scopes=scopes,
        backend=backend,
        name=str(data.get("name", client_id)),
    )


def load_clients_file(path: Path) -> list[dict[str, Any]]:
    """Registrations from a JSON list, or a TOML file with `[[clients]]` tables."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        data: Any = tomllib.loads(text).get("clients", [])
    else:
        data = json.loads(text)
        if isinstance(data, dict):
            data = data.get("clients", [data])
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of client registrations")
    return [dict(item) for item in data]
