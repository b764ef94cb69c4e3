"""Serialized refresh: web workers and RQ workers share grants, and a rotated refresh
token must be used exactly once, so every refresh of one grant runs under a Redis lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import redis as redis_lib
import requests

from . import launch
from .config import Registration
from .discovery import SmartConfiguration
from .errors import NeedsAuthorization, RefreshBusy
from .tokens import TokenSet

log = logging.getLogger(__name__)

# Longer than one token request (15 s timeout) plus id_token JWKS fetch, so the lock
# does not lapse mid-refresh and let a second worker spend the same refresh token.
LOCK_TIMEOUT = 45.0
LOCK_WAIT = 50.0


class TokenStore(Protocol):
    def load(self, grant_id: str) -> TokenSet | None: ...

    def save(self, grant_id: str, token_set: TokenSet) -> None: ...


def lock_name(grant_id: str) -> str:
    return f"caredesk:refresh:{grant_id}"


@dataclass(frozen=True)
class Grant:
    """One stored grant and what renewing it takes: its registration and SMART
    configuration, the store that holds its tokens, the Redis whose lock serializes its
    refreshes, and the HTTP session to the token endpoint."""

    grant_id: str
    reg: Registration
    conf: SmartConfiguration
    store: TokenStore
    redis: redis_lib.Redis
    http: requests.Session


def refresh_serialized(
    grant: Grant,
    *,
    now: datetime | None = None,
    rejected_access_token: str | None = None,
    margin: timedelta | None = None,
) -> TokenSet:
    """Refresh the grant unless someone else just did; return the current TokenSet.

    Without ``rejected_access_token`` a refresh happens only if the stored token expires
    within ``margin`` (default: the token's own :meth:`TokenSet.refresh_margin`, a share
    of its lifetime). With it (the server answered 401 to that token) a refresh happens
    unless the stored token is already a different one.

    The server's answer is saved the moment it is accepted, before the refreshed
    id_token is checked (see :func:`smart_launch.launch.refresh`): with a server that
    rotates refresh tokens, the old one is already dead, and losing the new one would
    end the grant.
    """
    grant_id, store = grant.grant_id, grant.store
    before = store.load(grant_id)
    lock = grant.redis.lock(lock_name(grant_id), timeout=LOCK_TIMEOUT, blocking_timeout=LOCK_WAIT)
    if not lock.acquire():
        raise RefreshBusy("The EHR session is being renewed elsewhere; try again shortly.")
    try:
        # Reload under the lock: the worker that held it before us may have rotated it.
        current = store.load(grant_id)
        if current is None:
            raise NeedsAuthorization("The EHR session has ended. Launch CareDesk again.")
        check_time = now or datetime.now(UTC)
        if before is not None and current.access_token != before.access_token:
            # Another worker refreshed while we waited for the lock: use its result
            # (even if it is "expiring soon" again, as very short-lived tokens are).
            return current
        if rejected_access_token is not None:
            if current.access_token != rejected_access_token:
                return current
        elif not current.expires_soon(check_time, margin):
            return current
        saved: list[TokenSet] = []

        def keep(accepted: TokenSet) -> None:
            store.save(grant_id, accepted)
            saved.append(accepted)

        fresh = launch.refresh(
            grant.reg, grant.conf, current, http=grant.http, now=now, on_accepted=keep
        )
        if not saved or fresh is not saved[-1]:
            # The refreshed id_token verified: store the identity it carries too.
            store.save(grant_id, fresh)
        log.info("grant %s refreshed; expires %s", grant_id, fresh.expires_at.isoformat())
        return fresh
    finally:
        try:
            lock.release()
        except redis_lib.exceptions.LockError:
            # The lock lapsed (a very slow token endpoint); nothing left to release.
            log.warning("refresh lock for grant %s expired before release", grant_id)


def ensure_fresh(
    grant: Grant, *, now: datetime | None = None, margin: timedelta | None = None
) -> TokenSet:
    """The grant's TokenSet, refreshed first when it expires within ``margin`` (default:
    the token's own refresh margin, a tenth of its lifetime, at most a minute)."""
    current = grant.store.load(grant.grant_id)
    if current is None:
        raise NeedsAuthorization("The EHR session has ended. Launch CareDesk again.")
    if not current.expires_soon(now or datetime.now(UTC), margin):
        return current
    if not current.refresh_token:
        raise NeedsAuthorization("The EHR session has expired. Launch CareDesk again.")
    return refresh_serialized(grant, now=now, margin=margin)


def token_callbacks(
    grant: Grant, *, current: TokenSet | None = None
) -> tuple[Callable[[], str], Callable[[], str]]:
    """``(token, on_unauthorized)`` for :class:`smart_launch.fhir.FhirClient`.

    A client serves one page or one job: the token set loaded (and decrypted) for its
    first request is kept for the next ones until it is due for a refresh, instead of
    one store read and decryption per FHIR request (a 300-row board makes six).
    ``current``: the grant's token set as the caller already holds it (the callback, the
    moment the token response arrived), so even the first request reads nothing from the
    store; it must be the one the store holds, which a refresh then replaces."""
    last: dict[str, str] = {}
    held: list[TokenSet] = []
    if current is not None:
        held.append(current)
        last["access_token"] = current.access_token

    def token() -> str:
        if held and not held[0].expires_soon(datetime.now(UTC)):
            return last["access_token"]
        current = ensure_fresh(grant)
        held[:] = [current]
        last["access_token"] = current.access_token
        return current.access_token

    def on_unauthorized() -> str:
        rejected = last.get("access_token")
        if rejected is None:
            stored = grant.store.load(grant.grant_id)
            rejected = stored.access_token if stored else None
        fresh = refresh_serialized(grant, rejected_access_token=rejected or "")
        held[:] = [fresh]
        last["access_token"] = fresh.access_token
        return fresh.access_token

    return token, on_unauthorized
