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
from smart_launch.errors import NoBackendClient, SmartError

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

    A registration without a backend-services client cannot be swept (a sweep has no
    user's launch to act on): one line at INFO, and it is not a failure. A refusal the
    EHR or CareDesk's registration explains (:class:`SmartError`) is one line saying whose
    fault it is; only the unexpected gets a traceback.
    """
    with get_store(app).session() as session:
        reg_ids = list(session.scalars(select(EhrRegistration.id).order_by(EhrRegistration.id)))
    results: list[T] = []
    failed: list[int] = []
    for reg_id in reg_ids:
        try:
            results.append(sweep(app, reg_id, now=now))
        except NoBackendClient:
            log.info("%s of registration %s skipped: no backend-services client", what, reg_id)
        except SmartError as exc:
            log.error("%s of registration %s failed (%s): %s", what, reg_id, exc.party, exc)
            failed.append(reg_id)
        except Exception:
            log.exception("%s of registration %s failed", what, reg_id)
            failed.append(reg_id)
    if failed:
        raise RuntimeError(f"{what} failed for registrations {failed}")
    return results
