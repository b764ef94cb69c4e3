"""``/reports/csat``: survey results per clinic location, practitioner and week.

Opened from CareDesk with the launch id (``?launch=<id>``), so only a signed-in staff
member of that EHR sees its figures, and only of the patients the launch may see
(``helpdesk.access``: a launch from a patient's chart counts that patient's surveys
only). Definitions (also printed on the page):

- invitations: invitations sent for visits in the period (answered and expired included);
- response rate: answered / invitations;
- CSAT %: share of CSAT answers that are 4 or 5;
- NPS: % promoters (9-10) minus % detractors (0-6) of NPS answers, from -100 to 100.

Every figure carries the count it rests on, and a figure resting on fewer answers than
``REPORT_MIN_ANSWERS`` is shown as "not enough answers" instead of a percentage: one
answer of 3 reads "CSAT 0 %, NPS -100" otherwise, and someone acts on it. The CSV files
hold exactly the cells of the tables on the page (same rounding, same words), so a
spreadsheet never disagrees with the screen.

The chart is HTML with an SVG bar per row (attributes only: the CSP forbids inline
style and script), so its words are page text at the page's size and contrast.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, current_app, render_template, request
from sqlalchemy.orm import Session

from helpdesk.access import PatientScope, scope_of
from helpdesk.audit import audit
from helpdesk.db import get_db
from helpdesk.errors import AppError
from helpdesk.models import LaunchSession
from helpdesk.surveys import export_rows, sent_invitations
from helpdesk.timeutil import utcnow
from plugin.csvout import write_csv
from plugin.launch import current_launch

bp = Blueprint("reports", __name__)

PERIOD_WEEKS = (4, 12, 52)
DEFAULT_WEEKS = 12
MAX_DAYS = 3 * 366  # the longest custom period
NO_LOCATION = "(no location)"
NO_PRACTITIONER = "(no practitioner)"
NOT_ENOUGH = "not enough answers"
NO_ANSWERS = "no answers"


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
class Figure:
    """A percentage (or NPS) with the count it rests on; below ``min_n`` it is not shown."""

    value: float | None
    n: int
    min_n: int
    suffix: str = " %"

    @property
    def enough(self) -> bool:
        return self.n >= self.min_n and self.value is not None

    @property
    def text(self) -> str:
        """What the page and the CSV show in the figure's cell."""
        if self.n == 0 or self.value is None:
            return NO_ANSWERS
        if not self.enough:
            return NOT_ENOUGH
        return f"{self.value:.0f}{self.suffix}"

    @property
    def percent(self) -> float:
        """0-100 for a bar (NPS -100..100 is shifted onto it)."""
        if self.value is None:
            return 0.0
        return self.value if self.suffix else (self.value + 100) / 2


@dataclass(frozen=True)
class ReportRow:
    location: str
    practitioner: str
    week: dt.date | None  # the Monday the week starts on; None for a whole-period row
    invitations: int
    responses: int
    csat_answers: int
    csat_satisfied: int
    nps_answers: int
    promoters: int
    detractors: int

    def response_rate(self, min_n: int) -> Figure:
        value = 100.0 * self.responses / self.invitations if self.invitations else None
        return Figure(value, self.invitations, min_n)

    def csat(self, min_n: int) -> Figure:
        value = 100.0 * self.csat_satisfied / self.csat_answers if self.csat_answers else None
        return Figure(value, self.csat_answers, min_n)

    def nps(self, min_n: int) -> Figure:
        value = (
            100.0 * (self.promoters - self.detractors) / self.nps_answers
            if self.nps_answers
            else None
        )
        return Figure(value, self.nps_answers, min_n, suffix="")


def week_of(moment: dt.datetime, tz: dt.tzinfo) -> dt.date:
    day = moment.astimezone(tz).date()
    return day - dt.timedelta(days=day.weekday())


def summarize(records: Iterable[Record], tz: dt.tzinfo, *, by_week: bool = True) -> list[ReportRow]:
    """Group by (location, practitioner[, week]); weekly rows newest week first."""
    groups: dict[tuple[str, str, dt.date | None], list[Record]] = {}
    for rec in records:
        key = (
            rec.location or NO_LOCATION,
            rec.practitioner or NO_PRACTITIONER,
            week_of(rec.visit_at, tz) if by_week else None,
        )
        groups.setdefault(key, []).append(rec)
    rows = [_row(key, recs) for key, recs in groups.items()]
    rows.sort(key=lambda r: (-(r.week.toordinal() if r.week else 0), r.location, r.practitioner))
    return rows


def total(rows: Iterable[ReportRow]) -> ReportRow | None:
    rows = list(rows)
    if not rows:
        return None
    return ReportRow(
        location="All locations",
        practitioner="All practitioners",
        week=None,
        invitations=sum(r.invitations for r in rows),
        responses=sum(r.responses for r in rows),
        csat_answers=sum(r.csat_answers for r in rows),
        csat_satisfied=sum(r.csat_satisfied for r in rows),
        nps_answers=sum(r.nps_answers for r in rows),
        promoters=sum(r.promoters for r in rows),
        detractors=sum(r.detractors for r in rows),
    )


def _row(key: tuple[str, str, dt.date | None], recs: list[Record]) -> ReportRow:
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


def load_records(
    session: Session, scope: PatientScope, *, since: dt.datetime, until: dt.datetime
) -> list[Record]:
    """Sent invitations for visits in [since, until), of the patients ``scope`` sees."""
    records = []
    for invite, response in sent_invitations(session, scope):
        when = invite.visit_at or invite.sent_at
        assert when is not None
        if not since <= when < until:
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


