"""Start-up options, vendor profiles and the runtime fault knobs of the sandbox."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from joserfc.jwk import RSAKey

# Features a test can switch off (`--disable F`, or the `disabled` knob). Each one is
# also reflected in the CapabilityStatement and smart-configuration the sandbox serves.
FEATURES = (
    "well-known",
    "questionnaire-response-create",
    "task-create",
    "service-request-create",
    "conditional-create",
    "batch",
    "questionnaire-write",
    # Whole resource type gone (Oracle Health has no Task in its R4 API).
    "task",
    # PUT/PATCH of an existing Appointment (a patient confirming by text: their
    # participant.status becomes accepted). Epic's R4 Appointment is read-only: booking
    # and changes go through its own scheduling, not FHIR updates.
    "appointment-update",
)

# What the id_token of a refresh response looks like (`refresh_id_token` knob).
REFRESH_ID_TOKEN_MODES = ("normal", "no-aud", "omit")


@dataclass(frozen=True)
class Profile:
    """How one vendor's EHR behaves, as far as CareDesk can tell from outside."""

    name: str
    description: str
    # Path of the OIDC issuer below the base URL; None means the issuer is the FHIR base.
    issuer_path: str | None = None
    opaque_tokens: bool = False
    disabled: tuple[str, ...] = ()
    token_lifetime_s: int = 3600
    # Epic: a refresh token is issued although `offline_access` is left out of `scope`.
    hide_offline_scope: bool = False
    # Rewrite some resource ids to more than 64 characters (legal in R4 only loosely:
    # the spec says 64, Epic and others go beyond it).
    long_ids: bool = False
    # Initial values of runtime knobs that this vendor's server behaves like.
    knobs: Mapping[str, Any] = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    "smart": Profile(
        name="smart",
        description="A by-the-book SMART App Launch 2.x / FHIR R4 server.",
    ),
    "epic": Profile(
        name="epic",
        description=(
            "Epic-like: id_token issuer is the OAuth server (/oauth2), not the FHIR base; "
            "refresh token returned while the granted scope omits offline_access; "
            "opaque access tokens; no conditional create (If-None-Exist is ignored); "
            "Questionnaire and Appointment are read-only; some ids are longer than 64 "
            "characters."
        ),
        issuer_path="/oauth2",
        opaque_tokens=True,
        disabled=("conditional-create", "questionnaire-write", "appointment-update"),
        hide_offline_scope=True,
        long_ids=True,
    ),
    "oracle": Profile(
        name="oracle",
        description=(
            "Oracle Health (Cerner)-like: no QuestionnaireResponse create, no Task; "
            "access tokens live 10 minutes; a refresh token only when online_access or "
            "offline_access was granted."
        ),
        disabled=("questionnaire-response-create", "task", "task-create"),
        token_lifetime_s=600,
    ),
    "thirdparty": Profile(
        name="thirdparty",
        description=(
            "A third-party (non-vendor) SMART on FHIR server as seen in the field: "
            "references carry no display (read the Practitioner/Location for names); no "
            "canonical url|version search (search url and version apart); the EHR's "
            "launch link sends iss with a trailing slash; fhirUser is a relative "
            "reference; the refresh token is rotated on every use (the old one is then "
            "refused); the refreshed id_token has no aud."
        ),
        knobs={
            "omit_display": True,
            "canonical_version_search": False,
            "iss_trailing_slash": True,
            "fhir_user_relative": True,
            "rotate_refresh": True,
            "refresh_id_token": "no-aud",
        },
    ),
}


@dataclass(frozen=True)
class SandboxOptions:
    """What the sandbox is started with. Everything under `Knobs` can change later."""

    profile: str = "smart"
    host: str = "127.0.0.1"
    port: int = 0
    data_dir: Path | None = None
    latency_ms: float = 0
    clients: Sequence[Mapping[str, Any]] = ()
    # None: the profile's default (3600 s; oracle 600 s).
    token_lifetime_s: int | None = None
    error_rate: float = 0.0
    disabled: Sequence[str] = ()
    timezone: str = "America/Chicago"
    extra_appointments: int = 0
    # Population to serve instead of fixtures.population (tests with tiny data sets).
    population: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
    # Other initial knobs (any field of Knobs); they win over the profile's.
    knobs: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 20261127
    # The key that signs id_tokens and access tokens, instead of a new one (sandbox.testing
    # hands in-process sandboxes one of a few made once per process). A key saved in
    # data_dir wins.
    signing_key: RSAKey | None = None


