"""TokenSet: what a token response leaves us with, storable as JSON (the lead encrypts it)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .scopes import missing_scopes

# Keys of a token response that have their own TokenSet field; anything else goes to
# ``extra`` (vendor additions such as Epic's ``__epic.dstu2.patient``).
KNOWN_RESPONSE_KEYS = frozenset(
    {
        "access_token",
        "token_type",
        "expires_in",
        "scope",
        "refresh_token",
        "id_token",
        "patient",
        "encounter",
        "fhirContext",
        "need_patient_banner",
        "smart_style_url",
        "intent",
        "tenant",
    }
)
# Token responses without expires_in: assume an hour (RFC 6749 leaves it to the server);
# a 401 still triggers one refresh, so a wrong guess costs one round trip.
DEFAULT_EXPIRES_IN = 3600


@dataclass(frozen=True, repr=False)
class TokenSet:
    access_token: str
    token_type: str
    expires_at: datetime
    scope_granted: str
    scope_requested: str
    refresh_token: str | None = None
    id_token: str | None = None
    id_claims: Mapping[str, Any] = field(default_factory=dict)
    fhir_user: str | None = None
    patient: str | None = None
    encounter: str | None = None
    fhir_context: tuple[Mapping[str, Any], ...] = ()
    need_patient_banner: bool | None = None
    smart_style_url: str | None = None
    intent: str | None = None
    tenant: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.expires_at.tzinfo is None:
            raise ValueError("TokenSet.expires_at must be timezone-aware")

    @classmethod
    def from_response(
        cls,
        body: Mapping[str, Any],
        *,
        scope_requested: str,
        now: datetime,
        id_claims: Mapping[str, Any] | None = None,
        previous: TokenSet | None = None,
    ) -> TokenSet:
        """Build from a token endpoint's JSON. ``previous`` fills what a refresh omits.

        A refresh response usually leaves out the launch context and the id_token, and a
        server that does not rotate refresh tokens leaves out ``refresh_token``: those
        carry over from the grant being refreshed.
        """
        expires_in = body.get("expires_in")
        try:
            seconds = int(expires_in) if expires_in is not None else DEFAULT_EXPIRES_IN
        except (TypeError, ValueError):
            seconds = DEFAULT_EXPIRES_IN
        claims = dict(id_claims or (previous.id_claims if previous else {}))
        fhir_user = claims.get("fhirUser") or claims.get("profile")

        def pick(key: str, old: Any) -> Any:
            value = body.get(key)
            return value if value is not None else old

        context = body.get("fhirContext")
        return cls(
            access_token=str(body["access_token"]),
            token_type=str(body.get("token_type") or "Bearer"),
            expires_at=now + timedelta(seconds=seconds),
            scope_granted=str(
                pick("scope", previous.scope_granted if previous else scope_requested)
            ),
            scope_requested=scope_requested,
            refresh_token=pick("refresh_token", previous.refresh_token if previous else None),
            id_token=pick("id_token", previous.id_token if previous else None),
            id_claims=claims,
            fhir_user=fhir_user if isinstance(fhir_user, str) else None,
            patient=pick("patient", previous.patient if previous else None),
            encounter=pick("encounter", previous.encounter if previous else None),
            fhir_context=tuple(context)
            if isinstance(context, list)
            else (previous.fhir_context if previous else ()),
            need_patient_banner=pick(
                "need_patient_banner", previous.need_patient_banner if previous else None
            ),
            smart_style_url=pick("smart_style_url", previous.smart_style_url if previous else None),
            intent=pick("intent", previous.intent if previous else None),
            tenant=pick("tenant", previous.tenant if previous else None),
            extra={k: v for k, v in body.items() if k not in KNOWN_RESPONSE_KEYS}
            or (dict(previous.extra) if previous else {}),
        )

    def missing_scopes(self) -> list[str]:
        """What was asked for and not granted: the app runs with the rest."""
        return missing_scopes(
            self.scope_requested,
            self.scope_granted,
            has_refresh_token=self.refresh_token is not None,
            has_id_token=self.id_token is not None,
            has_fhir_user=self.fhir_user is not None,
            has_patient=self.patient is not None,
            has_encounter=self.encounter is not None,
            has_context=bool(self.fhir_context),
        )

    def expires_soon(
        self, now: datetime | None = None, margin: timedelta = timedelta(seconds=60)
    ) -> bool:
        now = now or datetime.now(UTC)
        return self.expires_at - margin <= now

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["expires_at"] = self.expires_at.isoformat()
        data["fhir_context"] = list(self.fhir_context)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TokenSet:
        data = json.loads(text)
        data["expires_at"] = datetime.fromisoformat(data["expires_at"])
        data["fhir_context"] = tuple(data.get("fhir_context") or ())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def redacted_repr(self) -> str:
        return (
            f"TokenSet(token_type={self.token_type!r}, expires_at={self.expires_at.isoformat()}, "
            f"scope_granted={self.scope_granted!r}, refresh_token="
            f"{'<hidden>' if self.refresh_token else None}, id_token="
            f"{'<hidden>' if self.id_token else None}, fhir_user={self.fhir_user!r}, "
            f"patient={self.patient!r}, encounter={self.encounter!r})"
        )

    __repr__ = redacted_repr
    __str__ = redacted_repr
