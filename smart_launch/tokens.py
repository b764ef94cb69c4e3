"""TokenSet: what a token response leaves us with, storable as JSON (the lead encrypts it)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from ._http import is_under
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
# Refresh this share of a token's lifetime before it ends, at most MAX_REFRESH_MARGIN.
# A fixed minute made 60-second tokens (seen on a real server) "expiring soon" the
# moment they were issued, so every page view refreshed; a tenth leaves 6 seconds.
REFRESH_FRACTION = 0.1
MAX_REFRESH_MARGIN = timedelta(seconds=60)
_REFERENCE = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]+)$")


def normalize_fhir_user(value: object, fhir_base: str | None = None) -> str | None:
    """``fhirUser`` in one form: the relative reference ``Practitioner/123``.

    Servers send it relative (``Practitioner/123``) or absolute
    (``https://ehr.example/fhir/Practitioner/123``, SMART's own examples). An absolute URL
    under ``fhir_base`` (or any absolute URL when the base is not known) becomes relative
    (a trailing ``/_history/N`` is dropped); an absolute URL on another server stays
    absolute, since it names a resource this EHR's base cannot read. Anything that is not
    a reference to a resource is ``None``.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if "://" in text:
        if fhir_base and not is_under(text, fhir_base.rstrip("/")):
            return text
        text = urlsplit(text).path
    parts = [p for p in text.split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    candidate = "/".join(parts[-2:])
    return candidate if _REFERENCE.match(candidate) else None


@dataclass(frozen=True, repr=False)
class TokenSet:
    """One grant as the token endpoint gave it, with the SMART launch context it carried.

    Secrets (access, refresh and id tokens) stay out of ``repr``; the store keeps the whole
    set encrypted (``helpdesk.ehr``), never in a cookie, log or job argument.
    """

    access_token: str
    token_type: str
    expires_at: datetime
    scope_granted: str
    """What the server granted: may be narrower than asked (:meth:`missing_scopes`)."""
    scope_requested: str
    refresh_token: str | None = None
    id_token: str | None = None
    id_claims: Mapping[str, Any] = field(default_factory=dict)
    """The id_token's claims, verified (signature, issuer, audience, nonce) before use."""
    fhir_user: str | None = None
    """The signed-in user as a relative reference (``Practitioner/123``), or the absolute
    URL when it is not under the FHIR base (:func:`normalize_fhir_user`)."""
    patient: str | None = None
    """The launch's patient id: a launch with one acts on that patient only."""
    encounter: str | None = None
    fhir_context: tuple[Mapping[str, Any], ...] = ()
    need_patient_banner: bool | None = None
    smart_style_url: str | None = None
    intent: str | None = None
    tenant: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # When the token response arrived; with expires_at it gives the lifetime that sizes
    # the refresh margin. None for token sets stored before it was recorded.
    issued_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.expires_at.tzinfo is None:
            raise ValueError("TokenSet.expires_at must be timezone-aware")
        if self.issued_at is not None and self.issued_at.tzinfo is None:
            raise ValueError("TokenSet.issued_at must be timezone-aware")

    @classmethod
    def from_response(
        cls,
        body: Mapping[str, Any],
        *,
        scope_requested: str,
        now: datetime,
        id_claims: Mapping[str, Any] | None = None,
        previous: TokenSet | None = None,
        fhir_base: str | None = None,
    ) -> TokenSet:
        """Build from a token endpoint's JSON. ``previous`` fills what a refresh omits.

        A refresh response usually leaves out the launch context and the id_token, and a
        server that does not rotate refresh tokens leaves out ``refresh_token``: those
        carry over from the grant being refreshed. ``fhir_user`` is normalised by
        :func:`normalize_fhir_user` against ``fhir_base``.
        """
        expires_in = body.get("expires_in")
        try:
            seconds = int(expires_in) if expires_in is not None else DEFAULT_EXPIRES_IN
        except (TypeError, ValueError):
            seconds = DEFAULT_EXPIRES_IN
        claims = dict(id_claims or (previous.id_claims if previous else {}))
        fhir_user = normalize_fhir_user(claims.get("fhirUser") or claims.get("profile"), fhir_base)
        if fhir_user is None and previous is not None and not id_claims:
            fhir_user = previous.fhir_user

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
            fhir_user=fhir_user,
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
            issued_at=now,
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

    def refresh_margin(self) -> timedelta:
        """How long before ``expires_at`` to refresh: a tenth of the token's lifetime, at
        most a minute (a minute when the lifetime is not known)."""
        if self.issued_at is None:
            return MAX_REFRESH_MARGIN
        lifetime = max(timedelta(0), self.expires_at - self.issued_at)
        return min(MAX_REFRESH_MARGIN, lifetime * REFRESH_FRACTION)

    def expires_soon(self, now: datetime | None = None, margin: timedelta | None = None) -> bool:
        """Whether the token ends within ``margin`` (default :meth:`refresh_margin`)."""
        now = now or datetime.now(UTC)
        return self.expires_at - (self.refresh_margin() if margin is None else margin) <= now

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["expires_at"] = self.expires_at.isoformat()
        data["issued_at"] = self.issued_at.isoformat() if self.issued_at else None
        data["fhir_context"] = list(self.fhir_context)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TokenSet:
        data = json.loads(text)
        data["expires_at"] = datetime.fromisoformat(data["expires_at"])
        if data.get("issued_at"):
            data["issued_at"] = datetime.fromisoformat(data["issued_at"])
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
