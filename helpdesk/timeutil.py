"""Aware time for the whole app: nothing here returns a naive datetime."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are refused rather than guessed: they are a bug at the call site."""
    if value.tzinfo is None:
        raise ValueError("naive datetime; pass an aware datetime")
    return value.astimezone(UTC)
