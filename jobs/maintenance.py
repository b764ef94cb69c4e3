"""Housekeeping on the cron: launches that never finished are deleted after a day.

A pending launch holds an encrypted PKCE verifier and a state hash, both useless after
the 10-minute state expiry; failed and ended launches hold nothing a job may need. Active
launches stay: a job created during one may still refresh through its token set.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from flask import Flask, current_app
from sqlalchemy import delete, or_, select

from helpdesk.db import get_store
from helpdesk.models import CareTask, LaunchSession
from helpdesk.timeutil import utcnow

log = logging.getLogger("caredesk.jobs.maintenance")

KEEP_UNFINISHED = timedelta(days=1)


def prune_launches(app: Flask, *, now: datetime | None = None) -> int:
    cutoff = (now or utcnow()) - KEEP_UNFINISHED
    with get_store(app).session() as session:
        # A task may still point at a launch (for its refresh token): those rows stay.
        referenced = select(CareTask.launch_session_id).where(
            CareTask.launch_session_id.is_not(None)
        )
        result = session.execute(
            delete(LaunchSession).where(
                LaunchSession.status.in_(("pending", "exchanging", "failed", "ended")),
                or_(LaunchSession.updated_at < cutoff, LaunchSession.updated_at.is_(None)),
                LaunchSession.id.not_in(referenced),
            )
        )
        removed = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if removed:
        log.info("pruned %d unfinished launches", removed)
    return removed


def prune_launches_job() -> int:
    """The cron entry point."""
    return prune_launches(current_app._get_current_object())  # type: ignore[attr-defined]