@dataclass
class Knobs:
    """Fault knobs: settable at start and at runtime through /admin/knobs."""

    latency_ms: float = 0
    error_rate: float = 0.0
    rate_limit: dict[str, float] | None = None
    token_lifetime_s: int = 3600
    drop_refresh_tokens: bool = False
    empty_for: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    fail_next: list[dict[str, Any]] = field(default_factory=list)
    # None: a refresh token lives until used (rotation) or revoked.
    refresh_token_lifetime_s: int | None = None
    # Strip `display` from every Reference served (names must be read from the target).
    omit_display: bool = False
    # False: `url=X|1.0.0` is taken as a whole url and matches nothing; search
    # `url=X&version=1.0.0` instead.
    canonical_version_search: bool = True
    # The launch link's `iss` ends with "/" (the FHIR base itself does not).
    iss_trailing_slash: bool = False
    # fhirUser as `Practitioner/<id>` (True) or as an absolute URL on the FHIR base.
    fhir_user_relative: bool = True
    # True: every refresh returns a new refresh token and the presented one is spent
    # (presenting it again revokes the grant). False: no new refresh token is returned
    # and the presented one stays valid.
    rotate_refresh: bool = True
    # id_token in a refresh response: as at launch, without `aud`, or none at all.
    refresh_id_token: str = "normal"  # noqa: S105 - a mode name, not a secret
    # Scopes the user unticks on the consent screen (EHR and standalone launches).
    consent_drop_scopes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial update, checking each value; raises ValueError on bad input."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown knobs: {sorted(unknown)}")
        new = dataclasses.replace(self)
        for name, value in changes.items():
            setattr(new, name, _check_knob(name, value))
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(new, f.name))


_BOOL_KNOBS = (
    "drop_refresh_tokens",
    "omit_display",
    "canonical_version_search",
    "iss_trailing_slash",
    "fhir_user_relative",
    "rotate_refresh",
)


def _check_knob(name: str, value: Any) -> Any:
    if name == "latency_ms":
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ValueError("latency_ms must be a number >= 0")
        return float(value)
    if name == "error_rate":
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ValueError("error_rate must be a number in 0..1")
        return float(value)
    if name == "rate_limit":
        if value is None:
            return None
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("every"), int)
            or value["every"] < 1
        ):
            raise ValueError('rate_limit must be null or {"every": N>=1, "retry_after": S}')
        return {"every": value["every"], "retry_after": float(value.get("retry_after", 1))}
    if name == "token_lifetime_s":
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError("token_lifetime_s must be an integer >= 1")
        return value
    if name in _BOOL_KNOBS:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a boolean")
        return value
    if name == "refresh_token_lifetime_s":
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError("refresh_token_lifetime_s must be null or an integer >= 1")
        return value
    if name == "refresh_id_token":
        if value not in REFRESH_ID_TOKEN_MODES:
            raise ValueError(f"refresh_id_token must be one of {list(REFRESH_ID_TOKEN_MODES)}")
        return value
    if name in ("empty_for", "disabled", "consent_drop_scopes"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} must be a list of strings")
        if name == "disabled":
            bad = set(value) - set(FEATURES)
            if bad:
                raise ValueError(f"unknown features {sorted(bad)}; known: {list(FEATURES)}")
        return list(value)
    if name == "fail_next":
        if not isinstance(value, list) or not all(
            isinstance(v, dict) and isinstance(v.get("status"), int) for v in value
        ):
            raise ValueError('fail_next must be a list of {"status": int, ...}')
        return [dict(v) for v in value]
    raise ValueError(f"unknown knob {name}")  # pragma: no cover - guarded by update()


def initial_knobs(options: SandboxOptions) -> Knobs:
    profile = PROFILES[options.profile]
    knobs = Knobs(
        latency_ms=float(options.latency_ms),
        error_rate=float(options.error_rate),
        token_lifetime_s=options.token_lifetime_s or profile.token_lifetime_s,
        disabled=sorted(set(profile.disabled) | set(options.disabled)),
    )
    knobs.update(dict(profile.knobs))
    knobs.update(dict(options.knobs))
    return knobs
