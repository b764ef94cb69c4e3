"""Bridges the store and ``smart_launch``: registrations, discovery, token storage, clients.

``smart_launch`` knows nothing of our database; this module turns rows into its config
types, keeps one discovery cache and one ``requests.Session`` per registration, and stores
token sets encrypted in ``LaunchSession`` rows.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

import requests
from flask import Flask, current_app, url_for
from requests.sessions import merge_setting
from requests.utils import get_environ_proxies
from sqlalchemy import update

from helpdesk.crypto import Vault, get_vault
from helpdesk.db import get_store
from helpdesk.kv import get_redis
from helpdesk.models import EhrRegistration, LaunchSession
from smart_launch.backend import BackendTokenCache, backend_token
from smart_launch.config import Alg, Registration, SigningKey
from smart_launch.discovery import DiscoveryCache, SmartConfiguration, discover
from smart_launch.errors import NeedsAuthorization, NoBackendClient
from smart_launch.fhir import OWN_CREDENTIALS, FhirClient
from smart_launch.refresh import Grant, token_callbacks
from smart_launch.tokens import TokenSet

EXTENSION = "caredesk.ehr"
# requests' own rule for a request's setting over the session's (untyped there).
_merge = cast(Callable[[Any, Any], Any], merge_setting)


class _EhrSession(requests.Session):
    """A ``requests.Session`` that reads the proxy settings of the environment once per
    host instead of on every request, and never consults ``~/.netrc`` (``OWN_CREDENTIALS``).

    requests looks up ``*_proxy``/``no_proxy`` for each request, scanning the whole process
    environment several times: a quarter of the client's own cost of a FHIR request in a
    profile of survey write-back jobs (issue 16). The environment does not change while
    the process runs, so each host's answer is kept; the rest of requests' merging (the
    CA bundle variables, the session's own settings) is done as requests does it.
    """

    def __init__(self) -> None:
        super().__init__()
        # The session's default auth: requests uses it when a request names none, and
        # looks up ~/.netrc only when neither does.
        self.auth = OWN_CREDENTIALS
        self._env_proxies: dict[tuple[str, str, str | None], dict[str, str]] = {}

    def merge_environment_settings(  # type: ignore[override]
        self,
        url: str,
        proxies: dict[str, str] | None,
        stream: bool | None,
        verify: Any,
        cert: Any,
    ) -> dict[str, Any]:
        if not self.trust_env or proxies is None:
            return dict(super().merge_environment_settings(url, proxies, stream, verify, cert))
        no_proxy = proxies.get("no_proxy")
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, no_proxy)
        found = self._env_proxies.get(key)
        if found is None:
            found = get_environ_proxies(url, no_proxy=no_proxy)
            if len(self._env_proxies) < 64:  # a few EHR hosts; never grows without bound
                self._env_proxies[key] = found
        for name, value in found.items():
            proxies.setdefault(name, value)
        # The rest as requests does it with trust_env (the CA bundle variables are two
        # dictionary reads); the session is shared by threads, so nothing on it changes.
        if verify is True or verify is None:
            verify = (
                os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or verify
            )
        return {
            "proxies": _merge(proxies, self.proxies),
            "stream": _merge(stream, self.stream),
            "verify": _merge(verify, self.verify),
            "cert": _merge(cert, self.cert),
        }


class EhrClients:
    """Per-app shared state: discovery cache and pooled HTTP sessions per registration."""

    def __init__(self) -> None:
        self.discovery = DiscoveryCache()
        # A backend token serves every job of a registration until it is about to expire,
        # instead of one token request per job.
        self.backend_tokens = BackendTokenCache()
        self._sessions: dict[int, requests.Session] = {}
        self._lock = threading.Lock()

    def http(self, registration_id: int) -> requests.Session:
        with self._lock:
            session = self._sessions.get(registration_id)
            if session is None:
                session = _EhrSession()
                adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                session.headers["User-Agent"] = "CareDesk/0.1 (SMART on FHIR)"
                self._sessions[registration_id] = session
            return session

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


class _SealedKey(SigningKey):
    """A registration's signing key as the store keeps it: decrypted each time it signs
    (a token request), so a job whose backend token is cached decrypts no private key at
    all (one decryption per job before, issue 16), and no decrypted key outlives its
    signature. ``private_pem`` is left empty: ``pem()`` is how a key is read."""

    _sealed: bytes
    _vault: Vault

    def __init__(self, kid: str, alg: Alg, sealed: bytes, vault: Vault) -> None:
        super().__init__(kid=kid, alg=alg, private_pem="")
        object.__setattr__(self, "_sealed", sealed)
        object.__setattr__(self, "_vault", vault)

    def pem(self) -> str:
        return self._vault.decrypt(self._sealed)


def to_registration(
    row: EhrRegistration,
    *,
    vault: Vault | None = None,
    web: bool = False,
    app: Flask | None = None,
) -> Registration:
    """The smart_launch view of a registration row. Only the web (``web=True``: it sends
    a browser to the EHR and back) has a redirect URI; jobs and the CLI never redirect."""
    vault = vault or get_vault(app)
    keys = tuple(
        _SealedKey(k.kid, k.alg, k.private_key_enc, vault)  # type: ignore[arg-type]
        for k in sorted(row.signing_keys, key=lambda k: (k.retired_at is not None, -k.id))
    )
    return Registration(
        id=str(row.id),
        iss=row.iss,
        client_id=row.client_id,
        client_type=row.client_type,  # type: ignore[arg-type]
        scopes=row.scopes,
        redirect_uri=redirect_uri(app) if web else None,
        client_secret=vault.decrypt_optional(row.client_secret_enc),
        signing_keys=keys,
        backend_client_id=row.backend_client_id,
        backend_scopes=row.backend_scopes,
        frame_origins=tuple(row.frame_origins or ()),
    )


def configuration(reg: Registration, app: Flask | None = None) -> SmartConfiguration:
    """Discovery for a registered EHR only (never a URL from a request), cached."""
    shared = clients(app)
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


_NOTHING_TO_ACT_WITH = (
    "No backend-services client is registered for this EHR and there is no launch with a "
    "refresh token to act on."
)


def fhir_client(
    app: Flask,
    row: EhrRegistration,
    *,
    launch: LaunchSession | None = None,
    as_user: bool = False,
    token_set: TokenSet | None = None,
) -> FhirClient:
    """The one way CareDesk gets a FHIR client: for the web, the jobs and the CLI.

    ``as_user`` (the web): on behalf of the person of ``launch``, with that launch's
    token set, refreshed when due (serialised across processes by a Redis lock);
    ``token_set`` is that set when the caller holds it already (the callback that just
    stored it), so the first request does not read and decrypt it again.

    Otherwise on behalf of CareDesk itself (jobs, sweeps, the CLI): SMART Backend
    Services where the registration has a backend client and a key; failing that, the
    refresh token of ``launch`` (the launch a task was queued from: its user has left);
    failing that, ``NeedsAuthorization`` (``NoBackendClient`` when there was nothing to
    try, raised before any request).
    """
    reg = to_registration(row, vault=get_vault(app), web=as_user, app=app)
    has_backend = bool(reg.backend_client_id and reg.signing_keys)
    if not as_user and not has_backend and (launch is None or launch.token_set_enc is None):
        # Nothing to act with: said before any request (a sweep over every EHR skips this
        # one in a line, it does not try the EHR's discovery first).
        raise NoBackendClient(_NOTHING_TO_ACT_WITH)
    shared = clients(app)
    http = shared.http(row.id)
    conf = discover(reg, http=http, cache=shared.discovery)
    if as_user:
        if launch is None:
            raise ValueError("a user's FHIR client needs the launch")
        return _launch_client(app, launch.id, reg, conf, http, check_now=False, current=token_set)
    backend_error: NeedsAuthorization | None = None
    if has_backend:
        try:
            backend_token(reg, conf, http=http, cache=shared.backend_tokens)
        except NeedsAuthorization as exc:
            backend_error = exc
        else:

            def token() -> str:
                return backend_token(reg, conf, http=http, cache=shared.backend_tokens).access_token

            def renew() -> str:
                # A 401 with a cached token: the EHR revoked or forgot it; fetch anew.
                shared.backend_tokens.clear()
                return token()

            return FhirClient(reg.fhir_base, token, session=http, on_unauthorized=renew)
    if launch is not None and launch.token_set_enc is not None:
        # NeedsAuthorization now rather than halfway through a job.
        return _launch_client(app, launch.id, reg, conf, http, check_now=True)
    raise backend_error or NoBackendClient(_NOTHING_TO_ACT_WITH)


def _launch_client(
    app: Flask,
    launch_id: str,
    reg: Registration,
    conf: SmartConfiguration,
    http: requests.Session,
    *,
    check_now: bool,
    current: TokenSet | None = None,
) -> FhirClient:
    token, on_unauthorized = token_callbacks(
        Grant(launch_id, reg, conf, store=DbTokenStore(app), redis=get_redis(app), http=http),
        current=current,
    )
    if check_now:
        token()
    return FhirClient(reg.fhir_base, token, session=http, on_unauthorized=on_unauthorized)


def public_jwks(rows: list[Any]) -> dict[str, Any]:
    return {"keys": [dict(k.public_jwk) for k in rows]}
