"""``/reports/csat``: survey results per clinic location, practitioner and week.

Opened from the sidebar with the launch id (``?launch=<id>``), so only a signed-in staff
member of that EHR sees its figures, and only of the patients the launch may see
(``helpdesk.access``: a launch from a patient's chart counts that patient's surveys
only). Definitions (also printed under the table):

- invitations: invitations sent for visits in the week (answered and expired included);
- response rate: answered / invitations;
- CSAT %: share of CSAT answers that are 4 or 5;
- NPS: % promoters (9-10) minus % detractors (0-6) of NPS answers, from -100 to 100.

The chart is server-rendered SVG (the CSP forbids inline script and style).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, current_app, render_template, request
from sqlalchemy.orm import Session

from helpdesk.access import PatientScope, scope_of
from helpdesk.audit import audit
from helpdesk.db import get_db
from helpdesk.errors import AppError
from helpdesk.surveys import export_rows, sent_invitations
from helpdesk.timeutil import utcnow
from plugin.csvout import write_csv
from plugin.launch import current_launch

bp = Blueprint("reports", __name__)

DEFAULT_WEEKS = 12
MAX_WEEKS = 104
NO_LOCATION = "(no location)"
NO_PRACTITIONER = "(no practitioner)"


@dataclass(frozen=True)
class Record:
    """One sent invitation, with its answer when there is one."""

    location: str | None
    practitioner: str | None
    visit_at: dt.datetime
    answered: bool
    csat: int | None
    nps: int | None


@dataclass(frozen=True)
class ReportRow:
    location: str
    practitioner: str
    week: dt.date  # the Monday the week starts on, in the report's time zone
    invitations: int
    responses: int
    csat_answers: int
    csat_satisfied: int
    nps_answers: int
    promoters: int
    detractors: int

    @property
    def response_rate(self) -> float | None:
        return 100.0 * self.responses / self.invitations if self.invitations else None

    @property
    def csat_percent(self) -> float | None:
        return 100.0 * self.csat_satisfied / self.csat_answers if self.csat_answers else None

    @property
    def nps(self) -> float | None:
        if not self.nps_answers:
            return None
        return 100.0 * (self.promoters - self.detractors) / self.nps_answers


def week_of(moment: dt.datetime, tz: dt.tzinfo) -> dt.date:
    day = moment.astimezone(tz).date()
    return day - dt.timedelta(days=day.weekday())


def summarize(records: Iterable[Record], tz: dt.tzinfo) -> list[ReportRow]:
    """Group by (location, practitioner, week); rows sorted by week (newest first)."""
    groups: dict[tuple[str, str, dt.date], list[Record]] = {}
    for rec in records:
        key = (
            rec.location or NO_LOCATION,
            rec.practitioner or NO_PRACTITIONER,
            week_of(rec.visit_at, tz),
        )
        groups.setdefault(key, []).append(rec)
    rows = [_row(key, recs) for key, recs in groups.items()]
    rows.sort(key=lambda r: (-r.week.toordinal(), r.location, r.practitioner))
    return rows


def total(rows: Iterable[ReportRow]) -> ReportRow | None:
    rows = list(rows)
    if not rows:
        return None
    return ReportRow(
        location="All locations",
        practitioner="All practitioners",
        week=min(r.week for r in rows),
        invitations=sum(r.invitations for r in rows),
        responses=sum(r.responses for r in rows),
        csat_answers=sum(r.csat_answers for r in rows),
        csat_satisfied=sum(r.csat_satisfied for r in rows),
        nps_answers=sum(r.nps_answers for r in rows),
        promoters=sum(r.promoters for r in rows),
        detractors=sum(r.detractors for r in rows),
    )


def _row(key: tuple[str, str, dt.date], recs: list[Record]) -> ReportRow:
    answered = [r for r in recs if r.answered]
    csat = [r.csat for r in answered if r.csat is not None]
    nps = [r.nps for r in answered if r.nps is not None]
    return ReportRow(
        location=key[0],
        practitioner=key[1],
        week=key[2],
        invitations=len(recs),
        responses=len(answered),
        csat_answers=len(csat),
        csat_satisfied=sum(1 for c in csat if c >= 4),
        nps_answers=len(nps),
        promoters=sum(1 for n in nps if n >= 9),
        detractors=sum(1 for n in nps if n <= 6),
    )


def load_records(session: Session, scope: PatientScope, *, since: dt.datetime) -> list[Record]:
    records = []
    for invite, response in sent_invitations(session, scope):
        when = invite.visit_at or invite.sent_at
        assert when is not None
        if when < since:
            continue
        records.append(
            Record(
                location=invite.clinic_name or invite.location_ref,
                practitioner=invite.practitioner_name or invite.practitioner_ref,
                visit_at=when,
                answered=response is not None,
                csat=response.csat if response is not None else None,
                nps=response.nps if response is not None else None,
            )
        )
    return records


def _fmt(value: float | None, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.0f}{suffix}"


@dataclass(frozen=True)
class Bar:
    label: str
    y: int
    width: int
    value: str


CHART_WIDTH = 200  # px for 100 %


def chart_bars(rows: list[ReportRow]) -> list[Bar]:
    """CSAT % per row as SVG bar geometry (attributes only: no style)."""
    bars = []
    for index, row in enumerate(rows):
        pct = row.csat_percent
        bars.append(
            Bar(
                label=f"{row.week.isoformat()} · {row.location} · {row.practitioner}",
                y=index * 28,
                width=round((pct or 0) * CHART_WIDTH / 100),
                value=_fmt(pct, " %"),
            )
        )
    return bars


def _weeks() -> int:
    raw = request.args.get("weeks", str(DEFAULT_WEEKS))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_WEEKS:
        raise AppError(f"weeks must be a number from 1 to {MAX_WEEKS}.")
    return int(raw)


def _report(launch_id: str) -> tuple[list[ReportRow], int, dt.tzinfo]:
    launch = current_launch(launch_id)
    weeks = _weeks()
    tz = ZoneInfo(str(current_app.config["VIEWER_TIMEZONE"]))
    now = utcnow()
    since_day = week_of(now, tz) - dt.timedelta(weeks=weeks - 1)
    since = dt.datetime.combine(since_day, dt.time(), tzinfo=tz)
    rows = summarize(load_records(get_db(), scope_of(launch), since=since), tz)
    audit("report", launch=launch, entity="reports/csat")
    return rows, weeks, tz


def _launch_id() -> str:
    launch_id = request.args.get("launch", "")
    if not launch_id:
        raise AppError(
            "Open the report from CareDesk in the EHR (it needs your launch).",
            status=401,
            code="no_session",
        )
    return launch_id


@bp.get("/reports/csat")
def csat_report() -> str:
    launch_id = _launch_id()
    rows, weeks, _tz = _report(launch_id)
    return render_template(
        "reports/csat.html",
        rows=rows,
        total=total(rows),
        bars=chart_bars(rows),
        chart_width=CHART_WIDTH,
        weeks=weeks,
        launch_id=launch_id,
        fmt=_fmt,
    )


CSV_COLUMNS = (
    "week",
    "location",
    "practitioner",
    "invitations",
    "responses",
    "response_rate_percent",
    "csat_percent",
    "nps",
    "csat_answers",
    "nps_answers",
)


def _csv(header: Iterable[str], rows: Iterable[Iterable[object]], filename: str) -> Response:
    out = io.StringIO()
    write_csv(out, header, rows)
    response = Response(out.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


@bp.get("/reports/csat.csv")
def csat_csv() -> Response:
    rows, _weeks_, _tz = _report(_launch_id())
    return _csv(
        CSV_COLUMNS,
        (
            (
                r.week.isoformat(),
                r.location,
                r.practitioner,
                r.invitations,
                r.responses,
                _num(r.response_rate),
                _num(r.csat_percent),
                _num(r.nps),
                r.csat_answers,
                r.nps_answers,
            )
            for r in rows
        ),
        "caredesk-csat.csv",
    )


@bp.get("/reports/csat/responses.csv")
def responses_csv() -> Response:
    """Every stored answer (``?status=not-supported``: the ones the EHR could not take)."""
    launch = current_launch(_launch_id())
    status = request.args.get("status") or None
    if status not in (None, "pending", "written", "not-supported", "failed"):
        raise AppError("status must be pending, written, not-supported or failed.")
    rows = export_rows(get_db(), scope_of(launch), status=status)
    audit("export", launch=launch, entity="survey responses")
    columns = list(rows[0]) if rows else ["invitation_id", "patient", "csat", "nps"]
    return _csv(columns, ([r[c] for c in columns] for r in rows), "caredesk-survey-responses.csv")
