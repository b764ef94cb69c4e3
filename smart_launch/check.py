"""``caredesk ehr check``: an integration engineer's SMART/FHIR conformance report.

Each line is one capability with a status and the CareDesk features that depend on it;
the verdict says which features will work with this EHR. Only the HTTP calls an
unauthenticated client can make are used (discovery and the CapabilityStatement).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import requests

from ._http import json_or_none
from .config import Registration
from .discovery import (
    SmartConfiguration,
    parse_capability_statement,
    parse_smart_configuration,
)
from .errors import DiscoveryError

Status = Literal["supported", "missing", "unknown"]

LAUNCH = "launch"
SIDEBAR = "sidebar context"
REFERRALS = "referrals"
SURVEY = "survey write-back"
BACKEND = "backend jobs"
FEATURES = (LAUNCH, SIDEBAR, REFERRALS, SURVEY, BACKEND)
# Without these CareDesk cannot run at all; the others switch single features off.
DEFAULT_REQUIRED = frozenset({LAUNCH, SIDEBAR})
CHECK_TIMEOUT = 10.0


@dataclass(frozen=True)
class CheckLine:
    name: str
    status: Status
    detail: str = ""
    features: tuple[str, ...] = ()
    # "any of" groups: the feature needs one line of the group, not all of them.
    group: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "features": list(self.features),
        }


@dataclass(frozen=True)
class CheckReport:
    iss: str
    lines: tuple[CheckLine, ...]
    required_features: frozenset[str] = DEFAULT_REQUIRED
    discovery_source: str | None = None
    fhir_version: str | None = None
    errors: tuple[str, ...] = field(default=())

    def line(self, name: str) -> CheckLine:
        return next(line for line in self.lines if line.name == name)

    def feature_blockers(self) -> dict[str, list[str]]:
        """Feature -> names of missing lines that stop it."""
        blockers: dict[str, list[str]] = {f: [] for f in FEATURES}
        groups: dict[tuple[str, str], list[CheckLine]] = {}
        # Only "missing" blocks: "unknown" (e.g. no smart-configuration to list
        # capabilities) is reported, but SMART 1.0 servers work without saying so.
        for line in self.lines:
            for feature in line.features:
                if line.group:
                    groups.setdefault((feature, line.group), []).append(line)
                elif line.status == "missing":
                    blockers[feature].append(line.name)
        for (feature, _), members in groups.items():
            if all(m.status == "missing" for m in members):
                blockers[feature].append(" or ".join(m.name for m in members))
        return blockers

    def verdict(self) -> dict[str, bool]:
        return {feature: not names for feature, names in self.feature_blockers().items()}

    @property
    def exit_code(self) -> int:
        """0: every required feature works; 1: a required capability is missing;
        2: the EHR could not be examined at all (discovery and metadata both failed)."""
        if self.discovery_source is None and self.fhir_version is None:
            return 2
        verdict = self.verdict()
        return 0 if all(verdict[f] for f in self.required_features) else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "iss": self.iss,
            "discovery_source": self.discovery_source,
            "fhir_version": self.fhir_version,
            "lines": [line.to_json() for line in self.lines],
            "features": {
                feature: {"works": works, "blocked_by": self.feature_blockers()[feature]}
                for feature, works in self.verdict().items()
            },
            "required_features": sorted(self.required_features),
            "errors": list(self.errors),
            "exit_code": self.exit_code,
        }

    def render_text(self) -> str:
        marks = {"supported": "ok ", "missing": "NO ", "unknown": "?? "}
        width = max((len(line.name) for line in self.lines), default=10)
        out = [f"EHR {self.iss}"]
        if self.discovery_source:
            out.append(f"discovery: {self.discovery_source}")
        out.extend(f"error: {e}" for e in self.errors)
        out.append("")
        for line in self.lines:
            features = f"  [{', '.join(line.features)}]" if line.features else ""
            out.append(f"{marks[line.status]} {line.name:<{width}}  {line.detail}{features}")
        out.append("")
        out.append("Verdict:")
        blockers = self.feature_blockers()
        for feature, works in self.verdict().items():
            required = " (required)" if feature in self.required_features else ""
            unverified = [
                line.name
                for line in self.lines
                if feature in line.features and line.status == "unknown"
            ]
            if works and unverified:
                out.append(
                    f"  {feature}{required}: should work (unverified: {', '.join(unverified)})"
                )
            elif works:
                out.append(f"  {feature}{required}: will work")
            else:
                out.append(
                    f"  {feature}{required}: will NOT work - missing {', '.join(blockers[feature])}"
                )
        out.append("")
        out.append("PASS" if self.exit_code == 0 else "FAIL")
        return "\n".join(out) + "\n"

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def _get(http: requests.Session, url: str, accept: str) -> tuple[int | None, Any]:
    try:
        response = http.get(
            url, headers={"Accept": accept}, timeout=CHECK_TIMEOUT, allow_redirects=False
        )
    except requests.RequestException as exc:
        return None, type(exc).__name__
    with response:
        return response.status_code, json_or_none(response)


def _resources(capstmt: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], set[str]]:
    resources: dict[str, dict[str, Any]] = {}
    system_interactions: set[str] = set()
    for rest in capstmt.get("rest") or []:
        if rest.get("mode", "server") != "server":
            continue
        for res in rest.get("resource") or []:
            if isinstance(res.get("type"), str):
                resources[res["type"]] = res
        for interaction in rest.get("interaction") or []:
            if isinstance(interaction.get("code"), str):
                system_interactions.add(interaction["code"])
    return resources, system_interactions


def _interaction(resources: Mapping[str, Mapping[str, Any]], rtype: str, code: str) -> bool:
    res = resources.get(rtype) or {}
    return any(i.get("code") == code for i in res.get("interaction") or [])


def _search_param(resources: Mapping[str, Mapping[str, Any]], rtype: str, name: str) -> bool:
    res = resources.get(rtype) or {}
    return any(p.get("name") == name for p in res.get("searchParam") or [])


def check_ehr(
    reg_or_iss: Registration | str,
    *,
    http: requests.Session,
    required_features: frozenset[str] = DEFAULT_REQUIRED,
) -> CheckReport:
    """Examine the EHR at a registration's iss (or an operator-typed iss, from the CLI).

    Never call this with an iss taken from a web request: it fetches what it is given.
    """
    reg = reg_or_iss if isinstance(reg_or_iss, Registration) else None
    base = (reg.iss if reg else str(reg_or_iss)).rstrip("/")
    lines: list[CheckLine] = []
    errors: list[str] = []

    well_known_url = f"{base}/.well-known/smart-configuration"
    status, doc = _get(http, well_known_url, "application/json")
    conf: SmartConfiguration | None = None
    if status == 200 and isinstance(doc, dict):
        try:
            conf = parse_smart_configuration(doc, fhir_base=base, document_url=well_known_url)
        except DiscoveryError as exc:
            errors.append(exc.message)
    lines.append(
        CheckLine(
            ".well-known/smart-configuration",
            "supported" if conf else "missing",
            "found" if conf else f"not available (HTTP {status})",
            (LAUNCH,),
            group="discovery",
        )
    )

    metadata_url = f"{base}/metadata"
    status, capstmt = _get(http, metadata_url, "application/fhir+json")
    if not (status == 200 and isinstance(capstmt, dict)):
        errors.append(f"CapabilityStatement not available (HTTP {status})")
        capstmt = {}
    cs_conf: SmartConfiguration | None = None
    try:
        cs_conf = parse_capability_statement(capstmt, fhir_base=base, document_url=metadata_url)
    except DiscoveryError:
        cs_conf = None
    lines.append(
        CheckLine(
            "CapabilityStatement oauth-uris",
            "supported" if cs_conf else "missing",
            "authorize and token URIs listed" if cs_conf else "no oauth-uris extension",
            (LAUNCH,),
            group="discovery",
        )
    )
    effective = conf or cs_conf
    source = "well-known" if conf else ("capability-statement (fallback)" if cs_conf else None)
    if effective is None:
        errors.append("No SMART endpoints found: CareDesk cannot launch against this EHR.")
    lines.append(
        CheckLine(
            "authorization endpoint",
            "supported" if effective else "missing",
            effective.authorization_endpoint if effective else "",
            (LAUNCH,),
        )
    )
    lines.append(
        CheckLine(
            "token endpoint",
            "supported" if effective else "missing",
            effective.token_endpoint if effective else "",
            (LAUNCH,),
        )
    )

    caps = conf.capabilities if conf else (cs_conf.capabilities if cs_conf else frozenset())
    known_caps = conf is not None or bool(caps)

    def cap_line(
        capability: str, name: str, features: tuple[str, ...], group: str | None = None
    ) -> CheckLine:
        if capability in caps:
            return CheckLine(name, "supported", f"capability {capability}", features, group)
        if not known_caps:
            return CheckLine(name, "unknown", "no SMART capabilities published", features, group)
        return CheckLine(name, "missing", f"{capability} not advertised", features, group)

    lines.append(cap_line("launch-ehr", "EHR launch", (LAUNCH,), group="launch mode"))
    lines.append(cap_line("launch-standalone", "standalone launch", (LAUNCH,), group="launch mode"))
    client_types = (
        [reg.client_type]
        if reg
        else ["public", "confidential-symmetric", "confidential-asymmetric"]
    )
    for client_type in client_types:
        lines.append(
            cap_line(
                f"client-{client_type}",
                f"client type {client_type}",
                (LAUNCH,) if reg else (),
            )
        )
    lines.append(cap_line("context-ehr-patient", "patient context (EHR launch)", (SIDEBAR,)))
    lines.append(cap_line("sso-openid-connect", "OpenID Connect (fhirUser)", ()))

    if conf is not None:
        s256 = "S256" in conf.code_challenge_methods
        lines.append(
            CheckLine(
                "PKCE S256 advertised",
                "supported" if s256 else "missing",
                "code_challenge_methods_supported includes S256"
                if s256
                else "not advertised (CareDesk sends S256 anyway)",
            )
        )
        grants = set(conf.grant_types)
        for grant, features in (
            ("authorization_code", (LAUNCH,)),
            ("refresh_token", ()),
            ("client_credentials", (BACKEND,)),
        ):
            lines.append(
                CheckLine(
                    f"grant {grant}",
                    "supported" if grant in grants else "missing",
                    "grant_types_supported" if grant in grants else "not in grant_types_supported",
                    features,
                )
            )
    else:
        lines.append(CheckLine("PKCE S256 advertised", "unknown", "no smart-configuration"))
        for grant, features in (
            ("authorization_code", ()),
            ("refresh_token", ()),
            ("client_credentials", (BACKEND,)),
        ):
            lines.append(CheckLine(f"grant {grant}", "unknown", "no smart-configuration", features))

    version = capstmt.get("fhirVersion") if capstmt else None
    lines.append(
        CheckLine(
            "FHIR R4",
            "supported"
            if isinstance(version, str) and version.startswith("4.0")
            else ("unknown" if not capstmt else "missing"),
            f"fhirVersion {version}" if version else "no fhirVersion",
            (SIDEBAR, REFERRALS, SURVEY),
        )
    )

    resources, system = _resources(capstmt or {})
    have_cs = bool(capstmt)

    def fhir_line(
        name: str, ok: bool, detail: str, features: tuple[str, ...], group: str | None = None
    ) -> CheckLine:
        if not have_cs:
            return CheckLine(name, "unknown", "no CapabilityStatement", features, group)
        return CheckLine(name, "supported" if ok else "missing", detail, features, group)

    lines.append(
        fhir_line(
            "Patient read", _interaction(resources, "Patient", "read"), "Patient.read", (SIDEBAR,)
        )
    )
    for rtype in ("Appointment", "Coverage"):
        lines.append(
            fhir_line(
                f"{rtype} search",
                _interaction(resources, rtype, "search-type"),
                f"{rtype}.search-type",
                (SIDEBAR,),
            )
        )
    lines.append(
        fhir_line(
            "batch",
            "batch" in system,
            "system interaction batch (else parallel requests)",
            (),
        )
    )
    lines.append(
        fhir_line(
            "QuestionnaireResponse create",
            _interaction(resources, "QuestionnaireResponse", "create"),
            "QuestionnaireResponse.create",
            (SURVEY,),
        )
    )
    qr = resources.get("QuestionnaireResponse") or {}
    conditional = bool(qr.get("conditionalCreate"))
    lines.append(
        fhir_line(
            "QuestionnaireResponse conditional create",
            conditional,
            "conditionalCreate (If-None-Exist)",
            (SURVEY,),
            group="duplicate guard",
        )
    )
    lines.append(
        fhir_line(
            "QuestionnaireResponse search by identifier",
            _interaction(resources, "QuestionnaireResponse", "search-type")
            and _search_param(resources, "QuestionnaireResponse", "identifier"),
            "search-type with the identifier parameter",
            (SURVEY,),
            group="duplicate guard",
        )
    )
    for rtype in ("Task", "ServiceRequest"):
        lines.append(
            fhir_line(
                f"{rtype} create",
                _interaction(resources, rtype, "create"),
                f"{rtype}.create",
                (REFERRALS,),
            )
        )
    return CheckReport(
        iss=base,
        lines=tuple(lines),
        required_features=required_features,
        discovery_source=source,
        fhir_version=version if isinstance(version, str) else None,
        errors=tuple(errors),
    )
