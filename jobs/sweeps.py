"""Running a sweep over every registered EHR (reminders, surveys, insurance outreach).

A sweep is written once per kind as a function of one :class:`SweepRun` (the EHR, the
sweep's clock, a FHIR client) and made callable per registration by
:func:`per_registration`; :func:`each_registration` runs it over every EHR.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from flask import Flask
from sqlalchemy import select

from helpdesk.db import get_store
from helpdesk.models import EhrRegistration
from helpdesk.timeutil import utcnow
from jobs.context import registration_client
from smart_launch.errors import NoBackendClient, SmartError
from smart_launch.fhir import FhirClient

log = logging.getLogger("caredesk.jobs.sweeps")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@dataclass
class Swept:
    """What one sweep of one EHR looked at and queued (its log line; the cron job's count)."""

    registration_id: int
    seen: int = 0
    queued: int = 0


@dataclass(frozen=True)
class SweepRun:
    """One sweep of one EHR: its registration, the sweep's `now` (every window and dedupe
    key is read from it), and a FHIR client that authenticates as the sweep's jobs do."""

    app: Flask
    registration_id: int
    now: datetime
    client: FhirClient


class RegistrationSweep(Protocol[T_co]):
    """``sweep(app, registration_id, now=None)``: what :func:`each_registration`, the CLI
    and the tests call."""

    def __call__(
        self, app: Flask, registration_id: int, *, now: datetime | None = None
    ) -> T_co: ...


def per_registration(body: Callable[[SweepRun], T]) -> RegistrationSweep[T]:
    """``body`` as a sweep of one registration: `now` defaults to the clock, and the client
    is made before the body runs (LookupError for a registration that is gone)."""

    def sweep(app: Flask, registration_id: int, *, now: datetime | None = None) -> T:
        now = now or utcnow()
        client = registration_client(app, registration_id, now=now)
        return body(SweepRun(app, registration_id, now, client))

    sweep.__doc__ = body.__doc__
    return sweep


def each_registration(
    app: Flask,
    sweep: RegistrationSweep[T],
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
