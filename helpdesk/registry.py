"""The EHR registry: which EHRs may launch CareDesk, and how CareDesk talks to each.

Only a registered ``iss`` is ever contacted; lookups here are by exact FHIR base.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.crypto import Vault
from helpdesk.models import EhrRegistration

CLIENT_TYPES = ("public", "confidential-symmetric", "confidential-asymmetric")

# What the sidebar, the board and the jobs need. v2 syntax; translated to v1 for servers
# that only advertise permission-v1.
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
        "user/Patient.rs",
        "user/Appointment.rs",
        "user/Coverage.rs",
        "user/Practitioner.rs",
        "user/Location.rs",
        "user/Organization.rs",
    ]
)


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
