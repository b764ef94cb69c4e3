"""SMART scope syntax: v1 <-> v2 translation and "is what I asked for covered by the grant".

v1: ``patient/Observation.read`` (read | write | *). v2: ``patient/Observation.rs`` (some of
c r u d s, in that order) optionally followed by ``?param=value`` restrictions.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal
from urllib.parse import parse_qsl

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


@lru_cache(maxsize=256)
def translate(scopes: str, *, v2: bool) -> str:
    """Rewrite resource scopes to v2 (``v2=True``) or v1 syntax; keep all others as they are.

    Cached (a pure function of a registration's few scope strings): every backend job
    asks for its registration's scopes twice (its token's cache key), and parsing them
    was a twentieth of a write-back's own CPU (issue 16)."""
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


# --- validating a registration's scopes ----------------------------------------------

# FHIR R4 (4.0.1) resource types: what a resource scope may name besides "*".
FHIR_R4_RESOURCE_TYPES = frozenset(
    (
        "Account",
        "ActivityDefinition",
        "AdverseEvent",
        "AllergyIntolerance",
        "Appointment",
        "AppointmentResponse",
        "AuditEvent",
        "Basic",
        "Binary",
        "BiologicallyDerivedProduct",
        "BodyStructure",
        "Bundle",
        "CapabilityStatement",
        "CarePlan",
        "CareTeam",
        "CatalogEntry",
        "ChargeItem",
        "ChargeItemDefinition",
        "Claim",
        "ClaimResponse",
        "ClinicalImpression",
        "CodeSystem",
        "Communication",
        "CommunicationRequest",
        "CompartmentDefinition",
        "Composition",
        "ConceptMap",
        "Condition",
        "Consent",
        "Contract",
        "Coverage",
        "CoverageEligibilityRequest",
        "CoverageEligibilityResponse",
        "DetectedIssue",
        "Device",
        "DeviceDefinition",
        "DeviceMetric",
        "DeviceRequest",
        "DeviceUseStatement",
        "DiagnosticReport",
        "DocumentManifest",
        "DocumentReference",
        "EffectEvidenceSynthesis",
        "Encounter",
        "Endpoint",
        "EnrollmentRequest",
        "EnrollmentResponse",
        "EpisodeOfCare",
        "EventDefinition",
        "Evidence",
        "EvidenceVariable",
        "ExampleScenario",
        "ExplanationOfBenefit",
        "FamilyMemberHistory",
        "Flag",
        "Goal",
        "GraphDefinition",
        "Group",
        "GuidanceResponse",
        "HealthcareService",
        "ImagingStudy",
        "Immunization",
        "ImmunizationEvaluation",
        "ImmunizationRecommendation",
        "ImplementationGuide",
        "InsurancePlan",
        "Invoice",
        "Library",
        "Linkage",
        "List",
        "Location",
        "Measure",
        "MeasureReport",
        "Media",
        "Medication",
        "MedicationAdministration",
        "MedicationDispense",
        "MedicationKnowledge",
        "MedicationRequest",
        "MedicationStatement",
        "MedicinalProduct",
        "MedicinalProductAuthorization",
        "MedicinalProductContraindication",
        "MedicinalProductIndication",
        "MedicinalProductIngredient",
        "MedicinalProductInteraction",
        "MedicinalProductManufactured",
        "MedicinalProductPackaged",
        "MedicinalProductPharmaceutical",
        "MedicinalProductUndesirableEffect",
        "MessageDefinition",
        "MessageHeader",
        "MolecularSequence",
        "NamingSystem",
        "NutritionOrder",
        "Observation",
        "ObservationDefinition",
        "OperationDefinition",
        "OperationOutcome",
        "Organization",
        "OrganizationAffiliation",
        "Parameters",
        "Patient",
        "PaymentNotice",
        "PaymentReconciliation",
        "Person",
        "PlanDefinition",
        "Practitioner",
        "PractitionerRole",
        "Procedure",
        "Provenance",
        "Questionnaire",
        "QuestionnaireResponse",
        "RelatedPerson",
        "RequestGroup",
        "ResearchDefinition",
        "ResearchElementDefinition",
        "ResearchStudy",
        "ResearchSubject",
        "RiskAssessment",
        "RiskEvidenceSynthesis",
        "Schedule",
        "SearchParameter",
        "ServiceRequest",
        "Slot",
        "Specimen",
        "SpecimenDefinition",
        "StructureDefinition",
        "StructureMap",
        "Subscription",
        "Substance",
        "SubstanceNucleicAcid",
        "SubstancePolymer",
        "SubstanceProtein",
        "SubstanceReferenceInformation",
        "SubstanceSourceMaterial",
        "SubstanceSpecification",
        "SupplyDelivery",
        "SupplyRequest",
        "Task",
        "TerminologyCapabilities",
        "TestReport",
        "TestScript",
        "ValueSet",
        "VerificationResult",
        "VisionPrescription",
    )
)
# Scopes that are not about resources: launch context, identity, refresh tokens.
LAUNCH_SCOPES = frozenset({"launch", "launch/patient", "launch/encounter"})
IDENTITY_SCOPES = frozenset({"openid", "fhirUser", "profile"})
REFRESH_SCOPES = frozenset({"offline_access", "online_access"})
NON_RESOURCE_SCOPES = LAUNCH_SCOPES | IDENTITY_SCOPES | REFRESH_SCOPES
_CONTEXT_SCOPE = re.compile(
    r"^(?P<context>[^/.?]+)/(?P<resource>[^.?]*)\.(?P<perms>[^?]*)(?P<query>\?.*)?$"
)
_QUERY_PARAM = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-.:]*$")

