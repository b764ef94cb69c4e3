"""What the sidebar's and the call list's HTML forms post, read one way: trimmed values
(a field left empty is absent), and a due time a form gives in three fields."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from flask import request

from helpdesk import duephrase
from helpdesk.timeutil import utcnow
from plugin.launched import viewer_zone


def form_values(*names: str) -> dict[str, str]:
    """The named fields of the posted form, trimmed; a field left empty is absent."""
    return {n: v.strip() for n in names if (v := request.form.get(n, "")).strip()}


def due_fields(name: str) -> tuple[str, str, str]:
    """The fields a form says a due time with, as its template names them: the typed words
    (``name``), the date-time control (``name_at_local``), the quick choice (``name_choice``)."""
    return name, f"{name}_at_local", f"{name}_choice"


def resolve_due(values: Mapping[str, str], name: str) -> tuple[datetime, str]:
    """The due time the fields of ``name`` give, read in the viewer's zone, and the words it
    was given in (``helpdesk.duephrase.resolve_due``). Raises DuePhraseError."""
    phrase, at_local, choice = due_fields(name)
    return duephrase.resolve_due(
        phrase=values.get(phrase),
        at_local=values.get(at_local),
        choice=values.get(choice),
        now=utcnow(),
        tz=viewer_zone(),
    )