# --- the period ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    start: dt.date  # first day, inclusive
    end: dt.date  # last day, inclusive
    weeks: int | None  # 4, 12 or 52; None for a custom period

    @property
    def words(self) -> str:
        span = f"{_day(self.start)} – {_day(self.end)}"
        return f"Last {self.weeks} weeks ({span})" if self.weeks else span

    def query(self) -> dict[str, str]:
        if self.weeks:
            return {"weeks": str(self.weeks)}
        return {"from": self.start.isoformat(), "to": self.end.isoformat()}


def _day(day: dt.date) -> str:
    return f"{day:%b} {day.day}, {day.year}"


def read_period(args: dict[str, str], today: dt.date) -> Period:
    """`weeks=4|12|52` (whole weeks up to this one), or `weeks=custom` (or no `weeks`)
    with `from` and `to`."""
    custom = args.get("weeks") == "custom" or (
        not args.get("weeks") and (args.get("from") or args.get("to"))
    )
    if custom:
        try:
            start = dt.date.fromisoformat(args.get("from") or "")
            end = dt.date.fromisoformat(args.get("to") or "")
        except ValueError as exc:
            raise AppError("Give both days of the period as dates.") from exc
        if end < start:
            raise AppError("The period ends before it starts.")
        if (end - start).days > MAX_DAYS:
            raise AppError("Choose a period of at most three years.")
        return Period(start, end, None)
    raw = args.get("weeks") or str(DEFAULT_WEEKS)
    if not raw.isdigit() or int(raw) not in PERIOD_WEEKS:
        raise AppError("Choose 4, 12 or 52 weeks, or a custom period.")
    weeks = int(raw)
    monday = today - dt.timedelta(days=today.weekday())
    return Period(monday - dt.timedelta(weeks=weeks - 1), today, weeks)


# --- what the page and the CSV show ------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str  # the CSV header
    title: str  # the table header
    cell: Callable[[ReportRow, int], str]
    num: bool = True  # a figure (kept on one line)


def _count(name: str) -> Callable[[ReportRow, int], str]:
    return lambda row, _min_n: str(getattr(row, name))


COLUMNS: tuple[Column, ...] = (
    Column("location", "Location", lambda r, _: r.location, num=False),
    Column("practitioner", "Practitioner", lambda r, _: r.practitioner, num=False),
    Column("invitations", "Invitations", _count("invitations")),
    Column("responses", "Answered", _count("responses")),
    Column("response_rate", "Response rate", lambda r, m: r.response_rate(m).text),
    Column("csat", "CSAT", lambda r, m: r.csat(m).text),
    Column("csat_answers", "CSAT answers", _count("csat_answers")),
    Column("nps", "NPS", lambda r, m: r.nps(m).text),
    Column("nps_answers", "NPS answers", _count("nps_answers")),
)
WEEK = Column("week", "Week of", lambda r, _: r.week.isoformat() if r.week else "")
TABLES = {"people": COLUMNS, "weeks": (WEEK, *COLUMNS)}


def table_cells(
    rows: Sequence[ReportRow], columns: Sequence[Column], min_n: int
) -> list[list[str]]:
    return [[c.cell(row, min_n) for c in columns] for row in rows]


@dataclass(frozen=True)
class Bar:
    label: str
    figure: Figure


def chart_bars(rows: Sequence[ReportRow], min_n: int) -> list[Bar]:
    """CSAT per location and practitioner over the period."""
    return [Bar(f"{r.location} · {r.practitioner}", r.csat(min_n)) for r in rows]


@dataclass(frozen=True)
class Report:
    launch: LaunchSession
    period: Period
    weekly: list[ReportRow]
    people: list[ReportRow]
    total: ReportRow | None
    min_n: int


def _viewer_zone() -> ZoneInfo:
    return ZoneInfo(str(current_app.config["VIEWER_TIMEZONE"]))


def _report(launch_id: str) -> Report:
    launch = current_launch(launch_id)
    tz = _viewer_zone()
    period = read_period(request.args.to_dict(), utcnow().astimezone(tz).date())
    since = dt.datetime.combine(period.start, dt.time(), tzinfo=tz)
    until = dt.datetime.combine(period.end + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    records = load_records(get_db(), scope_of(launch), since=since, until=until)
    audit("report", launch=launch, entity="reports/csat")
    people = summarize(records, tz, by_week=False)
    return Report(
        launch=launch,
        period=period,
        weekly=summarize(records, tz),
        people=people,
        total=total(people),
        min_n=int(current_app.config.get("REPORT_MIN_ANSWERS") or 1),
    )


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
    report = _report(launch_id)
    return render_template(
        "reports/csat.html",
        r=report,
        launch=report.launch,
        launch_id=launch_id,
        columns=COLUMNS,
        week_columns=TABLES["weeks"],
        people_cells=table_cells(report.people, COLUMNS, report.min_n),
        week_cells=table_cells(report.weekly, TABLES["weeks"], report.min_n),
        bars=chart_bars(report.people, report.min_n),
        weeks_choices=PERIOD_WEEKS,
    )


def _csv(header: Iterable[str], rows: Iterable[Iterable[object]], filename: str) -> Response:
    out = io.StringIO()
    write_csv(out, header, rows)
    response = Response(out.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/reports/csat.csv")
def csat_csv() -> Response:
    """One of the page's tables, cell for cell: `table=weeks` (default) or `people`."""
    report = _report(_launch_id())
    table = request.args.get("table") or "weeks"
    if table not in TABLES:
        raise AppError("table must be weeks or people.")
    columns = TABLES[table]
    rows = report.weekly if table == "weeks" else report.people
    name = "caredesk-csat.csv" if table == "weeks" else "caredesk-csat-by-practitioner.csv"
    return _csv((c.key for c in columns), table_cells(rows, columns, report.min_n), name)


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
