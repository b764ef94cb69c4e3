"""One bounded, thread-safe cache with a lifetime per entry, for the three caches of this
package (discovery, JWKS, backend tokens).

cachetools' ``TLRUCache`` keeps the entries, evicts the least recently used beyond
``maxsize`` and drops expired ones; each entry's expiry is an absolute time given at
``put`` (a discovery document's from its Cache-Control, a token's from its lifetime).
cachetools is not thread-safe, so every access holds a lock. ``get`` also compares with
the caller's ``now``, so a caller with its own clock (a test, a job replaying a time)
sees the same expiry as the wall clock would.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Generic, TypeVar

from cachetools import TLRUCache

K = TypeVar("K")
V = TypeVar("V")


def _expiry(_key: object, value: tuple[float, object], _now: float) -> float:
    return value[0]


def _wall_clock() -> float:
    return datetime.now(UTC).timestamp()


class TtlCache(Generic[K, V]):
    def __init__(self, *, maxsize: int) -> None:
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._entries: TLRUCache[K, tuple[float, V]] = TLRUCache(
            maxsize=maxsize, ttu=_expiry, timer=_wall_clock
        )

    def get(self, key: K, *, now: datetime | None = None) -> V | None:
        moment = (now or datetime.now(UTC)).timestamp()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= moment:
                self._entries.pop(key, None)
                return None
            return entry[1]

    def expires_at(self, key: K) -> datetime | None:
        with self._lock:
            entry = self._entries.get(key)
        return datetime.fromtimestamp(entry[0], UTC) if entry else None

    def put(self, key: K, value: V, *, expires_at: datetime) -> None:
        with self._lock:
            self._entries[key] = (expires_at.timestamp(), value)

    def pop(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            self._entries.expire()
            return len(self._entries)
