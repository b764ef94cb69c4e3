"""Which scopes each CareDesk feature needs, as data the CLI, the guide and the EHR check
print and use.

Scopes are written in SMART v2 syntax (``system/Patient.rs``); CareDesk asks a server
that advertises only ``permission-v1`` for the v1 equivalents (``.read``/``.write``).

Two levels, because CareDesk authenticates two ways:

- ``user``: the scopes of a user's launch (EHR launch or standalone). The sidebar and the
  board run only there; jobs run there too when the EHR has no backend client, on the
  refresh token of the launch that queued them. ``user/`` scopes, because the board and
  the help desk look across patients; a patient-only (``patient/``) grant still works for
  the sidebar of that patient.
- ``backend``: the ``system/`` scopes of the SMART Backend Services client that jobs,
  sweeps and the command line use after the user has gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .scopes import Level, missing_scopes, parse_resource_scope

# What every user-level launch asks for: the launch context, who the user is, and a
# refresh token so a job queued from the sidebar can still run after the user left.
LAUNCH_USER_SCOPES = ("launch", "openid", "fhirUser", "offline_access")


@dataclass(frozen=True)
class Feature:
    """One CareDesk feature and the FHIR access it needs.

    ``needs`` are the resource scopes without their level, in v2 letters
    (``"Patient.rs Appointment.ru"``); ``context`` is
    ``"user"`` (needs a user's launch), ``"backend"`` (jobs and CLI) or ``"both"`` (jobs
    that may run on a launch's refresh token when there is no backend client).
    """

    name: str
    title: str
    needs: str
    context: Literal["user", "backend", "both"]
    note: str = ""
    # At user level, patient/ scopes are enough (the sidebar always has a patient).
    patient_ok: bool = False

    def scopes(self, level: Level) -> tuple[str, ...]:
        """The scopes this feature needs at ``level`` (empty when it never runs there)."""
        if level == "backend" and self.context == "user":
            return ()
        if level == "user" and self.context == "backend":
            return ()
        prefix = "system" if level == "backend" else "user"
        return tuple(f"{prefix}/{need}" for need in self.needs.split())

    def reads(self, rtype: str) -> bool:
        """Whether this feature reads or searches ``rtype``."""
        for need in self.needs.split():
            needed, _, perms = need.partition(".")
            if needed == rtype and ("r" in perms or "s" in perms):
                return True
        return False

    def missing(self, granted: str, level: Level) -> list[str]:
        """Needed scopes the ``granted`` scope string does not cover (v1 or v2; at user
        level a patient/ scope covers too when :attr:`patient_ok`)."""
        missing = missing_scopes(" ".join(self.scopes(level)), granted)
        if level == "user" and self.patient_ok:
            missing = [
                scope
                for scope in missing
                if missing_scopes(scope.replace("user/", "patient/", 1), granted)
            ]
        return missing

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "context": self.context,
            "user_scopes": list(self.scopes("user")),
            "backend_scopes": list(self.scopes("backend")),
            "note": self.note,
        }


SIDEBAR = Feature(
    "sidebar",
    "sidebar context",
    "Patient.rs Appointment.rs Coverage.rs Practitioner.rs Location.rs Organization.rs",
    "user",
    "The patient, their visits (with practitioner and location) and coverage; patient/ "
    "scopes are enough here.",
    patient_ok=True,
)
BOARD = Feature(
    "board",
    "day board",
    "Appointment.rs Patient.rs Coverage.rs Practitioner.rs Location.rs",
    "user",
    "Every appointment of a day across patients: user/ scopes, not patient/.",
)
FOLLOW_UPS = Feature(
    "follow-ups",
    "follow-ups and reminders",
    "Patient.rs Appointment.rs",
    "both",
    "Messages themselves go out by SMS or email, not through FHIR.",
)
REFERRALS = Feature(
    "referrals",
    "referrals",
    "ServiceRequest.cus Task.cus Practitioner.rs Appointment.rs",
    "both",
    "Creates and updates ServiceRequest and Task (found again by identifier before "
    "creating), finds the referred practitioner and the appointment that schedules it.",
)
SURVEY_INVITATIONS = Feature(
    "survey-invitations",
    "survey invitations",
    "Patient.rs Appointment.rs Location.rs Encounter.rs Practitioner.rs",
    "both",
    "The practitioner is read by id when the appointment's reference has no display, so "
    "the invitation can name who the patient saw.",
)
SURVEY_WRITE_BACK = Feature(
    "survey-write-back",
    "survey write-back",
    "QuestionnaireResponse.cs Questionnaire.rs",
    "both",
    "QuestionnaireResponse create, searched by identifier first so a retry never "
    "duplicates; the CSAT Questionnaire found by url and version.",
)
SURVEY_PUBLISH = Feature(
    "survey-publish",
    "survey publishing",
    "Questionnaire.crs",
    "backend",
    "`caredesk survey publish` creates the CSAT Questionnaire once (searched first).",
)
INBOUND_MATCHING = Feature(
    "inbound-matching",
    "inbound message matching",
    "Patient.rs",
    "backend",
    "Finds the patient of an inbound SMS or email by phone number or address.",
)
REMINDER_CONFIRMATION = Feature(
    "reminder-confirmation",
    "reminder confirmation",
    "Appointment.ru",
    "both",
    "A patient's YES to a reminder confirms the appointment (read, then update).",
)
INSURANCE_OUTREACH = Feature(
    "insurance-outreach",
    "insurance outreach",
    "Coverage.rs Patient.rs",
    "backend",
    "The sweep searches coverages ending soon and messages their patients.",
)

EHR_CHECK = Feature(
    "ehr-check",
    "EHR check reads",
    # The sidebar's and the board's reads, each once: they are what it proves.
    " ".join(dict.fromkeys([*SIDEBAR.needs.split(), *BOARD.needs.split()])),
    "backend",
    "Optional: lets `caredesk ehr check` prove the sidebar's and the board's reads with "
    "the backend client (without them those lines stay 'advertised').",
)

FEATURES: tuple[Feature, ...] = (
    SIDEBAR,
    BOARD,
    FOLLOW_UPS,
    REFERRALS,
    SURVEY_INVITATIONS,
    SURVEY_WRITE_BACK,
    SURVEY_PUBLISH,
    INBOUND_MATCHING,
    REMINDER_CONFIRMATION,
    INSURANCE_OUTREACH,
    EHR_CHECK,
)
FEATURES_BY_NAME = {f.name: f for f in FEATURES}


def scopes_for_features(features: Iterable[Feature], level: Level) -> str:
    """One scope string covering ``features`` at ``level``: per resource type the union
    of the permission letters, in a stable order (first mention), with the launch and
    identity scopes first at user level."""
    order: list[str] = []
    perms: dict[str, set[str]] = {}
    for feature in features:
        for scope in feature.scopes(level):
            parsed = parse_resource_scope(scope)
            assert parsed is not None  # our own data, tested
            key = f"{parsed.context}/{parsed.resource}"
            if key not in perms:
                order.append(key)
                perms[key] = set()
            perms[key] |= parsed.perms
    resource = [f"{key}.{''.join(p for p in 'cruds' if p in perms[key])}" for key in order]
    if level == "user" and resource:
        return " ".join([*LAUNCH_USER_SCOPES, *resource])
    return " ".join(resource)


def feature_table(features: Sequence[Feature] = FEATURES) -> list[dict[str, Any]]:
    """JSON-able rows for ``caredesk`` to print and the guide to show."""
    return [f.to_json() for f in features]
