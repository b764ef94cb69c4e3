"""SMART scope syntax: v1 <-> v2 translation and "is what I asked for covered by the grant".

v1: ``patient/Observation.read`` (read | write | *). v2: ``patient/Observation.rs`` (some of
c r u d s, in that order) optionally followed by ``?param=value`` restrictions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RESOURCE_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<resource>[A-Za-z*]+)\."
    r"(?P<perms>read|write|\*|[cruds]+)(?P<query>\?.*)?$"
)
_V1_PERMS = {"read": "rs", "write": "cud", "*": "cruds"}
_ORDER = "cruds"


@dataclass(frozen=True)
class ResourceScope:
    context: str
    resource: str
    perms: frozenset[str]
    query: str | None

    def v2(self) -> str:
        letters = "".join(p for p in _ORDER if p in self.perms)
        return f"{self.context}/{self.resource}.{letters}{self.query or ''}"

    def v1(self) -> str:
        reads = self.perms & {"r", "s"}
        writes = self.perms & {"c", "u", "d"}
        # v1 cannot say "search but not read" or "create but not delete": round up to
        # the v1 word that covers what was asked, and drop v2 query restrictions (v1
        # servers reject them). The server's granted scope is what counts afterwards.
        if reads and writes:
            perm = "*"
        elif writes:
            perm = "write"
        else:
            perm = "read"
        return f"{self.context}/{self.resource}.{perm}"

    def covers(self, other: ResourceScope) -> bool:
        return (
            self.context == other.context
            and self.resource in ("*", other.resource)
            and self.perms >= other.perms
            and (self.query is None or self.query == other.query)
        )


def parse_resource_scope(scope: str) -> ResourceScope | None:
    match = _RESOURCE_SCOPE.match(scope)
    if not match:
        return None
    raw = match.group("perms")
    perms = _V1_PERMS.get(raw, raw)
    if raw not in _V1_PERMS and (
        list(raw) != sorted(raw, key=_ORDER.index) or len(set(raw)) != len(raw)
    ):
        return None
    return ResourceScope(
        context=match.group("context"),
        resource=match.group("resource"),
        perms=frozenset(perms),
        query=match.group("query"),
    )


def translate(scopes: str, *, v2: bool) -> str:
    """Rewrite resource scopes to v2 (``v2=True``) or v1 syntax; keep all others as they are."""
    out: list[str] = []
    for scope in scopes.split():
        parsed = parse_resource_scope(scope)
        text = scope if parsed is None else (parsed.v2() if v2 else parsed.v1())
        if text not in out:
            out.append(text)
    return " ".join(out)


def missing_scopes(
    requested: str,
    granted: str,
    *,
    has_refresh_token: bool = False,
    has_id_token: bool = False,
    has_fhir_user: bool = False,
    has_patient: bool = False,
    has_encounter: bool = False,
    has_context: bool = False,
) -> list[str]:
    """Requested scopes the grant does not cover, in request order.

    Resource scopes compare by meaning (v1 ``read`` is covered by v2 ``rs`` and by
    ``patient/*.read``). Scopes that ask for something the token response shows instead
    of echoing count as granted when the thing is there: many servers drop ``launch``
    from ``scope`` but send the context, and Epic issues a refresh token without listing
    ``offline_access``.
    """
    granted_set = set(granted.split())
    granted_resource = [p for p in (parse_resource_scope(s) for s in granted_set) if p]
    evidence = {
        "offline_access": has_refresh_token,
        "online_access": has_refresh_token,
        "openid": has_id_token,
        "fhirUser": has_fhir_user,
        "profile": has_fhir_user,
        "launch/patient": has_patient,
        "launch/encounter": has_encounter,
        "launch": has_patient or has_encounter or has_context,
    }
    missing: list[str] = []
    for scope in requested.split():
        if scope in granted_set or evidence.get(scope, False):
            continue
        parsed = parse_resource_scope(scope)
        if parsed is not None and any(g.covers(parsed) for g in granted_resource):
            continue
        missing.append(scope)
    return missing
