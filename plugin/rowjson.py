"""A store row's columns as JSON, for the sidebar's and the jobs pages' JSON and the CLI's
``--json`` (what the OpenAPI document describes goes through ``plugin.schemas`` instead).

Columns are named, never all taken: a row may hold what must not leave the server (an
encrypted secret, a task's payload).
"""

from __future__ import annotations

import datetime as dt
from typing import Any


def columns(row: object, *names: str) -> dict[str, Any]:
    """``{name: value}`` of the named attributes; a date or datetime as ISO 8601 text."""
    return {name: _json(getattr(row, name)) for name in names}


def _json(value: object) -> object:
    return value.isoformat() if isinstance(value, dt.date) else value
