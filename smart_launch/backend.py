"""SMART Backend Services: client_credentials with private_key_jwt, for jobs that run
after the user has gone.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import requests
from authlib.oauth2.auth import ClientAuth

from ._token_endpoint import SmartPrivateKeyJWT, client_assertion, post_token, signing_key_for
from .config import Registration
from .discovery import SmartConfiguration
from .errors import BackendClientRejected, ClientRejected, NoBackendClient
from .scopes import translate
from .tokens import TokenSet

__all__ = ["BackendTokenCache", "backend_token", "client_assertion"]


class BackendTokenCache:
    """Thread-safe per-(registration, client, scope) cache of backend access tokens.

    Tokens are reused until ``margin`` before expiry so a job never starts a FHIR call
    with a token that dies mid-request.
    """

    def __init__(self, *, margin: timedelta = timedelta(seconds=60)) -> None:
        self.margin = margin
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, str], TokenSet] = {}
        self._fetch_locks: dict[tuple[str, str, str], threading.Lock] = {}

    def get(self, key: tuple[str, str, str], now: datetime) -> TokenSet | None:
        with self._lock:
            token = self._tokens.get(key)
        if token is None or token.expires_soon(now, self.margin):
            return None
        return token

    def put(self, key: tuple[str, str, str], token: TokenSet) -> None:
        with self._lock:
            self._tokens[key] = token

    def fetch_lock(self, key: tuple[str, str, str]) -> threading.Lock:
        with self._lock:
            return self._fetch_locks.setdefault(key, threading.Lock())

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


def backend_token(
    reg: Registration,
    conf: SmartConfiguration,
    *,
    http: requests.Session,
    cache: BackendTokenCache | None = None,
    now: datetime | None = None,
) -> TokenSet:
    """A client_credentials access token for ``reg.backend_client_id`` (cached)."""
    if not reg.backend_client_id or not reg.signing_keys:
        raise NoBackendClient("No backend-services client is registered for this EHR.")
    scope = translate(reg.backend_scopes or "system/*.rs", v2="permission-v2" in conf.capabilities)
    key = (reg.id, reg.backend_client_id, scope)
    if cache is not None:
        hit = cache.get(key, now or datetime.now(UTC))
        if hit is not None:
            return hit
        # One fetch per key at a time: threads of one worker share the new token.
        with cache.fetch_lock(key):
            hit = cache.get(key, now or datetime.now(UTC))
            if hit is not None:
                return hit
            token = _fetch(reg, conf, scope, http=http, now=now)
            cache.put(key, token)
            return token
    return _fetch(reg, conf, scope, http=http, now=now)


def _fetch(
    reg: Registration,
    conf: SmartConfiguration,
    scope: str,
    *,
    http: requests.Session,
    now: datetime | None,
) -> TokenSet:
    client_id = reg.backend_client_id or ""
    signing_key = signing_key_for(reg.signing_keys, conf)
    auth = ClientAuth(client_id, None, SmartPrivateKeyJWT(signing_key))
    form = {"grant_type": "client_credentials", "scope": scope}
    try:
        body = post_token(http, conf, form, auth)
    except ClientRejected as exc:
        raise BackendClientRejected(
            "The EHR refused CareDesk's backend-services client "
            f"({exc.error or 'HTTP ' + str(exc.status)}). Check the backend client id, its "
            "key and its scopes here and in the EHR.",
            error=exc.error,
            error_description=exc.ehr_text,
            status=exc.status,
        ) from exc
    return TokenSet.from_response(body, scope_requested=scope, now=now or datetime.now(UTC))
