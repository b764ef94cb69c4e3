"""Data set-up helpers: Epic-style long ids and bulk appointments for load tests."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.state import SandboxState

# Types whose ids the epic profile stretches beyond 64 characters. Nothing in the
# population is keyed on them except references, which are rewritten below.
_LONG_ID_TYPES = ("Appointment", "Coverage", "Encounter")


def long_id(rtype: str, rid: str) -> str:
    """A stable Epic-like id (base64-ish, dotted) of 70+ characters for `rid`."""
    digest = hashlib.sha256(f"{rtype}/{rid}".encode()).hexdigest()
    return f"e{digest[:32]}.{digest[32:64]}.{rid[:16]}".replace("_", "-")[:80]


def epic_long_ids(population: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Give every other Appointment/Coverage/Encounter an id longer than 64 characters.

    Epic's FHIR ids regularly exceed R4's 64-character limit; clients that validate ids
    strictly or store them in VARCHAR(64) break on them.
    """
    mapping: dict[str, str] = {}
    for rtype in _LONG_ID_TYPES:
        for i, res in enumerate(population.get(rtype, [])):
            if i % 2 == 0 and len(str(res.get("id", ""))) <= 64:
                new = long_id(rtype, str(res["id"]))
                mapping[f"{rtype}/{res['id']}"] = f"{rtype}/{new}"
                res["id"] = new

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            out = {k: rewrite(v) for k, v in value.items()}
            ref = out.get("reference")
            if isinstance(ref, str):
                for old, new in mapping.items():
                    if ref == old or ref.endswith("/" + old):
                        out["reference"] = ref[: len(ref) - len(old)] + new
                        break
            return out
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    return {rtype: [rewrite(r) for r in resources] for rtype, resources in population.items()}


def generated_appointments(
    state: SandboxState, day: dt.date, count: int, location: str | None, batch: int
) -> Iterator[dict[str, Any]]:
    """`count` booked appointments on `day` across the stored patients (fixtures' generator).

    Ids carry the day and a batch number, so repeated calls add rather than overwrite.
    """
    from fixtures.population import generate_appointments

    patients = list(state.store.all_of("Patient"))
    practitioners = list(state.store.all_of("Practitioner"))
    if location is not None:
        loc = state.store.get("Location", location)
        if loc is None:
            raise LookupError(f"no Location/{location}")
        locations = [loc]
    else:
        locations = list(state.store.all_of("Location"))
    prefix = f"gen-{day:%Y%m%d}-{batch}-"
    for res in generate_appointments(
        day,
        count,
        patients,
        practitioners,
        locations,
        tz=state.options.timezone,
        seed=state.options.seed + batch,
    ):
        res["id"] = prefix + str(res["id"]).removeprefix("appt-gen-")
        yield res