Level = Literal["user", "backend"]


@dataclass(frozen=True)
class ScopeProblem:
    """One thing wrong with one scope of a registration, said so a person can fix it."""

    scope: str
    reason: str

    def __str__(self) -> str:
        return f"{self.scope!r}: {self.reason}"


def _suggest(word: str, choices: frozenset[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _resource_problem(scope: str, level: Level) -> str | None:
    match = _CONTEXT_SCOPE.match(scope)
    if match is None:
        return None
    context, resource = match.group("context"), match.group("resource")
    perms, query = match.group("perms"), match.group("query")
    if context not in ("patient", "user", "system"):
        return f"unknown context {context!r}: use patient/, user/ or system/"
    if level == "backend" and context != "system":
        return "backend services (client_credentials) take system/ scopes only"
    if level == "user" and context == "system":
        return "system/ scopes are for backend services, not for a user's launch"
    if resource != "*" and resource not in FHIR_R4_RESOURCE_TYPES:
        return f"{resource!r} is not a FHIR R4 resource type" + _suggest(
            resource, FHIR_R4_RESOURCE_TYPES
        )
    if perms in _V1_PERMS:
        if query is not None:
            return "v1 scopes (read/write/*) take no ?query; use v2 letters (e.g. .rs?...)"
    elif not perms or set(perms) - set(_ORDER):
        return f"permission {perms!r} is neither v1 (read, write, *) nor v2 (letters of cruds)"
    elif list(perms) != sorted(perms, key=_ORDER.index) or len(set(perms)) != len(perms):
        return f"v2 permissions are written once each in the order c r u d s ({perms!r})"
    if query is not None:
        pairs = query[1:].split("&")
        if not query[1:] or any("=" not in p or not p.split("=", 1)[1] for p in pairs):
            return "a granular scope's ?query must be name=value pairs joined by &"
        bad = [
            k for k, _ in parse_qsl(query[1:], keep_blank_values=True) if not _QUERY_PARAM.match(k)
        ]
        if bad:
            return f"search parameter {bad[0]!r} is not a parameter name"
    return None


def validate_scopes(scopes: str, *, level: Level = "user") -> list[ScopeProblem]:
    """Every problem of a registration's scope string at once (empty list: all good).

    SMART v1 (``patient/Patient.read``, ``user/*.*``) and v2 (``patient/Patient.rs``,
    optionally ``?param=value`` granular restrictions) resource scopes naming FHIR R4
    types, plus the launch, identity and refresh scopes. ``level="backend"`` is for a
    backend-services client: system/ resource scopes only. A placeholder such as ``...``
    or a typo is refused, with a suggestion when one is close.
    """
    problems: list[ScopeProblem] = []
    seen: set[str] = set()
    tokens = scopes.split()
    if not tokens:
        return [ScopeProblem("", "no scopes given")]
    for scope in tokens:
        if scope in seen:
            problems.append(ScopeProblem(scope, "listed twice"))
            continue
        seen.add(scope)
        if scope in NON_RESOURCE_SCOPES:
            if level == "backend":
                problems.append(
                    ScopeProblem(scope, "not for backend services (system/ scopes only)")
                )
            continue
        reason = _resource_problem(scope, level)
        if reason is None and _CONTEXT_SCOPE.match(scope) is None:
            reason = "not a SMART scope" + _suggest(scope, NON_RESOURCE_SCOPES)
        if reason is not None:
            problems.append(ScopeProblem(scope, reason))
    return problems
