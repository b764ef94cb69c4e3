"""The one Redis connection of a process: RQ's queues (and their job heartbeats), the
token-refresh lock, rate limits. ``CAREDESK_REDIS_URL`` names it.

Only the demo and the tests may run without Redis: they get an in-process fakeredis (the
demo's jobs then die with the process). Anywhere else a missing ``CAREDESK_REDIS_URL``
stops the web app and the worker at start-up instead of quietly giving every process its
own private queue; a one-shot command that never touches Redis (``caredesk ehr check``,
``caredesk db upgrade``) still runs, and fails naming the variable if it does need it.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import Flask, current_app

from helpdesk.errors import ConfigError

EXTENSION = "caredesk.redis"
TOY_ENVIRONMENTS = ("demo", "test")
MISSING = (
    "CAREDESK_REDIS_URL is not set. CareDesk needs Redis for its jobs, locks and rate "
    "limits (e.g. redis://127.0.0.1:6379/0); only `caredesk demo` and the tests run on an "
    "in-process stand-in."
)


@dataclass(frozen=True)
class Kv:
    connection: redis.Redis
    embedded: bool

    @property
    def backend(self) -> str:
        return "fakeredis (embedded, in-process)" if self.embedded else "redis"

    def ping(self) -> bool:
        return bool(self.connection.ping())


def connect(url: str | None, env: str) -> Kv:
    """Redis at ``url``; without one, the in-process stand-in where ``env`` allows it."""
    if url:
        return Kv(redis.Redis.from_url(url), embedded=False)
    if env not in TOY_ENVIRONMENTS:
        raise ConfigError(MISSING)
    import fakeredis  # the demo's and the tests' stand-in only

    return Kv(fakeredis.FakeRedis(server=fakeredis.FakeServer()), embedded=True)


def init_app(app: Flask, *, required: bool = True) -> None:
    """Connect (lazily: redis-py opens sockets on first use). With ``required`` false a
    missing URL is remembered and reported by ``get_kv`` when something needs Redis."""
    try:
        app.extensions[EXTENSION] = connect(app.config.get("REDIS_URL"), str(app.config["ENV"]))
    except ConfigError:
        if required:
            raise
        app.extensions[EXTENSION] = None


def get_kv(app: Flask | None = None) -> Kv:
    kv: Kv | None = (app or current_app).extensions[EXTENSION]
    if kv is None:
        raise ConfigError(MISSING)
    return kv


def get_redis(app: Flask | None = None) -> redis.Redis:
    return get_kv(app).connection
