"""Everything the sandbox remembers: data, clients, grants, knobs, the request log.

One `SandboxState` per app, kept in `app.extensions["sandbox"]`. All mutation goes
through its lock (the server is threaded). With a data dir, writes, runtime clients,
grants and the signing key survive a restart.

The sandbox keeps its own clock (`now()`): the wall clock plus an offset that tests move
forward (`POST /admin/clock`) instead of sleeping until a token expires. It decides the
life of everything the sandbox issued (launches, sign-in pages, codes, access and
refresh tokens). What the client makes (client assertions) and the timestamps inside the
JWTs the client checks stay on the wall clock, because the client's clock has not moved.
FHIR data does not move either.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from joserfc import jwk

from sandbox.clients import Client, client_from_json
from sandbox.options import PROFILES, Knobs, SandboxOptions, initial_knobs
from sandbox.store import FhirStore

log = logging.getLogger(__name__)

CODE_LIFETIME_S = 120
LAUNCH_LIFETIME_S = 600
PENDING_LIFETIME_S = 900


def sha(value: str) -> str:
    """Tokens are kept and logged only as hashes."""
    return hashlib.sha256(value.encode()).hexdigest()


class SandboxState:
    def __init__(self, options: SandboxOptions) -> None:
        if options.profile not in PROFILES:
            raise ValueError(f"unknown profile {options.profile!r}; known: {sorted(PROFILES)}")
        self.options = options
        self.profile = PROFILES[options.profile]
        self.lock = threading.RLock()
        self.tz = ZoneInfo(options.timezone)
        self.store = FhirStore(options.timezone)
        self.knobs: Knobs = initial_knobs(options)
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, dict[str, Any]] = {}
        self.grants: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.refresh: dict[str, dict[str, Any]] = {}
        self.launches: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, dict[str, Any]] = {}
        self.jtis: dict[str, float] = {}
        self.request_log: collections.deque[dict[str, Any]] = collections.deque(maxlen=200_000)
        self.counters: collections.Counter[str] = collections.Counter()
        self.fhir_request_count = 0
        self.generated_batches = 0
        self.clock_offset = 0.0
        self.data_dir = Path(options.data_dir) if options.data_dir else None
        if self.data_dir:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self.signing_key = self._load_signing_key()
        for data in options.clients:
            self.add_client(client_from_json(data), persist=False)
        self.load_population()
        self._replay()

    # -- keys

    def _load_signing_key(self) -> jwk.RSAKey:
        path = self.data_dir / "signing-key.json" if self.data_dir else None
        if path and path.exists():
            return jwk.RSAKey.import_key(json.loads(path.read_text(encoding="utf-8")))
        key = self.options.signing_key or jwk.RSAKey.generate_key(
            2048, parameters={"kid": secrets.token_hex(8)}
        )
        if path:
            path.write_text(json.dumps(key.as_dict(private=True)), encoding="utf-8")
            path.chmod(0o600)
        return key

    # -- the sandbox's clock

    def now(self) -> float:
        """Epoch seconds on the sandbox's clock (wall clock + the offset tests added)."""
        return time.time() + self.clock_offset

    def advance_clock(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self.lock:
            self.clock_offset += seconds
        self.save_grants()

    def reset_clock(self) -> None:
        """Back to the wall clock. What was issued meanwhile keeps its (later) expiry."""
        with self.lock:
            self.clock_offset = 0.0
        self.save_grants()

    def expire_access_tokens(self) -> int:
        """End every live access token now (refresh tokens stay); how many there were."""
        now = self.now()
        count = 0
        with self.lock:
            for token in self.tokens.values():
                if not token["revoked"] and token["exp"] > now:
                    token["exp"] = now
                    count += 1
        self.save_grants()
        return count

    # -- data

    def today(self) -> dt.date:
        return dt.datetime.now(self.tz).date()

    def population(self) -> Mapping[str, Any]:
        if self.options.population is not None:
            return self.options.population
        # Imported here: the sandbox may be started with its own data set and no fixtures.
        from fixtures.population import build_population

        return build_population(self.today(), tz=self.options.timezone, seed=self.options.seed)

    def load_population(self) -> None:
        from sandbox.data import epic_long_ids

        population = {k: [dict(r) for r in v] for k, v in self.population().items()}
        if self.profile.long_ids:
            population = epic_long_ids(population)
        self.store.clear()
        for resources in population.values():
            for res in resources:
                self.store.put(_with_meta(res))
        if self.options.extra_appointments:
            self.generate_appointments(self.today(), self.options.extra_appointments, None)

    def generate_appointments(self, day: dt.date, count: int, location: str | None) -> int:
        from sandbox.data import generated_appointments

        with self.lock:
            self.generated_batches += 1
            batch = self.generated_batches
        n = 0
        for res in generated_appointments(self, day, count, location, batch):
            self.store.put(_with_meta(res))
            n += 1
        return n

    # -- clients

    def add_client(self, client: Client, *, persist: bool = True) -> None:
        with self.lock:
            self.clients[client.client_id] = client
            if persist and self.data_dir:
                runtime = self._read_json("clients.json", [])
                runtime = [c for c in runtime if c.get("client_id") != client.client_id]
                runtime.append(client.to_json())
                self._write_json("clients.json", runtime)

    # -- grants and tokens (in memory; mirrored to grants.json with a data dir)

    def new_secret(self) -> str:
        return secrets.token_urlsafe(32)

    def save_grants(self) -> None:
        if not self.data_dir:
            return
        with self.lock:
            snapshot = {
                "codes": self.codes,
                "grants": self.grants,
                "tokens": self.tokens,
                "refresh": self.refresh,
                "launches": self.launches,
                "jtis": self.jtis,
                "clock_offset": self.clock_offset,
            }
            self._write_json("grants.json", snapshot)

    def expire_old(self) -> None:
        now = self.now()
        with self.lock:
            for table in (self.codes, self.launches, self.pending):
                for key in [k for k, v in table.items() if v["expires"] < now]:
                    del table[key]
            for key in [k for k, v in self.tokens.items() if v["exp"] < now - 3600]:
                del self.tokens[key]
            # Assertion jtis carry the client's (wall clock) exp.
            wall = time.time()
            for key in [k for k, v in self.jtis.items() if v < wall]:
                del self.jtis[key]

    def revoke_grant(self, grant_id: str) -> None:
        """Refresh token reuse or code reuse: everything issued under the grant dies."""
        with self.lock:
            grant = self.grants.get(grant_id)
            if grant:
                grant["revoked"] = True
            for token in self.tokens.values():
                if token.get("grant_id") == grant_id:
                    token["revoked"] = True
            for rt in self.refresh.values():
                if rt.get("grant_id") == grant_id:
                    rt["revoked"] = True
        self.save_grants()

    # -- writes journal

    def journal(self, entry: Mapping[str, Any]) -> None:
        if not self.data_dir:
            return
        with self.lock, (self.data_dir / "writes.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def _replay(self) -> None:
        if not self.data_dir:
            return
        for data in self._read_json("clients.json", []):
            self.add_client(client_from_json(data), persist=False)
        saved = self._read_json("grants.json", {})
        for name in ("codes", "grants", "tokens", "refresh", "launches", "jtis"):
            getattr(self, name).update(saved.get(name, {}))
        self.clock_offset = float(saved.get("clock_offset", 0.0))
        path = self.data_dir / "writes.jsonl"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                if entry["op"] == "put":
                    self.store.put(entry["resource"])
                elif entry["op"] == "generate":
                    self.generate_appointments(
                        dt.date.fromisoformat(entry["date"]), entry["count"], entry.get("location")
                    )

    def reset(self) -> None:
        """Initial data back, grants and launches gone, wall clock (clients and knobs stay)."""
        with self.lock:
            self.clock_offset = 0.0
            for table in (
                self.codes,
                self.grants,
                self.tokens,
                self.refresh,
                self.launches,
                self.pending,
                self.jtis,
            ):
                table.clear()
            self.generated_batches = 0
            if self.data_dir:
                for name in ("writes.jsonl", "grants.json"):
                    (self.data_dir / name).unlink(missing_ok=True)
            self.load_population()

    def _read_json(self, name: str, default: Any) -> Any:
        assert self.data_dir is not None
        path = self.data_dir / name
        if not path.exists():
            return default
        return json.loads(path.read_text(encoding="utf-8"))

    def _write_json(self, name: str, data: Any) -> None:
        assert self.data_dir is not None
        path = self.data_dir / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(path)

    # -- request log and counters

    def log_request(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.request_log.append(entry)

    def requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.request_log)

    def count(self, name: str) -> None:
        with self.lock:
            self.counters[name] += 1

    def iter_clients(self) -> Iterator[Client]:
        with self.lock:
            yield from list(self.clients.values())


def _with_meta(resource: Mapping[str, Any]) -> dict[str, Any]:
    """Give a loaded resource meta.versionId/lastUpdated unless it has them already."""
    res = dict(resource)
    meta = dict(res.get("meta") or {})
    meta.setdefault("versionId", "1")
    meta.setdefault("lastUpdated", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    res["meta"] = meta
    return res
