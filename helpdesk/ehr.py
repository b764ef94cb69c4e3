"""Bridges the store and ``smart_launch``: registrations, discovery, token storage, clients.

``smart_launch`` knows nothing of our database; this module turns rows into its config
types, keeps one discovery cache and one ``requests.Session`` per registration, and stores
token sets encrypted in ``LaunchSession`` rows.
"""

from __future__ import annotations

import threading
from typing import Any

import requests
from flask import Flask, current_app, url_for
from sqlalchemy import update

from helpdesk.crypto import Vault, get_vault
from helpdesk.db import get_store
from helpdesk.kv import get_redis
from helpdesk.models import EhrRegistration, LaunchSession
from smart_launch.config import Registration, SigningKey
from smart_launch.discovery import DiscoveryCache, SmartConfiguration, discover
from smart_launch.fhir import FhirClient
from smart_launch.refresh import token_callbacks
from smart_launch.tokens import TokenSet

EXTENSION = "caredesk.ehr"


class EhrClients:
    """Per-app shared state: discovery cache and pooled HTTP sessions per registration."""

    def __init__(self) -> None:
        self.discovery = DiscoveryCache()
        self._sessions: dict[int, requests.Session] = {}
        self._lock = threading.Lock()

    def http(self, registration_id: int) -> requests.Session:
        with self._lock:
            session = self._sessions.get(registration_id)
            if session is None:
                session = requests.Session()
                adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                session.headers["User-Agent"] = "CareDesk/0.1 (SMART on FHIR)"
                self._sessions[registration_id] = session
            return session

    def after_fork(self) -> None:
        """In a forked child: forget (do not close) the parent's pooled sockets."""
        self._lock = threading.Lock()
        self._sessions = {}

    def close(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION] = EhrClients()


def clients(app: Flask | None = None) -> EhrClients:
    found: EhrClients = (app or current_app).extensions[EXTENSION]
    return found


def redirect_uri(app: Flask | None = None) -> str:
    app = app or current_app
    public = app.config.get("PUBLIC_URL")
    if public:
        return str(public).rstrip("/") + "/callback"
    return url_for("launch.callback", _external=True)


def to_registration(
    row: EhrRegistration, *, vault: Vault | None = None, redirect: str | None = None
) -> Registration:
    vault = vault or get_vault()
    keys = tuple(
        SigningKey(kid=k.kid, alg=k.alg, private_pem=vault.decrypt(k.private_key_enc))  # type: ignore[arg-type]
        for k in sorted(row.signing_keys, key=lambda k: (k.retired_at is not None, -k.id))
    )
    return Registration(
        id=str(row.id),
        iss=row.iss,
        client_id=row.client_id,
        client_type=row.client_type,  # type: ignore[arg-type]
        scopes=row.scopes,
        redirect_uri=redirect or redirect_uri(),
        client_secret=vault.decrypt_optional(row.client_secret_enc),
        signing_keys=keys,
        backend_client_id=row.backend_client_id,
        backend_scopes=row.backend_scopes,
        frame_origins=tuple(row.frame_origins or ()),
    )


def configuration(reg: Registration) -> SmartConfiguration:
    """Discovery for a registered EHR only (never a URL from a request), cached."""
    shared = clients()
    return discover(reg, http=shared.http(int(reg.id)), cache=shared.discovery)


class DbTokenStore:
    """``smart_launch.refresh.TokenStore`` over encrypted ``LaunchSession.token_set_enc``."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def load(self, grant_id: str) -> TokenSet | None:
        with get_store(self.app).session() as session:
            row = session.get(LaunchSession, grant_id)
            if row is None or row.token_set_enc is None:
                return None
            return TokenSet.from_json(get_vault(self.app).decrypt(row.token_set_enc))

    def save(self, grant_id: str, token_set: TokenSet) -> None:
        # One UPDATE: the old and the new refresh token are never both stored.
        with get_store(self.app).session() as session:
            session.execute(
                update(LaunchSession)
                .where(LaunchSession.id == grant_id)
                .values(
                    token_set_enc=get_vault(self.app).encrypt(token_set.to_json()),
                    access_expires_at=token_set.expires_at,
                    has_refresh_token=token_set.refresh_token is not None,
                    scope_granted=token_set.scope_granted,
                )
            )


def fhir_client(launch: LaunchSession, reg: Registration, conf: SmartConfiguration) -> FhirClient:
    """A FHIR client for one launch, refreshing its token (serialized) when needed."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    http = clients(app).http(int(reg.id))
    token, on_unauthorized = token_callbacks(
        launch.id,
        reg,
        conf,
        store=DbTokenStore(app),
        redis=get_redis(app),
        http=http,
    )
    return FhirClient(reg.fhir_base, token, session=http, on_unauthorized=on_unauthorized)


def public_jwks(rows: list[Any]) -> dict[str, Any]:
    return {"keys": [dict(k.public_jwk) for k in rows]}
