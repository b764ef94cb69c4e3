"""``caredesk ehr check``: an integration engineer's report of what works with an EHR,
proved where it can be without writing patient data.

The check is a table of small checks (:data:`CHECKS`); each yields one line with a
result:

- ``verified``: CareDesk did it (fetched discovery, had a made-up code refused as
  ``invalid_grant`` with its own client credentials, got a backend token, read
  ``Patient?_count=1`` with it, found the CSAT Questionnaire...);
- ``advertised``: the EHR says it can (CapabilityStatement, smart-configuration), but
  proving it would mean writing (a QuestionnaireResponse create) or a user's launch;
- ``failed``: with the reason, whose fault (``party``) and the EHR's own words
  (``ehr_text``);
- ``skipped``: not examined, and why (no backend client registered, no token to read
  with).

Each feature's verdict follows from the lines it needs (each row of :data:`CHECKS` names
the features that need its line): failed if one fails (or every line of an any-of
group), not checked if one was skipped, advertised if a line that could have been
proved was only advertised, else verified.
Lines that can never be more than advertised (writes, capabilities) do not hold a
feature back from "verified". Exit codes are :data:`EXIT_CODES`.

JSON shape (:meth:`CheckReport.to_json`), kept compatible with what earlier reports
stored: each line has ``name``, ``result`` (the four above), ``status`` (the older
vocabulary: ``supported`` for verified/advertised, ``missing`` for failed, ``unknown``
for skipped), ``detail``, ``features``, ``group``, ``party``, ``ehr_text``; each feature
has ``verdict``, ``works`` (``verdict != "failed"``), ``blocked_by`` (failed line names),
``unverified`` and ``skipped`` (line names).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import requests

from . import features as feat
from ._http import json_or_none
from ._token_endpoint import client_auth, post_token
from .backend import backend_token
from .config import Registration
from .discovery import (
    SmartConfiguration,
    parse_capability_statement,
    parse_smart_configuration,
)
from .errors import AuthFailed, DiscoveryError, GrantRejected, Party, SmartError
from .features import Feature
from .fhir import FhirClient, find_canonical
from .scopes import missing_scopes
from .tokens import TokenSet

Result = Literal["verified", "advertised", "failed", "skipped"]
Verdict = Literal["verified", "advertised", "failed", "skipped"]

# The features the report judges: CareDesk's (``smart_launch.features``, by title; the
# EHR check's own reads only let it prove the others), the launch, and the backend jobs.
_JUDGED = tuple(f for f in feat.FEATURES if f is not feat.EHR_CHECK)
LAUNCH = "launch"
BACKEND = "backend jobs"
FEATURES = (LAUNCH, *(f.title for f in _JUDGED), BACKEND)
SIDEBAR = feat.SIDEBAR.title
REFERRALS = feat.REFERRALS.title
SURVEY = feat.SURVEY_WRITE_BACK.title
SURVEY_PUBLISH = feat.SURVEY_PUBLISH.title
CONFIRMATION = feat.REMINDER_CONFIRMATION.title
# Without these CareDesk cannot run at all; the others switch single features off.
DEFAULT_REQUIRED = frozenset({LAUNCH, SIDEBAR})
CHECK_TIMEOUT = 10.0
EXIT_CODES: Mapping[int, str] = {
    0: "every required feature verified",
    1: "a required feature failed or could not be verified",
    2: "the EHR cannot be reached",
}
REACHABLE = "EHR reachable"
# Features that run in a user's launch, and those whose jobs run with the backend client
# (else a launch's refresh token).
_LAUNCHED = tuple(f for f in _JUDGED if f.context == "user")
_JOBS = tuple(f for f in _JUDGED if f.context != "user")
# Resource types whose search the check proves with the backend token, in report order.
_SEARCHED = (
    "Patient",
    "Appointment",
    "Coverage",
    "Practitioner",
    "Location",
    "Organization",
    "Encounter",
)
_LEGACY_STATUS = {
    "verified": "supported",
    "advertised": "supported",
    "failed": "missing",
    "skipped": "unknown",
}
_MARKS = {"verified": "ok ", "advertised": "adv", "failed": "NO ", "skipped": "-- "}


@dataclass(frozen=True)
class CheckLine:
    name: str
    result: Result
    detail: str = ""
    features: tuple[str, ...] = ()
    # "any of" groups: the feature needs one line of the group, not all of them.
    group: str | None = None
    # False for what can never be more than advertised without writing (a create) or a
    # user's launch: an advertised one does not hold a feature back from "verified".
    provable: bool = True
    party: Party | None = None
    ehr_text: str | None = None

    @property
    def status(self) -> str:
        """The older vocabulary (supported / missing / unknown) earlier reports used."""
        return _LEGACY_STATUS[self.result]

    def to_json(self) -> dict[str, Any]:
        return _as_json(self, _LINE_JSON)


# What a line's and a verdict's JSON hold, in this order.
_LINE_JSON = ("name", "result", "status", "detail", "features", "group", "party", "ehr_text")
_VERDICT_JSON = ("verdict", "works", "blocked_by", "unverified", "skipped")


def _as_json(obj: object, names: tuple[str, ...]) -> dict[str, Any]:
    """The attributes ``names`` of ``obj`` as JSON values (a tuple becomes a list)."""
    values = {name: getattr(obj, name) for name in names}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _failed(name: str, exc: SmartError, detail: str | None = None) -> CheckLine:
    return CheckLine(name, "failed", detail or exc.summary, party=exc.party, ehr_text=exc.ehr_text)


@dataclass(frozen=True)
class FeatureVerdict:
    verdict: Verdict
    blocked_by: tuple[str, ...] = ()
    unverified: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()

    @property
    def works(self) -> bool:
        """Nothing stops the feature (verified, advertised or not checked)."""
        return self.verdict != "failed"

    def to_json(self) -> dict[str, Any]:
        return _as_json(self, _VERDICT_JSON)


@dataclass(frozen=True)
class CheckReport:
    iss: str
    lines: tuple[CheckLine, ...]
    required_features: frozenset[str] = DEFAULT_REQUIRED
    discovery_source: str | None = None
    fhir_version: str | None = None
    errors: tuple[str, ...] = field(default=())
    reachable: bool = True

    def line(self, name: str) -> CheckLine:
        return next(line for line in self.lines if line.name == name)

    def feature_verdicts(self) -> dict[str, FeatureVerdict]:
        out: dict[str, FeatureVerdict] = {}
        for feature in FEATURES:
            needed = [line for line in self.lines if feature in line.features]
            blocked: list[str] = []
            unverified: list[str] = []
            skipped: list[str] = []
            groups: dict[str, list[CheckLine]] = {}
            for line in needed:
                if line.group:
                    groups.setdefault(line.group, []).append(line)
                    continue
                if line.result == "failed":
                    blocked.append(line.name)
                elif line.result == "skipped":
                    skipped.append(line.name)
                elif line.result == "advertised" and line.provable:
                    unverified.append(line.name)
            for members in groups.values():
                results = {m.result for m in members}
                if results == {"failed"}:
                    blocked.append(" or ".join(m.name for m in members))
                elif "verified" not in results and "advertised" in results:
                    if any(m.provable for m in members if m.result == "advertised"):
                        unverified.append(" or ".join(m.name for m in members))
                elif not results & {"verified", "advertised"}:
                    skipped.append(" or ".join(m.name for m in members))
            verdict: Verdict = (
                "failed"
                if blocked or not needed
                else "skipped"
                if skipped
                else "advertised"
                if unverified
                else "verified"
            )
            out[feature] = FeatureVerdict(
                verdict, tuple(blocked), tuple(unverified), tuple(skipped)
            )
        return out

    def feature_blockers(self) -> dict[str, list[str]]:
        """Feature -> names of failed lines that stop it."""
        return {f: list(v.blocked_by) for f, v in self.feature_verdicts().items()}

    def verdict(self) -> dict[str, bool]:
        """Feature -> whether nothing stops it (verified, advertised or not checked)."""
        return {f: v.works for f, v in self.feature_verdicts().items()}

    @property
    def exit_code(self) -> int:
        """See :data:`EXIT_CODES`."""
        if not self.reachable:
            return 2
        verdicts = self.feature_verdicts()
        return 0 if all(verdicts[f].verdict == "verified" for f in self.required_features) else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "iss": self.iss,
            "reachable": self.reachable,
            "discovery_source": self.discovery_source,
            "fhir_version": self.fhir_version,
            "lines": [line.to_json() for line in self.lines],
            "features": {f: v.to_json() for f, v in self.feature_verdicts().items()},
            "required_features": sorted(self.required_features),
            "errors": list(self.errors),
            "exit_code": self.exit_code,
            "exit_codes": {str(k): v for k, v in EXIT_CODES.items()},
        }

    def render_text(self) -> str:
        """The report for a terminal, without a final newline (``click.echo`` adds it)."""
        if not self.reachable:
            # Nothing was examined: one line, not a table of features that all "fail".
            reason = self.errors[0] if self.errors else f"The EHR at {self.iss} cannot be reached."
            return f"UNREACHABLE (exit 2): {reason}"
        width = max((len(line.name) for line in self.lines), default=10)
        out = [f"EHR {self.iss}"]
        if self.discovery_source:
            out.append(f"discovery: {self.discovery_source}")
        out.extend(f"error: {e}" for e in self.errors)
        out.append("")
        for line in self.lines:
            features = f"  [{', '.join(line.features)}]" if line.features else ""
            said = f' (the EHR said: "{line.ehr_text}")' if line.ehr_text else ""
            out.append(f"{_MARKS[line.result]} {line.name:<{width}}  {line.detail}{said}{features}")
        out.append("")
        out.append("Verdict:")
        for feature, v in self.feature_verdicts().items():
            required = " (required)" if feature in self.required_features else ""
            if v.verdict == "verified":
                text = "will work"
            elif v.verdict == "advertised":
                text = f"should work (unverified: {', '.join(v.unverified)})"
            elif v.verdict == "skipped":
                text = f"not checked ({', '.join(v.skipped)} skipped)"
            else:
                text = f"will NOT work - {', '.join(v.blocked_by) or 'nothing checked'}"
            out.append(f"  {feature}{required}: {text}")
        out.append("")
        out.append(
            {0: "PASS", 1: "FAIL", 2: "UNREACHABLE"}[self.exit_code]
            + f" (exit {self.exit_code}: {EXIT_CODES[self.exit_code]})"
        )
        return "\n".join(out)

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2)


# --- what the checks share ------------------------------------------------------------


@dataclass
class Probe:
    """What the checks learn, in table order; later checks read what earlier ones found."""

    base: str
    http: requests.Session
    reg: Registration | None
    questionnaire: tuple[str, str] | None
    conf: SmartConfiguration | None = None
    cs_conf: SmartConfiguration | None = None
    capstmt: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    system_interactions: set[str] = field(default_factory=set)
    backend: TokenSet | None = None
    backend_error: SmartError | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def effective(self) -> SmartConfiguration | None:
        return self.conf or self.cs_conf

    @property
    def capabilities(self) -> frozenset[str]:
        conf = self.effective
        return conf.capabilities if conf else frozenset()

    def fhir(self) -> FhirClient | None:
        if self.backend is None:
            return None
        token = self.backend.access_token
        return FhirClient(self.base, lambda: token, session=self.http, timeout=CHECK_TIMEOUT)

    def interaction(self, rtype: str, code: str) -> bool:
        res = self.resources.get(rtype) or {}
        return any(i.get("code") == code for i in res.get("interaction") or [])

    def search_param(self, rtype: str, name: str) -> bool:
        res = self.resources.get(rtype) or {}
        return any(p.get("name") == name for p in res.get("searchParam") or [])


def _get(http: requests.Session, url: str, accept: str) -> tuple[int | None, Any]:
    """(status, parsed JSON); status None when the server could not be reached."""
    try:
        response = http.get(
            url, headers={"Accept": accept}, timeout=CHECK_TIMEOUT, allow_redirects=False
        )
    except requests.RequestException:
        return None, None
    with response:
        return response.status_code, json_or_none(response)


def _resources(capstmt: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], set[str]]:
    resources: dict[str, dict[str, Any]] = {}
    system_interactions: set[str] = set()
    for rest in capstmt.get("rest") or []:
        if not isinstance(rest, dict) or rest.get("mode", "server") != "server":
            continue
        for res in rest.get("resource") or []:
            if isinstance(res, dict) and isinstance(res.get("type"), str):
                resources[res["type"]] = res
        for interaction in rest.get("interaction") or []:
            if isinstance(interaction, dict) and isinstance(interaction.get("code"), str):
                system_interactions.add(interaction["code"])
    return resources, system_interactions


# --- the checks -------------------------------------------------------------------------


def check_well_known(p: Probe) -> CheckLine:
    url = f"{p.base}/.well-known/smart-configuration"
    status, doc = _get(p.http, url, "application/json")
    name = ".well-known/smart-configuration"
    if status == 200 and isinstance(doc, dict):
        try:
            p.conf = parse_smart_configuration(doc, fhir_base=p.base, document_url=url)
        except DiscoveryError as exc:
            p.errors.append(exc.summary)
            return _failed(name, exc)
        return CheckLine(name, "verified", "fetched and parsed")
    return CheckLine(name, "failed", f"not available (HTTP {status})", party="ehr")


def check_capability_statement(p: Probe) -> CheckLine:
    url = f"{p.base}/metadata"
    status, capstmt = _get(p.http, url, "application/fhir+json")
    name = "CapabilityStatement oauth-uris"
    if status == 200 and isinstance(capstmt, dict):
        p.capstmt = capstmt
        p.resources, p.system_interactions = _resources(capstmt)
    else:
        p.errors.append(f"CapabilityStatement not available (HTTP {status})")
    try:
        p.cs_conf = parse_capability_statement(p.capstmt, fhir_base=p.base, document_url=url)
    except DiscoveryError:
        return CheckLine(name, "failed", "no oauth-uris extension", party="ehr")
    return CheckLine(name, "verified", "authorize and token URIs listed")


def check_endpoints(p: Probe) -> CheckLine:
    conf = p.effective
    if conf is None:
        p.errors.append("No SMART endpoints found: CareDesk cannot launch against this EHR.")
        return CheckLine("SMART endpoints", "failed", "no authorize/token URIs", party="ehr")
    return CheckLine(
        "SMART endpoints",
        "verified",
        f"authorize {conf.authorization_endpoint}, token {conf.token_endpoint}",
    )


def check_fhir_r4(p: Probe) -> CheckLine:
    version = p.capstmt.get("fhirVersion")
    if not p.capstmt:
        return CheckLine("FHIR R4", "failed", "no CapabilityStatement", party="ehr")
    if isinstance(version, str) and version.startswith("4.0"):
        return CheckLine("FHIR R4", "verified", f"fhirVersion {version}")
    return CheckLine("FHIR R4", "failed", f"fhirVersion {version or 'missing'}", party="ehr")


def _capability(capability: str, name: str) -> Callable[[Probe], CheckLine]:
    def check(p: Probe) -> CheckLine:
        if capability in p.capabilities:
            return CheckLine(name, "advertised", f"capability {capability}", provable=False)
        if p.conf is None and not p.capabilities:
            return CheckLine(name, "skipped", "no SMART capabilities published", provable=False)
        return CheckLine(name, "failed", f"{capability} not advertised", provable=False)

    check.__name__ = f"check_capability_{capability}"
    return check


def check_client_type(p: Probe) -> CheckLine:
    if p.reg is None:
        return CheckLine("client type", "skipped", "no registration given", provable=False)
    return replace(
        _capability(f"client-{p.reg.client_type}", "client type")(p),
        detail=f"client-{p.reg.client_type}"
        + (" advertised" if f"client-{p.reg.client_type}" in p.capabilities else " not advertised"),
    )


def check_pkce(p: Probe) -> CheckLine:
    name = "PKCE S256 advertised"
    if p.conf is None:
        return CheckLine(name, "skipped", "no smart-configuration", provable=False)
    if "S256" in p.conf.code_challenge_methods:
        return CheckLine(name, "advertised", "code_challenge_methods_supported", provable=False)
    return CheckLine(name, "failed", "not advertised (CareDesk sends S256 anyway)", provable=False)


def _grant(grant: str) -> Callable[[Probe], CheckLine]:
    def check(p: Probe) -> CheckLine:
        name = f"grant {grant}"
        if p.conf is None:
            return CheckLine(name, "skipped", "no smart-configuration", provable=False)
        if grant in p.conf.grant_types:
            return CheckLine(name, "advertised", "grant_types_supported", provable=False)
        return CheckLine(name, "failed", "not in grant_types_supported", provable=False)

    check.__name__ = f"check_grant_{grant}"
    return check


def check_client_accepted(p: Probe) -> CheckLine:
    """Exchange a made-up code with the registration's own client credentials: a server
    that knows the client refuses the code (``invalid_grant``); one that does not refuses
    the client (``invalid_client``). Nothing is created either way."""
    name = "CareDesk's client accepted"
    conf = p.effective
    if p.reg is None:
        return CheckLine(name, "skipped", "no registration given")
    if conf is None:
        return CheckLine(name, "skipped", "no token endpoint")
    form = {
        "grant_type": "authorization_code",
        "code": f"caredesk-check-{secrets.token_urlsafe(12)}",
        "code_verifier": secrets.token_urlsafe(48),
    }
    if p.reg.redirect_uri:
        form["redirect_uri"] = p.reg.redirect_uri
    try:
        post_token(p.http, conf, form, client_auth(p.reg, conf))
    except GrantRejected:
        return CheckLine(name, "verified", "a made-up code was refused as invalid_grant")
    except AuthFailed as exc:
        return _failed(name, exc)
    return CheckLine(name, "failed", "the EHR accepted a made-up code", party="ehr")


def check_backend_token(p: Probe) -> CheckLine:
    name = "backend token"
    conf = p.effective
    if p.reg is None or not p.reg.backend_client_id or not p.reg.signing_keys:
        return CheckLine(
            name,
            "skipped",
            "no backend client registered (jobs use the launching user's refresh token)",
        )
    if conf is None:
        return CheckLine(name, "skipped", "no token endpoint")
    try:
        p.backend = backend_token(p.reg, conf, http=p.http)
    except SmartError as exc:
        p.backend_error = exc
        return _failed(name, exc)
    return CheckLine(
        name,
        "verified",
        f"client {p.reg.backend_client_id} granted: "
        + (p.backend.scope_granted or "(no scope listed)"),
    )


def _backend_scopes(feature: Feature) -> Callable[[Probe], CheckLine]:
    def check(p: Probe) -> CheckLine:
        name = f"backend scopes for {feature.title}"
        if p.backend is None:
            return CheckLine(name, "skipped", "no backend token")
        # What the EHR granted; a server that does not echo scope granted what was asked.
        granted = p.backend.scope_granted or p.backend.scope_requested
        missing = feature.missing(granted, "backend")
        if missing:
            return CheckLine(name, "failed", f"not granted: {' '.join(missing)}", party="caredesk")
        return CheckLine(name, "verified", "granted")

    check.__name__ = f"check_backend_scopes_{feature.name}"
    return check


def _user_scopes(feature: Feature) -> Callable[[Probe], CheckLine]:
    def check(p: Probe) -> CheckLine:
        name = f"launch scopes for {feature.title}"
        if p.reg is None:
            return CheckLine(name, "skipped", "no registration given")
        missing = feature.missing(p.reg.scopes, "user")
        if missing:
            return CheckLine(
                name,
                "failed",
                f"the registration does not ask for: {' '.join(missing)}",
                party="caredesk",
            )
        return CheckLine(name, "verified", "the registration asks for them")

    check.__name__ = f"check_user_scopes_{feature.name}"
    return check


def _read(rtype: str, interaction: str = "search-type") -> Callable[[Probe], CheckLine]:
    """Read ``rtype?_count=1`` with the backend token; else what the CapabilityStatement
    says. Nothing is written."""

    def check(p: Probe) -> CheckLine:
        name = f"{rtype} search"
        fhir = p.fhir()
        why = "no backend token to try it"
        if fhir is not None and p.backend is not None:
            granted = p.backend.scope_granted or p.backend.scope_requested
            if missing_scopes(f"system/{rtype}.s", granted):
                # A 403 here would say nothing about a user's launch: do not try.
                fhir, why = None, f"the backend token may not search {rtype}"
        if fhir is None:
            if not p.capstmt:
                return CheckLine(name, "skipped", f"{why}; no CapabilityStatement")
            if p.interaction(rtype, interaction):
                return CheckLine(name, "advertised", f"{rtype}.{interaction} listed ({why})")
            return CheckLine(name, "failed", f"{rtype}.{interaction} not listed", party="ehr")
        try:
            bundle = fhir.search(rtype, {"_count": "1"})
        except SmartError as exc:
            return _failed(name, exc)
        total = bundle.get("total")
        return CheckLine(
            name,
            "verified",
            f"read with the backend token ({total} found)" if total is not None else "read",
        )

    check.__name__ = f"check_read_{rtype}"
    return check


def check_qr_identifier_search(p: Probe) -> CheckLine:
    name = "QuestionnaireResponse search by identifier"
    fhir = p.fhir()
    if fhir is None:
        if not p.capstmt:
            return CheckLine(
                name, "skipped", "no token, no CapabilityStatement", group="duplicate guard"
            )
        ok = p.interaction("QuestionnaireResponse", "search-type") and p.search_param(
            "QuestionnaireResponse", "identifier"
        )
        return CheckLine(
            name,
            "advertised" if ok else "failed",
            "search-type with the identifier parameter",
            group="duplicate guard",
            party=None if ok else "ehr",
        )
    try:
        # A made-up identifier: the search must work and find nothing.
        fhir.search(
            "QuestionnaireResponse",
            {"identifier": f"urn:caredesk:check|{secrets.token_hex(8)}", "_count": "1"},
        )
    except SmartError as exc:
        return replace(_failed(name, exc), group="duplicate guard")
    return CheckLine(name, "verified", "searched with the backend token", group="duplicate guard")


def check_questionnaire(p: Probe) -> CheckLine:
    name = "CSAT Questionnaire"
    if p.questionnaire is None:
        return CheckLine(name, "skipped", "no Questionnaire to look for was given")
    url, version = p.questionnaire
    fhir = p.fhir()
    if fhir is None:
        return CheckLine(name, "skipped", "no backend token to search with")
    try:
        found = find_canonical(fhir, "Questionnaire", url, version)
    except SmartError as exc:
        return _failed(name, exc)
    if found is None:
        return CheckLine(
            name,
            "failed",
            f"{url} version {version} is not on the EHR: run `caredesk survey publish`",
            party="caredesk",
        )
    return CheckLine(name, "verified", f"Questionnaire/{found.get('id')} ({url}|{version})")


def _write(
    rtype: str, name: str | None = None, code: str = "create"
) -> Callable[[Probe], CheckLine]:
    """Writes are never tried: what the CapabilityStatement says is all there is."""

    def check(p: Probe) -> CheckLine:
        line = name or f"{rtype} {code}"
        if not p.capstmt:
            return CheckLine(line, "skipped", "no CapabilityStatement", provable=False)
        ok = p.interaction(rtype, code)
        return CheckLine(
            line,
            "advertised" if ok else "failed",
            f"{rtype}.{code}" + ("" if ok else " not listed"),
            provable=False,
            party=None if ok else "ehr",
        )

    check.__name__ = f"check_write_{rtype}_{code}"
    return check


def check_qr_conditional_create(p: Probe) -> CheckLine:
    name = "QuestionnaireResponse conditional create"
    if not p.capstmt:
        return CheckLine(
            name, "skipped", "no CapabilityStatement", provable=False, group="duplicate guard"
        )
    qr = p.resources.get("QuestionnaireResponse") or {}
    ok = bool(qr.get("conditionalCreate")) and p.interaction("QuestionnaireResponse", "create")
    return CheckLine(
        name,
        "advertised" if ok else "failed",
        "conditionalCreate (If-None-Exist)",
        provable=False,
        group="duplicate guard",
        party=None if ok else "ehr",
    )


def check_batch(p: Probe) -> CheckLine:
    if not p.capstmt:
        return CheckLine("batch", "skipped", "no CapabilityStatement", provable=False)
    ok = "batch" in p.system_interactions
    return CheckLine(
        "batch",
        "advertised" if ok else "failed",
        "system interaction batch (else parallel requests)",
        provable=False,
    )


def _reading(rtype: str) -> tuple[str, ...]:
    """The judged features that read or search ``rtype``: they need its search line."""
    return tuple(f.title for f in _JUDGED if f.reads(rtype))


# The table: (check, features that need its line, "any of" group). Order is the report's
# order, and later checks use what earlier ones found (the backend token, the
# CapabilityStatement). The scope and read lines follow from smart_launch.features.
CHECKS: tuple[tuple[Callable[[Probe], CheckLine], tuple[str, ...], str | None], ...] = (
    (check_well_known, (LAUNCH,), "discovery"),
    (check_capability_statement, (LAUNCH,), "discovery"),
    (check_endpoints, (LAUNCH,), None),
    (check_fhir_r4, FEATURES[1:], None),
    (_capability("launch-ehr", "EHR launch"), (), None),
    (_capability("launch-standalone", "standalone launch"), (), None),
    (check_client_type, (), None),
    (_capability("context-ehr-patient", "patient context (EHR launch)"), (), None),
    (_capability("sso-openid-connect", "OpenID Connect (fhirUser)"), (), None),
    (_capability("permission-v2", "SMART v2 scopes"), (), None),
    (check_pkce, (), None),
    (_grant("authorization_code"), (), None),
    (_grant("refresh_token"), (), None),
    (_grant("client_credentials"), (), None),
    (check_client_accepted, (LAUNCH,), None),
    *((_user_scopes(f), (f.title,), None) for f in _LAUNCHED),
    (check_backend_token, (BACKEND, *(f.title for f in _JOBS)), None),
    *((_backend_scopes(f), (f.title, BACKEND), None) for f in _JOBS),
    *((_read(rtype), _reading(rtype), None) for rtype in _SEARCHED),
    (check_batch, (), None),
    (_write("QuestionnaireResponse"), (SURVEY,), None),
    (check_qr_conditional_create, (SURVEY,), "duplicate guard"),
    (check_qr_identifier_search, (SURVEY,), "duplicate guard"),
    (check_questionnaire, (SURVEY, SURVEY_PUBLISH), None),
    (_write("Questionnaire"), (SURVEY_PUBLISH,), None),
    (_write("ServiceRequest"), (REFERRALS,), None),
    (_write("Task"), (REFERRALS,), None),
    (_write("Appointment", "Appointment update", "update"), (CONFIRMATION,), None),
)


def _reachable(base: str, http: requests.Session) -> str | None:
    """None when the FHIR base answers HTTP at all, else what went wrong."""
    try:
        response = http.get(
            f"{base}/metadata",
            headers={"Accept": "application/fhir+json"},
            timeout=CHECK_TIMEOUT,
            allow_redirects=False,
        )
    except requests.Timeout:
        return "no answer within the time limit"
    except requests.RequestException as exc:
        return f"could not connect ({type(exc).__name__})"
    response.close()
    return None


def required_for(reg: Registration | None) -> frozenset[str]:
    """The features a registration must have verified for exit code 0: launch and
    sidebar always; backend jobs too when it registers a backend client (its token and
    every job's scopes)."""
    if reg is not None and reg.backend_client_id:
        return DEFAULT_REQUIRED | {BACKEND}
    return DEFAULT_REQUIRED


def check_ehr(
    reg_or_iss: Registration | str,
    *,
    http: requests.Session,
    required_features: frozenset[str] | None = None,
    questionnaire: tuple[str, str] | None = None,
) -> CheckReport:
    """Examine the EHR at a registration's iss (or an operator-typed iss, from the CLI).

    With a registration it proves what it can: its client credentials, a backend token
    with the registered backend client and scopes, reads with that token (``_count=1``
    searches, nothing written) and, given ``questionnaire=(url, version)``, that the CSAT
    Questionnaire is on the server. Never call this with an iss from a web request: it
    fetches what it is given.
    """
    reg = reg_or_iss if isinstance(reg_or_iss, Registration) else None
    base = (reg.iss if reg else str(reg_or_iss)).rstrip("/")
    if required_features is None:
        required_features = required_for(reg)
    problem = _reachable(base, http)
    if problem is not None:
        # One line, and every feature fails with it: nothing "should work" here.
        line = CheckLine(REACHABLE, "failed", problem, FEATURES, party="network")
        return CheckReport(
            iss=base,
            lines=(line,),
            required_features=required_features,
            errors=(f"The EHR at {base} cannot be reached: {problem}.",),
            reachable=False,
        )
    probe = Probe(base=base, http=http, reg=reg, questionnaire=questionnaire)
    lines: list[CheckLine] = []
    for check, features, group in CHECKS:
        line = check(probe)
        lines.append(replace(line, features=features, group=group or line.group))
    version = probe.capstmt.get("fhirVersion")
    source = (
        "well-known"
        if probe.conf
        else ("capability-statement (fallback)" if probe.cs_conf else None)
    )
    return CheckReport(
        iss=base,
        lines=tuple(lines),
        required_features=required_features,
        discovery_source=source,
        fhir_version=version if isinstance(version, str) else None,
        errors=tuple(probe.errors),
    )


__all__ = [
    "CHECKS",
    "DEFAULT_REQUIRED",
    "EXIT_CODES",
    "FEATURES",
    "CheckLine",
    "CheckReport",
    "FeatureVerdict",
    "Probe",
    "check_ehr",
    "required_for",
]
