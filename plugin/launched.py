"""What every route with a launch in its path needs, for the JSON API (``plugin.api``) and
the ticket pages (``plugin.ticket_pages``) alike.

Before any view runs, the launch is authenticated (``plugin.launch.current_launch``: the
id in the URL plus this browser's cookie) and, for a state-changing method, its CSRF token
is checked (``plugin.csrf``): the cookie is ambient, so the JSON API is as CSRF-able as a
form.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app, g, request
from werkzeug.exceptions import NotFound
from werkzeug.routing import IntegerConverter

from helpdesk import duephrase
from helpdesk import tickets as svc
from helpdesk.models import LaunchSession
from plugin.csrf import check_csrf
from plugin.launch import current_launch
from plugin.schemas import INT32_MAX


def authenticate() -> None:
    """A blueprint's ``before_request``: the launch named in the path, with CSRF."""
    launch_id = (request.view_args or {}).get("launch_id")
    if launch_id is None:
        return  # the OpenAPI document: public, no patient data
    launch = current_launch(str(launch_id))
    check_csrf(launch)


def request_launch() -> LaunchSession:
    """The launch ``authenticate`` found for this request."""
    found: LaunchSession = g.launch
    return found


def sla() -> dict[str, float]:
    return svc.sla_hours(current_app.config)


def viewer_zone() -> ZoneInfo:
    return duephrase.viewer_zone(str(current_app.config.get("VIEWER_TIMEZONE") or "UTC"))


class RowId(IntegerConverter):
    """``<rowid:ticket_id>``: a row id as the store's ``integer`` column holds it. A larger
    number names no row: 404 for every method, instead of overflowing the query (a 500).
    The OpenAPI document states the bounds (flask-smorest reads ``min``/``max``)."""

    def __init__(self, map: Any) -> None:  # noqa: A002 (werkzeug's parameter name)
        super().__init__(map, min=0, max=INT32_MAX)

    def to_python(self, value: str) -> int:
        # Not werkzeug's ValidationError: with it the router goes on to other rules and
        # answers a PATCH of a too-large id with 405 (the GET rule's path matched).
        if len(value) > len(str(INT32_MAX)) or int(value) > INT32_MAX:
            raise NotFound("No such item for this launch.")
        return int(value)
