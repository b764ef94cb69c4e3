"""The demo's outbox: nothing leaves the machine; the message is only stored (encrypted)
as an OutboundMessage row, which every adapter writes anyway, and shown on /jobs/outbox."""

from __future__ import annotations

from jobs.outbound import Message


class OutboxAdapter:
    name = "outbox"

    def send(self, message: Message) -> str | None:
        return None
