"""Jobs about the job system itself (heartbeats, no-ops for benchmarks)."""

from __future__ import annotations

from plugin.db import get_store
from plugin.logs import current_request_id
from plugin.models import AuditEvent


def record_heartbeat(label: str) -> None:
    """Proves a worker runs jobs with the app and store: writes one audit row."""
    with get_store().session() as session:
        session.add(AuditEvent(action="heartbeat", entity=label, request_id=current_request_id()))


def noop() -> None:
    """The floor for job benchmarks: what RQ costs with no work at all."""
