"""SMART Backend Services: client_credentials with private_key_jwt, for jobs that run
after the user has gone.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import requests
from authlib.oauth2.auth import ClientAuth
from cachetools import LRUCache

from ._cache import TtlCache
from ._token_endpoint import SmartPrivateKeyJWT, client_assertion, post_token, signing_key_for
from .config import Registration
from .discovery import SmartConfiguration
from .errors import BackendClientRejected, ClientRejected, NoBackendClient
from .scopes import translate
from .tokens import TokenSet

__all__ = ["BackendTokenCache", "backend_token", "client_assertion"]


CacheKey = tuple[str, str, str]


class BackendTokenCache:
    """Thread-safe, bounded per-(registration, client, scope) cache of backend access
    tokens.

    A token is reused until its refresh margin before expiry (``margin``, default the
    token's own: a tenth of its lifetime, at most a minute), so a job never starts a FHIR
    call with a token that dies mid-request, and a 60-second token is not refetched for
    every job.
    """

    def __init__(self, *, margin: timedelta | None = None, maxsize: int = 256) -> None:
        self.margin = margin
        self._tokens: TtlCache[CacheKey, TokenSet] = TtlCache(maxsize=maxsize)
        self._lock = threading.Lock()
        # One lock per key so threads of one worker share one token request; bounded like
        # the tokens (a lock evicted while held stays valid for its holder).
        self._fetch_locks: LRUCache[CacheKey, threading.Lock] = LRUCache(maxsize=maxsize)

    def get(self, key: CacheKey, now: datetime) -> TokenSet | None:
        return self._tokens.get(key, now=now)

    def put(self, key: CacheKey, token: TokenSet) -> None:
        margin = token.refresh_margin() if self.margin is None else self.margin
        self._tokens.put(key, token, expires_at=token.expires_at - margin)

    def fetch_lock(self, key: CacheKey) -> threading.Lock:
        with self._lock:
            lock = self._fetch_locks.get(key)
            if lock is None:
                lock = self._fetch_locks[key] = threading.Lock()
            return lock

    def clear(self) -> None:
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
            ehr_text=exc.ehr_text,
            status=exc.status,
        ) from exc
    return TokenSet.from_response(body, scope_requested=scope, now=now or datetime.now(UTC))
