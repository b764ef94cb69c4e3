"""Automation rules: routing a new ticket, acknowledging a message outside clinic hours,
escalating an overdue ticket. Each run is a ``RuleRun`` row on the ticket.

The rules are configuration (``AUTOMATION_RULES``: a JSON file's path, or the JSON
itself; default ``helpdesk/data/automation-rules.json``), read-only in CareDesk and shown
on ``/l/<launch>/automation``. The shape::

    {"clinic_hours": "Mon-Fri 08:00-17:00",
     "rules": [
       {"name": "...", "when": {"category": "billing"} | {"keywords": ["..."]},
        "route": {"assignee": "...", "category": "..."}},
       {"name": "...", "acknowledge": "outside-hours"},
       {"name": "...", "escalate": {"overdue_minutes": 0}}]}

Routing reads the ticket's category and the words of the message that opened it; the
first routing rule that matches wins. This module decides and records; sending the
acknowledgement is the job's (``jobs.inbound``), through the one send path.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from helpdesk.errors import ConfigError
from helpdesk.models import RuleRun, Ticket
from helpdesk.tickets import CATEGORIES, PRIORITIES

DEFAULT_RULES = Path(__file__).resolve().parent / "data" / "automation-rules.json"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(
    r"^\s*(?P<d1>[a-z]{3})(?:\s*-\s*(?P<d2>[a-z]{3}))?\s+"
    r"(?P<h1>\d{1,2}):(?P<m1>\d{2})\s*-\s*(?P<h2>\d{1,2}):(?P<m2>\d{2})\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ClinicHours:
    """Opening hours: one or more ``Mon-Fri 08:00-17:00`` spans, separated by ``;``."""

    spans: tuple[tuple[frozenset[int], dt.time, dt.time], ...]
    text: str

    def open_at(self, moment: dt.datetime, zone: dt.tzinfo) -> bool:
        local = moment.astimezone(zone)
        return any(
            local.weekday() in days and start <= local.time() < end
            for days, start, end in self.spans
        )


def parse_hours(text: str) -> ClinicHours:
    spans = []
    for part in (p for p in text.split(";") if p.strip()):
        found = _HOURS.match(part)
        if not found or found["d1"].lower() not in DAYS:
            raise ConfigError(
                f"clinic hours {part.strip()!r}: write them like 'Mon-Fri 08:00-17:00'"
            )
        first = DAYS.index(found["d1"].lower())
        last_name = (found["d2"] or found["d1"]).lower()
        if last_name not in DAYS:
            raise ConfigError(f"clinic hours {part.strip()!r}: unknown day {last_name!r}")
        last = DAYS.index(last_name)
        days = frozenset(range(first, last + 1)) if first <= last else frozenset()
        start = dt.time(int(found["h1"]), int(found["m1"]))
        end = dt.time(int(found["h2"]), int(found["m2"]))
        spans.append((days, start, end))
    return ClinicHours(tuple(spans), text.strip())


@dataclass(frozen=True)
class Rule:
    name: str
    action: str  # route | acknowledge | escalate
    category: str | None = None
    keywords: tuple[str, ...] = ()
    assignee: str | None = None
    set_category: str | None = None
    overdue_minutes: int = 0
    description: str = ""

    def matches(self, ticket: Ticket, text: str) -> bool:
        if self.category and ticket.category != self.category:
            return False
        if self.keywords:
            words = set(re.findall(r"\w+", text.lower()))
            return any(k.lower() in words for k in self.keywords)
        return self.category is not None


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    hours: ClinicHours | None
    source: str
    raw: Mapping[str, Any] = field(default_factory=dict)

    def of(self, action: str) -> list[Rule]:
        return [r for r in self.rules if r.action == action]


def load_rules(config: Mapping[str, Any]) -> RuleSet:
    """The configured rules; a rule file that cannot be read stops the caller with a
    message naming the setting (a silently ignored rule file routes nothing)."""
    raw_setting = config.get("AUTOMATION_RULES")
    source = str(DEFAULT_RULES)
    try:
        if raw_setting and str(raw_setting).lstrip().startswith("{"):
            data = json.loads(str(raw_setting))
            source = "CAREDESK_AUTOMATION_RULES"
        else:
            if raw_setting:
                source = str(raw_setting)
            data = json.loads(Path(source).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"CAREDESK_AUTOMATION_RULES: cannot read {source}: {exc}") from exc
    if not isinstance(data, Mapping) or not isinstance(data.get("rules", []), list):
        raise ConfigError('CAREDESK_AUTOMATION_RULES: expected {"rules": [...]}')
    rules = tuple(_rule(item, i) for i, item in enumerate(data.get("rules") or []))
    hours_text = data.get("clinic_hours") or config.get("CLINIC_HOURS")
    hours = parse_hours(str(hours_text)) if hours_text else None
    return RuleSet(rules, hours, source, data)


def _rule(item: Any, index: int) -> Rule:
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        raise ConfigError(f"CAREDESK_AUTOMATION_RULES: rule {index + 1} needs a name")
    name = str(item["name"])[:100]
    description = str(item.get("description") or "")
    if "route" in item:
        when = item.get("when") or {}
        route = item["route"] or {}
        category = when.get("category")
        set_category = route.get("category")
        for value in (category, set_category):
            if value is not None and value not in CATEGORIES:
                raise ConfigError(f"CAREDESK_AUTOMATION_RULES: {name}: unknown category {value!r}")
        keywords = tuple(str(k) for k in when.get("keywords") or ())
        if not category and not keywords:
            raise ConfigError(
                f"CAREDESK_AUTOMATION_RULES: {name}: 'when' needs a category or keywords"
            )
        return Rule(
            name,
            "route",
            category=category,
            keywords=keywords,
            assignee=route.get("assignee"),
            set_category=set_category,
            description=description,
        )
    if item.get("acknowledge") == "outside-hours":
        return Rule(name, "acknowledge", description=description)
    if "escalate" in item:
        minutes = int((item.get("escalate") or {}).get("overdue_minutes") or 0)
        return Rule(name, "escalate", overdue_minutes=max(0, minutes), description=description)
    raise ConfigError(f"CAREDESK_AUTOMATION_RULES: {name}: needs route, acknowledge or escalate")


def record(session: Session, ticket: Ticket, rule: Rule, outcome: str, now: dt.datetime) -> bool:
    """Record a run once per ticket and rule (False when it ran already). The caller
    commits."""
    exists = session.scalar(
        select(RuleRun.id).where(RuleRun.ticket_id == ticket.id, RuleRun.rule == rule.name)
    )
    if exists is not None:
        return False
    try:
        with session.begin_nested():
            session.add(
                RuleRun(
                    ticket_id=ticket.id, rule=rule.name, action=rule.action, at=now, outcome=outcome
                )
            )
    except IntegrityError:
        return False
    return True


def route(
    session: Session, ticket: Ticket, text: str, rules: RuleSet, now: dt.datetime
) -> Rule | None:
    """Apply the first routing rule that matches a new ticket; record it."""
    for rule in rules.of("route"):
        if not rule.matches(ticket, text):
            continue
        changes = []
        if rule.set_category and rule.set_category != ticket.category:
            changes.append(f"category {ticket.category} → {rule.set_category}")
            ticket.category = rule.set_category
        if rule.assignee and rule.assignee != ticket.assignee:
            changes.append(f"assigned to {rule.assignee}")
            ticket.assignee = rule.assignee
        record(session, ticket, rule, "; ".join(changes) or "matched; nothing to change", now)
        return rule
    return None


def should_acknowledge(rules: RuleSet, now: dt.datetime, zone: dt.tzinfo) -> Rule | None:
    """The acknowledgement rule to run for a message arriving at ``now``, if any."""
    if rules.hours is None:
        return None
    for rule in rules.of("acknowledge"):
        if not rules.hours.open_at(now, zone):
            return rule
    return None


def raise_priority(priority: str) -> str:
    index = PRIORITIES.index(priority) if priority in PRIORITIES else 1
    return PRIORITIES[min(index + 1, len(PRIORITIES) - 1)]


def overdue_tickets(
    session: Session, rule: Rule, now: dt.datetime, *, limit: int = 500
) -> Sequence[Ticket]:
    """Active tickets past due by the rule's minutes that this rule has not escalated."""
    already = select(RuleRun.ticket_id).where(RuleRun.rule == rule.name)
    return session.scalars(
        select(Ticket)
        .where(
            Ticket.status.in_(("open", "pending")),
            Ticket.due_at.is_not(None),
            Ticket.due_at < now - dt.timedelta(minutes=rule.overdue_minutes),
            Ticket.id.not_in(already),
        )
        .order_by(Ticket.due_at)
        .limit(limit)
    ).all()
