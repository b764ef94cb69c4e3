"""plugin.rowjson: a row's named columns as JSON."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

from plugin.rowjson import columns


def test_columns_names_what_it_takes_and_writes_dates_as_iso_8601() -> None:
    at = dt.datetime(2026, 11, 30, 9, 15, tzinfo=dt.timezone(dt.timedelta(hours=-6)))
    row = SimpleNamespace(
        id=7, due_at=at, day=dt.date(2026, 12, 1), finished_at=None, refs={"Task": "Task/1"}
    )
    assert columns(row, "id", "due_at", "day", "finished_at", "refs") == {
        "id": 7,
        "due_at": "2026-11-30T09:15:00-06:00",
        "day": "2026-12-01",
        "finished_at": None,
        "refs": {"Task": "Task/1"},
    }
    assert columns(row, "id") == {"id": 7}  # nothing that was not named
