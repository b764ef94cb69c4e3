"""The scheduler's day board: a launch without a patient sees the day's appointments with
their flags, and opens a patient from there.

The page renders server-side in one pass after the FHIR reads (which go out together), so
nothing shifts as parts load and everything works without JavaScript.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from flask import Blueprint, render_template, request

from helpdesk.access import OtherPatient
from helpdesk.audit import audit
from helpdesk.timeutil import utcnow
from plugin import board_data
from plugin import context as ctx
from plugin.launch import current_launch

bp = Blueprint("board", __name__)


@bp.get("/l/<launch_id>/board")
def board(launch_id: str) -> str:
    launch = current_launch(launch_id)
    if launch.patient_ref:
        # The board lists every patient of the day: a chart's CareDesk is locked to the
        # chart's patient (issue 13 §1), so the board belongs to launches without one.
        raise OtherPatient(
            "The day board shows other patients; this CareDesk panel belongs to the "
            "chart's patient. Open the board from the EHR's schedule instead."
        )
    tz = ZoneInfo(ctx.viewer_tz())
    try:
        day = dt.date.fromisoformat(request.args.get("date") or "")
    except ValueError:
        day = utcnow().astimezone(tz).date()
    sort = "flags" if request.args.get("sort") == "flags" else "time"
    location = request.args.get("location") or None
    practitioner = request.args.get("practitioner") or None
    data = board_data.fetch_board(
        launch, day=day, location=location, practitioner=practitioner, sort=sort
    )
    audit(
        "read",
        launch=launch,
        entity="Appointment?date=" + day.isoformat(),
        detail={"view": "board", "rows": len(data["rows"])},
    )
    return render_template(
        "board.html",
        launch=launch,
        b=data,
        day=day,
        prev_day=(day - dt.timedelta(days=1)).isoformat(),
        next_day=(day + dt.timedelta(days=1)).isoformat(),
        has_style=bool((launch.context or {}).get("smart_style_url")),
    )
