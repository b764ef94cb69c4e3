"""Jobs about the job system itself (heartbeats, no-ops for benchmarks)."""

from __future__ import annotations

from helpdesk.db import get_store
from helpdesk.logctx import current_request_id
from helpdesk.models import AuditEvent


def record_heartbeat(label: str) -> None:
    """Proves a worker runs jobs with the app and store: writes one audit row."""
    with get_store().session() as session:
        session.add(AuditEvent(action="heartbeat", entity=label, request_id=current_request_id()))


def noop() -> None:
    """The floor for job benchmarks: what RQ costs with no work at all."""
