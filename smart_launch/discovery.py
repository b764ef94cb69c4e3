"""SMART discovery: /.well-known/smart-configuration, else the CapabilityStatement.

Discovery takes a :class:`Registration`, never a URL from a request: the only hosts this
module talks to are the FHIR bases an operator registered (no open redirect, no SSRF).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urljoin

import requests

from ._cache import TtlCache
from ._http import cache_ttl, json_or_none
from .config import Registration
from .errors import DiscoveryError, UnknownIssuer

log = logging.getLogger(__name__)

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
CAPABILITIES_EXT = "http://fhir-registry.smarthealthit.org/StructureDefinition/capabilities"
DEFAULT_TIMEOUT = 10.0

Source = Literal["well-known", "capability-statement"]


@dataclass(frozen=True)
class SmartConfiguration:
    fhir_base: str
    issuer: str | None
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str | None = None
    registration_endpoint: str | None = None
    introspection_endpoint: str | None = None
    revocation_endpoint: str | None = None
    capabilities: frozenset[str] = frozenset()
    code_challenge_methods: tuple[str, ...] = ()
    grant_types: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods: tuple[str, ...] = ()
    token_endpoint_auth_signing_algs: tuple[str, ...] = ()
    source: Source = "well-known"
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def expected_id_token_issuer(self) -> str:
        # SMART 2.x: the id_token iss is the discovery ``issuer`` (Epic: its OAuth server,
        # not the FHIR base). Servers that omit ``issuer`` (SMART 1.0, no OIDC advertised)
        # sign id_tokens with the FHIR base as iss.
        return self.issuer or self.fhir_base


def find_registration(iss: str, registrations: Mapping[str, Registration]) -> Registration:
    """The registration whose ``iss`` names the same FHIR base as ``iss``
    (:meth:`Registration.matches_iss`: a trailing slash, host case and default port do
    not matter; anything else does).

    ``registrations`` maps iss to Registration. Raises :class:`UnknownIssuer` otherwise, so
    an unregistered ``iss`` from a launch URL never reaches an HTTP client.
    """
    reg = registrations.get(iss)
    if reg is not None:
        return reg
    for candidate in registrations.values():
        if candidate.matches_iss(iss):
            return candidate
    raise UnknownIssuer("This EHR is not registered with CareDesk.")


class DiscoveryCache:
    """Thread-safe per-iss cache of SmartConfiguration honoring HTTP cache headers.

    ``minimum`` keeps a ``no-store`` server from costing a round trip on every launch;
    ``ceiling`` bounds how long a changed endpoint can go unnoticed; ``maxsize`` bounds
    how many EHRs are kept (least recently used go first).
    """

    def __init__(
        self,
        *,
        default_ttl: float = 300.0,
        minimum: float = 60.0,
        ceiling: float = 3600.0,
        maxsize: int = 256,
    ) -> None:
        self.default_ttl = default_ttl
        self.minimum = minimum
        self.ceiling = ceiling
        self._entries: TtlCache[str, SmartConfiguration] = TtlCache(maxsize=maxsize)

    def get(self, key: str, *, now: datetime | None = None) -> SmartConfiguration | None:
        return self._entries.get(key, now=now)

    def put(
        self,
        key: str,
        conf: SmartConfiguration,
        headers: Mapping[str, str],
        *,
        now: datetime | None = None,
    ) -> None:
        now = now or datetime.now(UTC)
        ttl = cache_ttl(
            headers, now=now, default=self.default_ttl, minimum=self.minimum, ceiling=self.ceiling
        )
        self._entries.put(key, conf, expires_at=now + timedelta(seconds=ttl))

    def expires_at(self, key: str) -> datetime | None:
        return self._entries.expires_at(key)

    def clear(self) -> None:
        self._entries.clear()


def _strs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def _url(value: Any, base: str) -> str | None:
    # SMART allows endpoints relative to the document that lists them; resolve them
    # against it so the rest of the code only sees absolute URLs.
    if not isinstance(value, str) or not value:
        return None
    return urljoin(base, value)


def parse_smart_configuration(
    doc: Mapping[str, Any], *, fhir_base: str, document_url: str
) -> SmartConfiguration:
    authorize = _url(doc.get("authorization_endpoint"), document_url)
    token = _url(doc.get("token_endpoint"), document_url)
    if not authorize or not token:
        raise DiscoveryError("The EHR's smart-configuration lacks authorization/token endpoints.")
    issuer = doc.get("issuer")
    return SmartConfiguration(
        fhir_base=fhir_base,
        issuer=issuer if isinstance(issuer, str) and issuer else None,
        authorization_endpoint=authorize,
        token_endpoint=token,
        jwks_uri=_url(doc.get("jwks_uri"), document_url),
        registration_endpoint=_url(doc.get("registration_endpoint"), document_url),
        introspection_endpoint=_url(doc.get("introspection_endpoint"), document_url),
        revocation_endpoint=_url(doc.get("revocation_endpoint"), document_url),
        capabilities=frozenset(_strs(doc.get("capabilities"))),
        code_challenge_methods=_strs(doc.get("code_challenge_methods_supported")),
        grant_types=_strs(doc.get("grant_types_supported")),
        scopes_supported=_strs(doc.get("scopes_supported")),
        token_endpoint_auth_methods=_strs(doc.get("token_endpoint_auth_methods_supported")),
        token_endpoint_auth_signing_algs=_strs(
            doc.get("token_endpoint_auth_signing_alg_values_supported")
        ),
        source="well-known",
        raw=dict(doc),
    )


def parse_capability_statement(
    capstmt: Mapping[str, Any], *, fhir_base: str, document_url: str
) -> SmartConfiguration:
    """The SMART 1.0 fallback: rest[].security's oauth-uris extension."""
    uris: dict[str, str] = {}
    capabilities: set[str] = set()
    for rest in capstmt.get("rest") or []:
        security = rest.get("security") or {}
        for ext in security.get("extension") or []:
            if ext.get("url") == OAUTH_URIS:
                for sub in ext.get("extension") or []:
                    url = _url(sub.get("valueUri") or sub.get("valueUrl"), document_url)
                    if url and isinstance(sub.get("url"), str):
                        uris[sub["url"]] = url
            elif ext.get("url") == CAPABILITIES_EXT and isinstance(ext.get("valueCode"), str):
                capabilities.add(ext["valueCode"])
    if "authorize" not in uris or "token" not in uris:
        raise DiscoveryError(
            "The EHR publishes neither .well-known/smart-configuration nor OAuth URIs "
            "in its CapabilityStatement."
        )
    return SmartConfiguration(
        fhir_base=fhir_base,
        issuer=None,
        authorization_endpoint=uris["authorize"],
        token_endpoint=uris["token"],
        registration_endpoint=uris.get("register"),
        introspection_endpoint=uris.get("introspect"),
        revocation_endpoint=uris.get("revoke"),
        capabilities=frozenset(capabilities),
        source="capability-statement",
        raw={"oauth-uris": uris},
    )


