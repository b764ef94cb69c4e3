"""Who can be reached how: channel choice from a FHIR Patient, pure (no I/O, no clock).

Contact restrictions are not core FHIR R4; CareDesk reads them from its own Patient
extension (see ``fixtures.population``): one ``no-sms``/``no-email``/``no-call`` coding per
restricted channel.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RESTRICTION_URL = "https://caredesk.example/fhir/StructureDefinition/contact-restriction"
CHANNELS = ("sms", "email")


@dataclass(frozen=True)
class Reachable:
    channel: str  # sms | email
    address: str


def restrictions(patient: Mapping[str, Any]) -> frozenset[str]:
    out: set[str] = set()
    for ext in patient.get("extension") or []:
        if not isinstance(ext, dict) or ext.get("url") != RESTRICTION_URL:
            continue
        code = (ext.get("valueCoding") or {}).get("code")
        if isinstance(code, str):
            out.add(code)
    return frozenset(out)


def _ended(point: Mapping[str, Any], today: dt.date) -> bool:
    end = (point.get("period") or {}).get("end")
    if not isinstance(end, str) or len(end) < 10:
        return False
    try:
        return dt.date.fromisoformat(end[:10]) < today
    except ValueError:
        return False


def _channel_of(point: Mapping[str, Any]) -> str | None:
    system, use = point.get("system"), point.get("use")
    if system == "email":
        return "email"
    # Texts go to mobiles only; a phone without `use` is taken as one because many
    # EHRs leave `use` out entirely. Home and work lines are called, not texted.
    if system in ("sms",) or (system == "phone" and use in ("mobile", None)):
        return "sms"
    return None


def reachable(
    patient: Mapping[str, Any], *, today: dt.date, requested: str | None = None
) -> list[Reachable]:
    """Channels the patient can be messaged on, best first (telecom ``rank``, then order).

    ``requested`` narrows the list to that channel. Restricted channels, old numbers and
    ended periods are left out.
    """
    banned = {code.removeprefix("no-") for code in restrictions(patient)}
    points = [
        (i, p)
        for i, p in enumerate(patient.get("telecom") or [])
        if isinstance(p, dict) and isinstance(p.get("value"), str) and p["value"].strip()
    ]
    ranked = sorted(points, key=lambda ip: (_rank(ip[1]), ip[0]))
    out: list[Reachable] = []
    for _, point in ranked:
        channel = _channel_of(point)
        if channel is None or channel in banned or point.get("use") == "old":
            continue
        if _ended(point, today) or (requested and channel != requested):
            continue
        if not any(r.channel == channel for r in out):
            out.append(Reachable(channel, point["value"].strip()))
    return out


def _rank(point: Mapping[str, Any]) -> int:
    rank = point.get("rank")
    return rank if isinstance(rank, int) and rank > 0 else 1_000_000


def language(patient: Mapping[str, Any], available: tuple[str, ...]) -> str:
    """The patient's preferred language among ``available`` (first of them if none fits)."""
    comms = [c for c in patient.get("communication") or [] if isinstance(c, dict)]
    comms.sort(key=lambda c: not c.get("preferred"))
    for comm in comms:
        for coding in (comm.get("language") or {}).get("coding") or []:
            code = str(coding.get("code") or "").lower().split("-")[0]
            if code in available:
                return code
    return available[0]
