"""The EHR registry: which EHRs may launch CareDesk, and how CareDesk talks to each.

Only a registered ``iss`` is ever contacted; lookups here are by exact FHIR base.

A registration is written two ways: ``create`` (a new EHR; never touches an existing
one) and ``update`` (changes only the fields it is given and keeps the slug, which
``/start?ehr=<slug>`` links carry). What an integration engineer types, on the command
line or in a registration file, is validated by ``RegistrationSchema`` first, every
field at once. ``upsert`` remains for the demo and tests that (re)build a registration
wholesale.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate
from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.crypto import Vault
from helpdesk.models import EhrRegistration, SigningKey
from smart_launch.features import FEATURES, Feature, scopes_for_features
from smart_launch.keys import generate_signing_key
from smart_launch.scopes import Level, validate_scopes

CLIENT_TYPES = ("public", "confidential-symmetric", "confidential-asymmetric")
KEY_ALGS = ("RS384", "ES384")

# What a launch asks for when the registration names nothing else: the launch context
# (EHR launch and a standalone patient picker), the user's identity and a refresh token,
# patient/ scopes for the sidebar where the EHR grants only those, and every feature's
# user/ scopes (smart_launch.features), so jobs that run on a launch's refresh token
# (no backend client) have what they need. v2 syntax; translated to v1 for servers that
# only advertise permission-v1.
DEFAULT_SCOPES = " ".join(
    [
        "launch",
        "launch/patient",
        "openid",
        "fhirUser",
        "offline_access",
        "patient/Patient.rs",
        "patient/Appointment.rs",
        "patient/Coverage.rs",
        "patient/QuestionnaireResponse.cs",
        "patient/ServiceRequest.cs",
        "patient/Task.cs",
        *(s for s in scopes_for_features(FEATURES, "user").split() if s.startswith("user/")),
    ]
)
# What a backend client asks for when the registration names none: every feature's
# system/ scopes, so jobs, sweeps and `ehr check` can all run.
DEFAULT_BACKEND_SCOPES = scopes_for_features(FEATURES, "backend")


def normalize_iss(iss: str) -> str:
    """The FHIR base as registered: exact, minus a trailing slash (EHRs vary on that)."""
    return iss.strip().rstrip("/")


def find_by_iss(session: Session, iss: str) -> EhrRegistration | None:
    return session.scalar(select(EhrRegistration).where(EhrRegistration.iss == normalize_iss(iss)))


def find(session: Session, key: str) -> EhrRegistration | None:
    """By id, slug or iss: what an integration engineer is likely to type."""
    if key.isdigit():
        found = session.get(EhrRegistration, int(key))
        if found:
            return found
    by_slug = session.scalar(select(EhrRegistration).where(EhrRegistration.slug == key))
    return by_slug or find_by_iss(session, key)


def upsert(
    session: Session,
    vault: Vault,
    *,
    slug: str,
    iss: str,
    client_id: str,
    client_type: str = "public",
    name: str | None = None,
    client_secret: str | None = None,
    scopes: str = DEFAULT_SCOPES,
    frame_origins: Iterable[str] = (),
    backend_client_id: str | None = None,
    backend_scopes: str | None = None,
    allow_writes: bool = True,
) -> EhrRegistration:
    if client_type not in CLIENT_TYPES:
        raise ValueError(f"client type must be one of {', '.join(CLIENT_TYPES)}")
    if client_type == "confidential-symmetric" and not client_secret:
        raise ValueError("a confidential-symmetric client needs a client secret")
    reg = find_by_iss(session, iss) or session.scalar(
        select(EhrRegistration).where(EhrRegistration.slug == slug)
    )
    values: dict[str, Any] = {
        "slug": slug,
        "name": name or slug,
        "iss": normalize_iss(iss),
        "client_id": client_id,
        "client_type": client_type,
        "scopes": scopes,
        "frame_origins": sorted(set(frame_origins)),
        "backend_client_id": backend_client_id,
        "backend_scopes": backend_scopes,
        "allow_writes": allow_writes,
    }
    if reg is None:
        reg = EhrRegistration(**values)
        session.add(reg)
    else:
        for key, value in values.items():
            setattr(reg, key, value)
    if client_secret is not None:
        reg.client_secret_enc = vault.encrypt(client_secret)
    session.flush()
    return reg


# --- what an integration engineer gives: flags or a registration file -----------------


class _Scopes(fields.Field):  # type: ignore[type-arg]
    """A scope string, or a list of scopes (easier to read in a file), checked with
    ``smart_launch.scopes.validate_scopes`` at its level; every problem is reported."""

    def __init__(self, level: Level, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.level = level

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, str):
            scopes = value.split()
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            scopes = [s for v in value for s in v.split()]
        else:
            raise ValidationError("Must be a space-separated string or a list of scopes.")
        problems = validate_scopes(" ".join(scopes), level=self.level)
        if problems:
            raise ValidationError([str(p) for p in problems])
        return " ".join(scopes)


def _origin(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"{value!r} is not an origin like https://ehr.example.org.")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValidationError(
            f"{value!r} has more than an origin: scheme://host[:port] only, no path."
        )


_SLUG = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"


class RegistrationSchema(Schema):
    """One EHR registration as a file (JSON or TOML) or the ``ehr add`` flags give it.

    Keys starting with ``_`` are comments (JSON has none). Secrets never live in the
    file: the client secret comes from ``$CAREDESK_CLIENT_SECRET``.
    """

    class Meta:
        unknown = RAISE

    iss = fields.Url(
        required=True,
        schemes={"http", "https"},
        require_tld=False,
        metadata={"help": "the EHR's FHIR base URL, exactly as it sends `iss` on launch"},
    )
    client_id = fields.String(required=True, validate=validate.Length(1, 255))
    client_type = fields.String(validate=validate.OneOf(CLIENT_TYPES))
    slug = fields.String(
        validate=validate.Regexp(
            _SLUG, error="Lower-case letters, digits and dashes, at most 64 characters."
        )
    )
    name = fields.String(validate=validate.Length(1, 200))
    scopes = _Scopes("user")
    frame_origins = fields.List(fields.String(validate=_origin))
    backend_client_id = fields.String(validate=validate.Length(1, 255))
    backend_scopes = _Scopes("backend")
    signing_key_alg = fields.String(validate=validate.OneOf(KEY_ALGS))
    allow_writes = fields.Boolean(truthy={True}, falsy={False})
    client_secret = fields.Raw(
        validate=lambda _v: _refuse_secret(),
    )

    @pre_load
    def _drop_comments(self, data: Any, **kwargs: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if not str(k).startswith("_")}
        return data


def _refuse_secret() -> bool:
    raise ValidationError(
        "Secrets do not belong in a registration file: pass it as $CAREDESK_CLIENT_SECRET."
    )


def slug_for(iss: str) -> str:
    """The default short name: the iss without its scheme, dashed."""
    return re.sub(r"[^a-z0-9]+", "-", iss.lower().split("://", 1)[-1]).strip("-")[:64].strip("-")


def load_registration(data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a new registration; raises marshmallow's ``ValidationError`` whose
    ``messages`` name every bad field at once."""
    loaded: dict[str, Any] = RegistrationSchema().load(data)
    return loaded


