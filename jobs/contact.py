"""Who can be reached how: channel choice from a FHIR Patient, pure (no I/O, no clock).

Contact restrictions are not core FHIR R4; CareDesk reads them from its own Patient
extension (see ``fixtures.population`` and ``fhir_mappers.patient``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhir_mappers.contact import pick_language
from fhir_mappers.patient import to_contact

CHANNELS = ("sms", "email")


@dataclass(frozen=True)
class Reachable:
    channel: str  # sms | email
    address: str


def reachable(
    patient: Mapping[str, Any], *, now: dt.datetime, requested: str | None = None
) -> list[Reachable]:
    """Channels the patient can be messaged on, best first.

    Built on ``fhir_mappers.patient.to_contact``, the same reading of telecom, rank,
    periods and contact restrictions that the sidebar shows, so a message goes where the
    sidebar says the patient prefers. The patient's preferred channel comes first, then
    telecom ``rank``. ``requested`` narrows the list to that channel.
    """
    contact = to_contact(patient, now=now)
    banned = {code.removeprefix("no-") for code in contact.restrictions}
    candidates: list[tuple[int, int, str, str]] = []
    for point in (*contact.phones, *contact.emails):
        if point.system == "email":
            channel = "email"
        elif point.system == "sms" or point.use == "mobile":
            channel = "sms"  # home and work lines are called, not texted
        else:
            continue
        rank = point.rank if point.rank and point.rank > 0 else 1_000_000
        first = 0 if channel == contact.preferred_channel else 1
        candidates.append((first, rank, channel, point.value))
    out: list[Reachable] = []
    # Stable sort: equal ranks keep the EHR's order.
    for _, _, channel, address in sorted(candidates, key=lambda c: (c[0], c[1])):
        if channel in banned or (requested and channel != requested):
            continue
        if not any(r.channel == channel for r in out):
            out.append(Reachable(channel, address))
    return out


def language(patient: object, available: tuple[str, ...]) -> str:
    """The patient's preferred language among ``available`` (first of them if none fits):
    the sidebar's reading of ``communication`` (``fhir_mappers.contact``)."""
    return pick_language(patient, available, default=available[0])
