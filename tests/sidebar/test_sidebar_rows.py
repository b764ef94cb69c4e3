"""The sidebar's open tickets and closed channels, taken from the context's rows (issue 16
§3: a cached page reads neither again): the same order, length and words as the ticket
list and the store's STOPs give."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from helpdesk import messaging
from helpdesk.models import ContactOptOut
from plugin.sidebar import TICKETS_SHOWN, ticket_lines

CHICAGO = ZoneInfo("America/Chicago")


def _row(id: int, due: str | None, status: str = "open") -> dict[str, object]:
    return {"id": id, "subject": f"t{id}", "status": status, "priority": "normal", "due_at": due}


def test_a_tickets_due_time_is_read_back_from_the_rows_iso_text() -> None:
    lines = ticket_lines([_row(3, "2026-12-01T09:00:00-06:00"), _row(2, None)])
    assert [(t.id, t.due_at) for t in lines] == [
        (3, dt.datetime(2026, 12, 1, 15, tzinfo=dt.UTC)),
        (2, None),
    ]
    # A store time without an offset (SQLite) is UTC, as everywhere else.
    assert ticket_lines([_row(7, "2026-12-01T15:00:00")])[0].due_at == lines[0].due_at


def test_the_page_lists_as_many_tickets_as_the_ticket_lists_first_page() -> None:
    lines = ticket_lines([_row(i, None) for i in range(39, 0, -1)])
    assert len(lines) == TICKETS_SHOWN == 25
    assert [t.id for t in lines[:2]] == [39, 38]  # in the rows' own order


def test_the_channels_a_stop_closed_read_the_same_from_the_contexts_summary() -> None:
    at = dt.datetime(2026, 11, 29, 3, 30, tzinfo=dt.UTC)  # Nov 28 in Chicago
    rows = [
        ContactOptOut(channel="sms", keyword="STOP", opted_out_at=at),
        ContactOptOut(channel="whatsapp", keyword="STOP", opted_out_at=at),
    ]
    summary = {
        "opt_outs": [
            {"channel": r.channel, "keyword": r.keyword, "since": r.opted_out_at.isoformat()}
            for r in rows
        ]
    }
    got = messaging.stopped_in_summary(summary, CHICAGO)
    assert got == {"sms": messaging.opt_out_reason(rows[0], CHICAGO)}
    assert "Nov 28, 2026" in got["sms"]
    assert messaging.stopped_in_summary({"opt_outs": [{"channel": "sms", "since": "?"}]}) == {}
