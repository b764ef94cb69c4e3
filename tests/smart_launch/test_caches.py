"""The package's caches (discovery, JWKS, backend tokens) are bounded, thread-safe and
keep each entry as long as its own lifetime says."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import requests

from smart_launch._cache import TtlCache
from smart_launch.backend import BackendTokenCache
from smart_launch.config import Registration
from smart_launch.discovery import DiscoveryCache, SmartConfiguration, discover
from smart_launch.launch import JwksCache
from smart_launch.tokens import TokenSet
from tests.smart_launch.httpfake import FakeServer, Response

TZ = timezone(timedelta(hours=-3))


def conf(base: str) -> SmartConfiguration:
    return SmartConfiguration(
        fhir_base=base, issuer=None, authorization_endpoint="a", token_endpoint="t"
    )


def test_discovery_entry_lives_as_long_as_its_cache_headers_say_within_bounds() -> None:
    cache = DiscoveryCache(minimum=60, ceiling=3600)
    now = datetime.now(TZ)
    cache.put("a", conf("a"), {"Cache-Control": "max-age=120"}, now=now)
    cache.put("b", conf("b"), {"Cache-Control": "max-age=99999999"}, now=now)
    cache.put("c", conf("c"), {"Cache-Control": "no-store"}, now=now)
    assert cache.get("a", now=now + timedelta(seconds=119)) is not None
    assert cache.get("a", now=now + timedelta(seconds=121)) is None
    assert cache.expires_at("b") == (now + timedelta(seconds=3600)).astimezone(UTC)
    assert cache.get("c", now=now + timedelta(seconds=59)) is not None


def test_discovery_cache_is_bounded_least_recently_used_first(
    fake: FakeServer, http: requests.Session
) -> None:
    fake.route(
        "GET",
        "/fhir/.well-known/smart-configuration",
        Response(200, {"authorization_endpoint": "/a", "token_endpoint": "/t"}),
    )
    reg = Registration(
        id="1", iss=f"{fake.base_url}/fhir", client_id="c", client_type="public", scopes="x"
    )
    cache = DiscoveryCache(maxsize=2)
    cache.put("other-1", conf("o1"), {})
    cache.put("other-2", conf("o2"), {})
    discover(reg, http=http, cache=cache)
    discover(reg, http=http, cache=cache)
    assert len(fake.hits("/fhir/.well-known/smart-configuration")) == 1
    # Two entries at most: the least recently used one went.
    assert cache.get("other-1") is None and cache.get("other-2") is not None


def test_backend_token_is_reused_until_a_tenth_of_its_lifetime_before_expiry() -> None:
    cache = BackendTokenCache()
    now = datetime.now(TZ)
    token = TokenSet("a", "Bearer", now + timedelta(seconds=60), "", "", issued_at=now)
    key = ("r1", "jobs", "system/Patient.rs")
    cache.put(key, token)
    # A 60-second token serves every job for 54 seconds, not none of them.
    assert cache.get(key, now + timedelta(seconds=53)) is token
    assert cache.get(key, now + timedelta(seconds=55)) is None


def test_backend_token_cache_and_its_fetch_locks_are_bounded() -> None:
    cache = BackendTokenCache(maxsize=3)
    now = datetime.now(TZ)
    for i in range(10):
        key = (str(i), "jobs", "s")
        cache.put(key, TokenSet(str(i), "Bearer", now + timedelta(hours=1), "", "", issued_at=now))
        assert cache.fetch_lock(key) is cache.fetch_lock(key)
    assert len(cache._tokens) == 3 and len(cache._fetch_locks) == 3
    assert cache.get(("9", "jobs", "s"), now) is not None
    assert cache.get(("0", "jobs", "s"), now) is None


def test_jwks_cache_is_bounded() -> None:
    assert JwksCache(maxsize=5)._sets.maxsize == 5


def test_ttl_cache_survives_many_threads() -> None:
    cache: TtlCache[int, int] = TtlCache(maxsize=16)
    errors: list[BaseException] = []
    later = datetime.now(UTC) + timedelta(minutes=5)

    def hammer(offset: int) -> None:
        try:
            for i in range(3000):
                key = (i + offset) % 40
                cache.put(key, i, expires_at=later)
                cache.get(key)
                if i % 7 == 0:
                    cache.pop(key)
        except BaseException as exc:  # any exception from the cache is the failure
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(cache) <= 16
