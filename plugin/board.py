"""The scheduler's day board: a launch without a patient sees the day's appointments with
their flags, opens a patient from there and comes back to the same place, and queues
reminders for many visits at once.

The board's state lives in its URL: day, sort, location, practitioner and flag filter in
the query (ids and codes, never patient data), the row last opened as the fragment. The
search text stays in the browser (the fragment, read by board.js, or the body of a POST
without JavaScript): a name or phone number never reaches a server log. The last state of
each launch is also kept for a few hours in Redis, so the plain "back to the board" links
of other pages land on the same day, filters and row.

Pages render server-side in one pass after the FHIR reads (which go out together), so
nothing shifts as parts load and everything works without JavaScript.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import redis
from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from fhir_mappers import flags
from helpdesk import reminders as reminder_svc
from helpdesk.access import OtherPatient
from helpdesk.audit import audit
from helpdesk.db import get_db
from helpdesk.errors import AppError
from helpdesk.kv import get_redis
from helpdesk.models import LaunchSession
from helpdesk.timeutil import utcnow
from plugin import board_data
from plugin import context as ctx
from plugin.csrf import check_csrf
from plugin.errors import smart_error_status
from plugin.launch import current_launch
from smart_launch.errors import NeedsAuthorization, SmartError

bp = Blueprint("board", __name__)
log = logging.getLogger("caredesk.board")

SORTS = ("time", "flags")
NEEDS_CALL = "needs-call"  # the flag filter that keeps every row needing a call
STATE_TTL_SECONDS = 12 * 3600  # a launch's browser session lasts at most 12 idle hours
MAX_QUERY = 200  # longest search text read (no-JavaScript search)


@dataclass(frozen=True)
class BoardState:
    """What the board's URL says: the day and how its rows are cut and ordered."""

    day: dt.date
    sort: str = "time"
    location: str | None = None
    practitioner: str | None = None
    flag: str | None = None

    def query(self) -> dict[str, str]:
        """The URL query of this state (every key, so a link is complete on its own)."""
        out = {"date": self.day.isoformat(), "sort": self.sort}
        if self.location:
            out["location"] = self.location
        if self.practitioner:
            out["practitioner"] = self.practitioner
        if self.flag:
            out["flag"] = self.flag
        return out

    def url(self, launch_id: str, **changes: Any) -> str:
        state = replace(self, **changes) if changes else self
        query: dict[str, Any] = state.query()
        return url_for("board.board", launch_id=launch_id, **query)


def _today() -> dt.date:
    return utcnow().astimezone(ZoneInfo(ctx.viewer_tz())).date()


def read_state(args: Mapping[str, str]) -> BoardState:
    """The state in a query or form; anything unreadable falls back to its default."""
    try:
        day = dt.date.fromisoformat(args.get("date") or "")
    except ValueError:
        day = _today()
    sort = args.get("sort") if args.get("sort") in SORTS else "time"
    flag = args.get("flag") or None
    if flag not in (None, NEEDS_CALL, *flags.ORDER):
        flag = None
    return BoardState(
        day=day,
        sort=sort or "time",
        location=(args.get("location") or None),
        practitioner=(args.get("practitioner") or None),
        flag=flag,
    )


# --- the last state of a launch (Redis; a few ids and codes, no patient data) -------------


def _state_key(launch_id: str) -> str:
    return f"caredesk:board-state:{launch_id}"


def remember(launch_id: str, state: BoardState, anchor: str | None = None) -> None:
    target = urlencode(state.query()) + (f"#{anchor}" if anchor else "")
    try:
        get_redis().set(_state_key(launch_id), target, ex=STATE_TTL_SECONDS)
    except redis.exceptions.RedisError as exc:
        # Only the convenience of coming back to the same place is lost.
        log.warning("board state not kept: %s", type(exc).__name__)


def remembered(launch_id: str) -> str | None:
    try:
        raw = get_redis().get(_state_key(launch_id))
    except redis.exceptions.RedisError as exc:
        log.warning("board state not read: %s", type(exc).__name__)
        return None
    return raw.decode() if isinstance(raw, bytes) else None


