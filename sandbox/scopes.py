"""SMART scopes: v1 (`patient/Appointment.read`) and v2 (`patient/Appointment.rs`).

Parsing, granting (requested scopes narrowed to what a client may have) and checking
one interaction against a granted set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_RESOURCE_SCOPE = re.compile(
    r"^(?P<ctx>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\."
    r"(?P<perm>read|write|\*|c?r?u?d?s?)(?:\?(?P<query>.+))?$"
)
# Scopes that are not about resources: passed through when the client may have them.
CONTEXT_SCOPES = frozenset(
    {
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
    }
)


@dataclass(frozen=True)
class ResourceScope:
    context: str  # patient | user | system
    resource_type: str  # a type or "*"
    permissions: str  # v2 letters, e.g. "rs"
    query: str | None = None

    def covers(self, other: ResourceScope) -> bool:
        return (
            self.context == other.context
            and self.resource_type in ("*", other.resource_type)
            and set(other.permissions) <= set(self.permissions)
            and (self.query is None or self.query == other.query)
        )


def parse_scope(scope: str) -> ResourceScope | None:
    """A resource scope, or None for context scopes and anything unrecognised."""
    match = _RESOURCE_SCOPE.match(scope)
    if not match or not match.group("perm"):
        return None
    perm = match.group("perm")
    return ResourceScope(
        match.group("ctx"), match.group("type"), _V1.get(perm, perm), match.group("query")
    )


def grant(requested: Iterable[str], allowed: str | None) -> list[str]:
    """The requested scopes the client may have, in request order.

    Scopes outside the registration are dropped from the grant, not an error (SMART lets
    the server grant less than asked; the token response's `scope` says what was granted).
    `allowed=None` means the registration does not restrict scopes.
    """
    out: list[str] = []
    allowed_list = allowed.split() if allowed is not None else None
    allowed_resources = [s for s in map(parse_scope, allowed_list or []) if s]
    for scope in requested:
        if scope in out:
            continue
        if allowed_list is None or scope in allowed_list:
            if scope in CONTEXT_SCOPES or parse_scope(scope) is not None:
                out.append(scope)
            continue
        parsed = parse_scope(scope)
        if parsed and any(a.covers(parsed) for a in allowed_resources):
            out.append(scope)
    return out


def is_subset(requested: Iterable[str], granted: Iterable[str]) -> bool:
    """Whether every requested scope is within the granted ones (refresh down-scoping)."""
    granted_list = list(granted)
    resources = [s for s in map(parse_scope, granted_list) if s]
    for scope in requested:
        if scope in granted_list:
            continue
        parsed = parse_scope(scope)
        if parsed is None or not any(g.covers(parsed) for g in resources):
            return False
    return True


@dataclass(frozen=True)
class Access:
    """What a set of scopes allows for one interaction on one type."""

    allowed: bool
    # Set when only patient/ scopes allow it: the resource must be in this compartment.
    patient_only: bool = False
    # v2 query restrictions (`patient/Observation.rs?category=x`) of the scopes in use.
    queries: tuple[str, ...] = ()


def access(granted: Iterable[str], resource_type: str, letter: str, has_patient: bool) -> Access:
    """Check interaction `letter` (c r u d s) on `resource_type`.

    user/ and system/ scopes allow every resource of the type (the sandbox's users may see
    all patients); patient/ scopes only the launch patient's compartment, and nothing at
    all when the token carries no patient.
    """
    wide: list[ResourceScope] = []
    narrow: list[ResourceScope] = []
    for scope in map(parse_scope, granted):
        if scope is None or scope.resource_type not in ("*", resource_type):
            continue
        if letter not in scope.permissions:
            continue
        (narrow if scope.context == "patient" else wide).append(scope)
    if not has_patient:
        narrow = []
    if any(s.query is None for s in wide):
        return Access(True)
    if wide and not narrow:
        return Access(True, queries=tuple(s.query for s in wide if s.query))
    if narrow:
        unrestricted = any(s.query is None for s in narrow)
        queries = () if unrestricted else tuple(s.query for s in narrow if s.query)
        return Access(True, patient_only=True, queries=queries)
    return Access(False)
