"""Running a sweep over every registered EHR (reminders, surveys)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from flask import Flask
from sqlalchemy import select

from helpdesk.db import get_store
from helpdesk.models import EhrRegistration

log = logging.getLogger("caredesk.jobs.sweeps")

T = TypeVar("T")


def each_registration(
    app: Flask,
    sweep: Callable[..., T],
    *,
    what: str,
    now: datetime | None = None,
) -> list[T]:
    """``sweep(app, registration_id, now=now)`` for every EHR, in id order.

    One EHR down must not stop the others; the sweep still fails at the end (after trying
    every EHR), so RQ shows the failed cron job, and the next run tries that EHR again.
    """
    with get_store(app).session() as session:
        reg_ids = list(session.scalars(select(EhrRegistration.id).order_by(EhrRegistration.id)))
    results: list[T] = []
    failed: list[int] = []
    for reg_id in reg_ids:
        try:
            results.append(sweep(app, reg_id, now=now))
        except Exception:
            log.exception("%s of registration %s failed", what, reg_id)
            failed.append(reg_id)
    if failed:
        raise RuntimeError(f"{what} failed for registrations {failed}")
    return results