def row_anchor(appointment_id: str | None) -> str | None:
    return f"row-{appointment_id}" if appointment_id else None


# --- what the page shows -----------------------------------------------------------------


@dataclass
class Group:
    """Rows under one sticky header: an hour (and a place, when the day has several)."""

    key: str
    title: str
    note: str | None = None  # e.g. the location's own clock when it differs
    hour: str | None = None  # `07`: the hour of the viewer's day
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def needs_call(self) -> int:
        return sum(1 for r in self.rows if r.get("needs_call"))


def clock(value: dt.datetime | None) -> str:
    """`9:05 AM`."""
    if value is None:
        return "--:--"
    return f"{(value.hour % 12) or 12}:{value.minute:02d} {'AM' if value.hour < 12 else 'PM'}"


def _hour(value: dt.datetime) -> str:
    return f"{(value.hour % 12) or 12} {'AM' if value.hour < 12 else 'PM'}"


def _parse(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def decorate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add what the template and the search need: times in words and the search text."""
    out = []
    for row in rows:
        start = _parse(row.get("start"))
        local = _parse(row.get("location_start"))
        codes = [f["code"] for f in row.get("flags") or ()]
        digits = "".join(c for c in str(row.get("phone") or "") if c.isdigit())
        search = fold(
            " ".join(
                str(part)
                for part in (row.get("patient_name"), row.get("preferred_name"), row.get("mrn"))
                if part
            )
        )
        out.append(
            {
                **row,
                "start_dt": start,
                "time": clock(start),
                "location_time": clock(local) if local else None,
                "codes": codes,
                "anchor": row_anchor(row.get("appointment_id")),
                "search": search,
                "digits": digits,
                "cancelled": row.get("status") in flags.NOT_A_VISIT,
            }
        )
    return out


def fold(text: str) -> str:
    """Lower case without accents: `José` is found by `jose` (board.js folds the same)."""
    decomposed = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


_PHONE_LIKE = re.compile(r"^[\d\s().+\-]+$")


def matches(row: Mapping[str, Any], q: str) -> bool:
    """The search (board.js does the same in the page): a number finds the phone's digits
    or the MRN; words must all be in the name, preferred name or MRN."""
    q = fold(q.strip())
    if not q:
        return True
    digits = "".join(c for c in q if c.isdigit())
    if digits and _PHONE_LIKE.match(q):
        return digits in row["digits"] or digits in row["search"]
    return all(word in row["search"] for word in q.split())


def flag_counts(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The flag filter: every visit, those needing a call, then each flag that occurs."""
    counts = {code: 0 for code in flags.ORDER}
    for row in rows:
        for code in row["codes"]:
            counts[code] = counts.get(code, 0) + 1
    out: list[dict[str, Any]] = [
        {"code": None, "text": "All visits", "count": len(rows), "needs_call": False},
        {
            "code": NEEDS_CALL,
            "text": "Needs a call",
            "count": sum(1 for r in rows if r.get("needs_call")),
            "needs_call": True,
        },
    ]
    out.extend(
        {"code": f.code, "text": f.text, "count": counts[f.code], "needs_call": f.needs_call}
        for f in flags.FLAGS
        if counts.get(f.code)
    )
    return out


def keep(row: Mapping[str, Any], flag: str | None) -> bool:
    if flag is None:
        return True
    if flag == NEEDS_CALL:
        return bool(row.get("needs_call"))
    return flag in row["codes"]


def group(rows: Sequence[dict[str, Any]], sort: str) -> list[Group]:
    """Time order: one group per hour of the viewer's day, split by location when the
    rows are in several. Problems first: those needing a call, then the rest."""
    if sort == "flags":
        call = Group("needs-call", "Needs a call")
        rest = Group("no-call", "No call needed")
        for row in rows:
            (call if row.get("needs_call") else rest).rows.append(row)
        return [g for g in (call, rest) if g.rows]
    several = len({r.get("location") for r in rows}) > 1
    groups: dict[str, Group] = {}
    for row in rows:
        start: dt.datetime | None = row["start_dt"]
        hour = start.strftime("%H") if start else "zz"
        place = str(row.get("location") or "") if several else ""
        key = f"{hour}|{place}"
        if key not in groups:
            title = f"{_hour(start)}" if start else "No time given"
            note = None
            local = _parse(row.get("location_start"))
            if local is not None and start is not None:
                note = f"{_hour(local)} {row.get('location_tz_abbr') or ''} there".strip()
            groups[key] = Group(
                key,
                title + (f" · {place}" if place else ""),
                note,
                start.strftime("%H") if start else None,
            )
        groups[key].rows.append(row)
    return sorted(groups.values(), key=lambda g: g.key)


def needs_call_words() -> list[str]:
    """What "needs a call" means, from the one vocabulary (fhir_mappers.flags)."""
    return [f.text for f in flags.FLAGS if f.needs_call]


def _zone_words() -> str:
    tz = ZoneInfo(ctx.viewer_tz())
    now = utcnow().astimezone(tz)
    return f"{now.tzname()} ({ctx.viewer_tz()})"


# --- views --------------------------------------------------------------------------------


def _board_launch(launch_id: str) -> LaunchSession:
    launch = current_launch(launch_id)
    if launch.patient_ref:
        # The board lists every patient of the day: a chart's CareDesk is locked to the
        # chart's patient (issue 13 §1), so the board belongs to launches without one.
        raise OtherPatient(
            "The day board shows other patients; this CareDesk panel belongs to the "
            "chart's patient. Open the board from the EHR's schedule instead."
        )
    return launch


@bp.get("/l/<launch_id>/board")
def board(launch_id: str) -> BaseResponse | tuple[str, int] | str:
    launch = _board_launch(launch_id)
    if not request.args:
        saved = remembered(launch_id)
        if saved:
            return redirect(url_for("board.board", launch_id=launch_id) + "?" + saved, code=303)
    state = read_state(request.args)
    if request.args:
        remember(launch_id, state)
    return _render(launch, state, q="")


@bp.post("/l/<launch_id>/board")
def search(launch_id: str) -> BaseResponse | tuple[str, int] | str:
    """The search without JavaScript: the text comes in the body, never in the URL."""
    launch = _board_launch(launch_id)
    check_csrf(launch)
    state = read_state(request.form)
    return _render(launch, state, q=(request.form.get("q") or "")[:MAX_QUERY])


@bp.get("/l/<launch_id>/board/open")
def open_row(launch_id: str) -> BaseResponse:
    """Open a patient from a row, remembering the board's state and the row, so every way
    back (the sidebar's link, the browser's back button) lands on it again."""
    launch = _board_launch(launch_id)
    state = read_state(request.args)
    appointment = request.args.get("appointment") or None
    patient = request.args.get("patient") or ""
    remember(launch_id, state, row_anchor(appointment))
    if not patient.startswith("Patient/"):
        raise AppError("That is not a patient reference.", status=404, code="not_found")
    return redirect(url_for("sidebar.patient", launch_id=launch.id, patient_ref=patient), code=303)


def _render(
    launch: LaunchSession, state: BoardState, *, q: str, status: int = 200
) -> tuple[str, int]:
    common: dict[str, Any] = {
        "launch": launch,
        "state": state,
        "today": _today(),
        "tomorrow": _today() + dt.timedelta(days=1),
        "prev_day": state.day - dt.timedelta(days=1),
        "next_day": state.day + dt.timedelta(days=1),
        "q": q,
        "needs_call_words": needs_call_words(),
        "zone_words": _zone_words(),
        "neutral": BoardState(day=state.day),
    }
    try:
        data = board_data.fetch_board(
            launch,
            day=state.day,
            location=state.location,
            practitioner=state.practitioner,
            sort=state.sort,
        )
    except NeedsAuthorization:
        raise  # the one "launch again" page (plugin.errors)
    except SmartError as exc:
        code, _ = smart_error_status(exc)
        log.info(
            "board unavailable: %s (HTTP %s)", type(exc).__name__, getattr(exc, "status", None)
        )
        return render_template("board.html", down=True, **common), code
    audit(
        "read",
        launch=launch,
        entity="Appointment?date=" + state.day.isoformat(),
        detail={"view": "board", "rows": len(data["rows"])},
    )
    rows = decorate(data["rows"])
    query: dict[str, Any] = state.query()
    searched = [r for r in rows if matches(r, q)]
    shown = [r for r in searched if keep(r, state.flag)]
    return (
        render_template(
            "board.html",
            down=False,
            b=data,
            rows_total=len(rows),
            shown_count=len(shown),
            groups=group(shown, state.sort),
            counts=flag_counts(searched),
            needs_call_total=sum(1 for r in rows if r.get("needs_call")),
            first_call=next((r["anchor"] for r in shown if r.get("needs_call")), None),
            # One URL for every row's "open this patient" (url_for per row costs ~0.4 ms).
            open_base=url_for("board.open_row", launch_id=launch.id, **query),
            **common,
        ),
        status,
    )


# --- reminders for many visits at once ------------------------------------------------------


def _visits(rows: Sequence[Mapping[str, Any]]) -> list[reminder_svc.Visit]:
    out = []
    for row in rows:
        if not row.get("appointment_id"):
            continue
        out.append(
            reminder_svc.Visit(
                appointment_ref=f"Appointment/{row['appointment_id']}",
                patient_ref=row.get("patient_ref"),
                status=row.get("status"),
                start=_parse(row.get("start")),
                reachable=bool(row.get("reachable")),
                deceased=flags.DECEASED in [f["code"] for f in row.get("flags") or ()],
                callable=bool(row.get("phone"))
                and flags.UNREACHABLE not in [f["code"] for f in row.get("flags") or ()],
            )
        )
    return out


@bp.post("/l/<launch_id>/board/reminders")
def queue_reminders(launch_id: str) -> tuple[str, int]:
    """Queue reminders for the selected rows, or for every unconfirmed visit tomorrow;
    or reminder calls (phone follow-ups on the call list) for the selected rows.

    The rows are read again from the EHR here (only ids come from the form), so a
    reminder always goes to the patient of the appointment, as the EHR has it now."""
    from jobs import outbox

    launch = _board_launch(launch_id)
    check_csrf(launch)
    state = read_state(request.form)
    scope = request.form.get("scope")
    calls = scope == "call-selected"
    if calls:
        scope = "selected"
    if scope == "tomorrow":
        day = _today() + dt.timedelta(days=1)
        what = f"Unconfirmed visits on {day:%A, %B} {day.day}"
    elif scope == "selected":
        day = state.day
        what = f"Selected visits on {day:%A, %B} {day.day}"
    else:
        raise AppError("Choose the visits to remind.", status=422, code="validation_error")
    selected = set(request.form.getlist("appointment"))

    def page(status: int, **result: Any) -> tuple[str, int]:
        return (
            render_template(
                "board_reminders.html",
                launch=launch,
                state=state,
                what=what,
                zone_words=_zone_words(),
                calls=calls,
                back=state.url(launch.id),
                **result,
            ),
            status,
        )

    try:
        data = board_data.fetch_board(launch, day=day)
    except NeedsAuthorization:
        raise
    except SmartError as exc:
        code, _ = smart_error_status(exc)
        return page(code, outcome=None, down=True)
    rows = decorate(data["rows"])
    if scope == "tomorrow":
        chosen = [r for r in rows if flags.UNCONFIRMED in r["codes"]]
    else:
        chosen = [r for r in rows if r.get("appointment_id") in selected]
    now = utcnow()
    db = get_db()
    outcome = reminder_svc.queue(
        db,
        "call" if calls else "message",
        registration_id=launch.registration_id,
        visits=_visits(chosen),
        now=now,
        today=_today().isoformat(),
        requested_by=launch.fhir_user,
        launch_session_id=launch.id,
    )
    db.commit()
    outbox.dispatch(outcome.task_ids())
    audit(
        "reminders.queue",
        launch=launch,
        entity="Appointment?date=" + day.isoformat(),
        detail={
            "scope": scope,
            "how": "call" if calls else "message",
            "queued": len(outcome.queued),
            "skipped": len(outcome.skipped),
        },
    )
    by_ref = {f"Appointment/{r['appointment_id']}": r for r in rows if r.get("appointment_id")}
    return page(200, outcome=outcome, rows=by_ref, down=False, asked=len(chosen))