def _get_json(
    http: requests.Session, url: str, accept: str
) -> tuple[requests.Response | None, Any]:
    try:
        # No redirects: a redirect could walk discovery off the registered host.
        response = http.get(
            url, headers={"Accept": accept}, timeout=DEFAULT_TIMEOUT, allow_redirects=False
        )
    except requests.RequestException as exc:
        log.info("discovery request failed: %s", type(exc).__name__)
        return None, None
    with response:
        if response.status_code != 200:
            return response, None
        return response, json_or_none(response)


def discover(
    reg: Registration,
    *,
    http: requests.Session,
    cache: DiscoveryCache | None = None,
    now: datetime | None = None,
) -> SmartConfiguration:
    """The SMART configuration of ``reg``'s EHR, from cache when still fresh."""
    base = reg.fhir_base
    if cache is not None:
        hit = cache.get(base, now=now)
        if hit is not None:
            return hit

    well_known = f"{base}/.well-known/smart-configuration"
    response, doc = _get_json(http, well_known, "application/json")
    if isinstance(doc, dict) and doc.get("authorization_endpoint"):
        conf = parse_smart_configuration(doc, fhir_base=base, document_url=well_known)
    else:
        log.info(
            "smart-configuration unavailable (status %s) for registration %s; "
            "trying CapabilityStatement",
            response.status_code if response is not None else "no response",
            reg.id,
        )
        metadata = f"{base}/metadata"
        response, capstmt = _get_json(http, metadata, "application/fhir+json")
        if not isinstance(capstmt, dict) or capstmt.get("resourceType") != "CapabilityStatement":
            raise DiscoveryError("The EHR's SMART configuration could not be retrieved.")
        conf = parse_capability_statement(capstmt, fhir_base=base, document_url=metadata)
    if cache is not None and response is not None:
        cache.put(base, conf, response.headers, now=now)
    return conf