def load_changes(reg: EhrRegistration, data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate changes to ``reg`` (any subset of the fields): like ``load_registration``,
    and an iss or slug that differs from the registration's is refused in the same pass
    (a slug is in every `/start?ehr=` link; another iss is another EHR)."""
    errors: dict[str, Any] = {}
    loaded: dict[str, Any] = {}
    try:
        loaded = RegistrationSchema().load(data, partial=True)
    except ValidationError as exc:
        errors = dict(exc.messages) if isinstance(exc.messages, dict) else {"": exc.messages}
    for fixed in ("iss", "slug"):
        given = data.get(fixed)
        if fixed in errors or not isinstance(given, str):
            continue
        if (normalize_iss(given) if fixed == "iss" else given) != getattr(reg, fixed):
            errors[fixed] = [
                f"stays {getattr(reg, fixed)!r} (links and launches use it); "
                "register another EHR with `caredesk ehr add`"
            ]
    if errors:
        raise ValidationError(errors)
    return loaded


class RegistrationConflict(ValueError):
    """A registration cannot be written as given (the message says what to do instead)."""


# The fields a registration row holds, in the order they are shown.
_FIELDS = (
    "name",
    "client_id",
    "client_type",
    "scopes",
    "frame_origins",
    "backend_client_id",
    "backend_scopes",
    "allow_writes",
)


def with_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    """A new registration's values: what was given, CareDesk's defaults for the rest."""
    out = dict(values)
    out["iss"] = normalize_iss(str(values["iss"]))
    out.setdefault("slug", slug_for(out["iss"]))
    out.setdefault("name", out["slug"])
    out.setdefault("client_type", "public")
    out.setdefault("scopes", DEFAULT_SCOPES)
    out["frame_origins"] = sorted({o.rstrip("/") for o in out.get("frame_origins", [])})
    out.setdefault("backend_client_id", None)
    if out["backend_client_id"] and not out.get("backend_scopes"):
        out["backend_scopes"] = DEFAULT_BACKEND_SCOPES
    out.setdefault("backend_scopes", None)
    out.setdefault("allow_writes", True)
    return out


_NEEDS_SECRET = "a confidential-symmetric client needs a client secret: set $CAREDESK_CLIENT_SECRET"  # noqa: E501,S105 - a message, not a password


def _combination_problems(values: Mapping[str, Any], *, has_secret: bool) -> dict[str, str]:
    problems: dict[str, str] = {}
    if values["client_type"] == "confidential-symmetric" and not has_secret:
        problems["client_secret"] = _NEEDS_SECRET
    if values.get("backend_scopes") and not values.get("backend_client_id"):
        problems["backend_scopes"] = "backend scopes without a backend_client_id"
    return problems


def differences(reg: EhrRegistration, values: Mapping[str, Any]) -> list[str]:
    """Fields of ``values`` (complete, as ``with_defaults`` makes them) that differ from
    the stored registration."""
    return [f for f in ("slug", *_FIELDS) if values.get(f) != getattr(reg, f)]


def create(
    session: Session,
    vault: Vault,
    values: Mapping[str, Any],
    *,
    client_secret: str | None = None,
) -> EhrRegistration:
    """A new registration from validated ``values``; an iss or slug already registered
    is a ``RegistrationConflict`` (an existing registration is changed by ``update``)."""
    full = with_defaults(values)
    problems = _combination_problems(full, has_secret=bool(client_secret))
    if problems:
        raise ValidationError(problems)
    existing = find_by_iss(session, full["iss"])
    if existing is not None:
        raise RegistrationConflict(existing.slug)
    taken = session.scalar(select(EhrRegistration).where(EhrRegistration.slug == full["slug"]))
    if taken is not None:
        raise ValidationError(
            {"slug": f"{full['slug']!r} is already the slug of {taken.iss}; choose another"}
        )
    reg = EhrRegistration(slug=full["slug"], iss=full["iss"], **{f: full[f] for f in _FIELDS})
    if client_secret and full["client_type"] == "confidential-symmetric":
        reg.client_secret_enc = vault.encrypt(client_secret)
    session.add(reg)
    if _needs_key(reg):
        add_signing_key(reg, vault, full.get("signing_key_alg") or "RS384")
    session.flush()
    return reg


def _needs_key(reg: EhrRegistration) -> bool:
    # Both sign client assertions (private_key_jwt) and need a key from the start.
    return reg.client_type == "confidential-asymmetric" or bool(reg.backend_client_id)


def current_keys(reg: EhrRegistration) -> list[SigningKey]:
    return [k for k in reg.signing_keys if k.retired_at is None]


def add_signing_key(reg: EhrRegistration, vault: Vault, alg: str) -> SigningKey:
    key = generate_signing_key(alg)  # type: ignore[arg-type]
    row = SigningKey(
        kid=key.kid,
        alg=key.alg,
        private_key_enc=vault.encrypt(key.private_pem),
        public_jwk=key.public_jwk(),
    )
    reg.signing_keys.append(row)
    return row


def _show(field: str, value: Any) -> str:
    if isinstance(value, list):
        return " ".join(value) if value else "(none)"
    if value is None:
        return "(none)"
    return str(value)


def update(
    session: Session,
    vault: Vault,
    reg: EhrRegistration,
    changes: Mapping[str, Any],
    *,
    client_secret: str | None = None,
    remove_backend: bool = False,
) -> list[str]:
    """Change only the fields in ``changes`` (validated); the slug and iss stay. Returns
    one line per change for the person who asked, secrets never shown.

    Changing the client type clears what no longer applies: a client secret once the
    client is not confidential-symmetric, signing keys once nothing signs assertions
    (neither a confidential-asymmetric client nor a backend client); a type that needs a
    key gets one.
    """
    problems: dict[str, str] = {}
    merged = {f: getattr(reg, f) for f in _FIELDS}
    merged.update({f: changes[f] for f in _FIELDS if f in changes})
    if "frame_origins" in changes:
        merged["frame_origins"] = sorted({o.rstrip("/") for o in changes["frame_origins"]})
    if remove_backend:
        merged["backend_client_id"] = merged["backend_scopes"] = None
    elif merged["backend_client_id"] and not merged["backend_scopes"]:
        merged["backend_scopes"] = DEFAULT_BACKEND_SCOPES
    keeps_secret = reg.client_secret_enc is not None or bool(client_secret)
    problems.update(_combination_problems(merged, has_secret=keeps_secret))
    if problems:
        raise ValidationError(problems)

    notes: list[str] = []
    for field in _FIELDS:
        old, new = getattr(reg, field), merged[field]
        if old != new:
            setattr(reg, field, new)
            notes.append(f"{field}: {_show(field, old)} -> {_show(field, new)}")
    if client_secret and reg.client_type == "confidential-symmetric":
        if reg.client_secret_enc is None or vault.decrypt(reg.client_secret_enc) != client_secret:
            notes.append("client secret: replaced")
            reg.client_secret_enc = vault.encrypt(client_secret)
    elif reg.client_secret_enc is not None and reg.client_type != "confidential-symmetric":
        reg.client_secret_enc = None
        notes.append(f"client secret: removed (a {reg.client_type} client has none)")
    if _needs_key(reg) and not current_keys(reg):
        key = add_signing_key(reg, vault, changes.get("signing_key_alg") or "RS384")
        notes.append(f"signing key {key.kid} ({key.alg}): generated, published in the JWKS")
    elif not _needs_key(reg) and reg.signing_keys:
        kids = ", ".join(k.kid for k in reg.signing_keys)
        reg.signing_keys.clear()
        notes.append(
            f"signing keys {kids}: removed, no longer published (a {reg.client_type} "
            "client without a backend client signs nothing)"
        )
    session.flush()
    return notes


def scope_gaps(reg: EhrRegistration) -> list[str]:
    """Features this registration's scopes leave out, one line each (empty: all covered).

    A feature that runs on a launch needs the launch scopes; one that runs in jobs needs
    the backend client's scopes, or else the launch scopes (jobs then use the refresh
    token of the launch that queued them); a backend-only one needs a backend client.
    The EHR check's own reads are optional and not counted.
    """
    backend = (reg.backend_scopes or "") if reg.backend_client_id else None
    gaps: list[str] = []
    for feature in FEATURES:
        if feature.name != "ehr-check":
            reason = _gap(feature, reg.scopes, backend)
            if reason:
                gaps.append(f"{feature.title}: {reason}")
    return gaps


def _gap(feature: Feature, scopes: str, backend: str | None) -> str:
    user = " ".join(feature.missing(scopes, "user"))
    if feature.context == "user":
        return f"the launch scopes lack {user}" if user else ""
    if backend is None:
        if feature.context == "backend":
            return "needs a backend client"
        return f"the launch scopes lack {user} and there is no backend client" if user else ""
    system = " ".join(feature.missing(backend, "backend"))
    if feature.context == "backend":
        return f"the backend scopes lack {system}" if system else ""
    if system and user:
        return f"the backend scopes lack {system} and the launch scopes lack {user}"
    return ""
