"""Plain configuration types: what the store's EHR registrations turn into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from joserfc.jwk import ECKey, RSAKey

from ._http import DEFAULT_PORTS
from .errors import ConfigurationError

Alg = Literal["RS384", "ES384"]
ClientType = Literal["public", "confidential-symmetric", "confidential-asymmetric"]


@dataclass(frozen=True, repr=False)
class SigningKey:
    """A private signing key for private_key_jwt. ``private_pem`` is PKCS#8 PEM text."""

    kid: str
    alg: Alg
    private_pem: str

    def pem(self) -> str:
        """The PEM text, read when the key signs (a store's subclass keeps it sealed until
        then: ``helpdesk.ehr``)."""
        return self.private_pem

    def private_key(self) -> RSAKey | ECKey:
        params: dict[str, Any] = {"kid": self.kid, "alg": self.alg, "use": "sig"}
        if self.alg == "RS384":
            return RSAKey.import_key(self.pem(), parameters=params)  # type: ignore[arg-type]
        if self.alg == "ES384":
            return ECKey.import_key(self.pem(), parameters=params)  # type: ignore[arg-type]
        raise ValueError(f"unsupported signing algorithm {self.alg!r}")

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK with ``kid``, ``alg`` and ``use=sig`` (what a JWKS serves)."""
        jwk = dict(self.private_key().as_dict(private=False))
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return jwk

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r}, private_pem=<hidden>)"


def normalize_iss(url: str) -> str:
    """A FHIR base in one form, for comparing an ``iss`` with a registered one: scheme and
    host lower-cased, the default port dropped, trailing slashes removed.

    A real server's launch link sends ``iss`` with a trailing slash that its own
    registration page shows without; both name the same server.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port in (None, DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, netloc, path, parts.query, ""))


@dataclass(frozen=True, repr=False, kw_only=True)
class Registration:
    """One registered EHR. ``iss`` is the FHIR base the EHR sends on launch (compare with
    :meth:`matches_iss`: a trailing slash or an upper-case host still match).

    ``signing_keys[0]`` signs client assertions; every key in the tuple stays published in
    the JWKS, so a rotated-out key keeps verifying until it is removed.

    ``redirect_uri`` is only for the web, which redirects a browser; jobs and the command
    line never do and leave it ``None`` (authorization and code exchange then raise
    :class:`~smart_launch.errors.ConfigurationError`).
    """

    id: str
    iss: str
    # Who the client is, and what it proves that with.
    client_id: str
    client_type: ClientType
    client_secret: str | None = None
    signing_keys: tuple[SigningKey, ...] = ()
    # What it asks for, and where the browser comes back.
    scopes: str
    redirect_uri: str | None = None
    backend_client_id: str | None = None
    backend_scopes: str | None = None
    frame_origins: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.client_type == "confidential-symmetric" and not self.client_secret:
            raise ValueError("a confidential-symmetric registration needs client_secret")
        if self.client_type == "confidential-asymmetric" and not self.signing_keys:
            raise ValueError("a confidential-asymmetric registration needs a signing key")

    @property
    def fhir_base(self) -> str:
        return self.iss.rstrip("/")

    def matches_iss(self, iss: str) -> bool:
        """Whether ``iss`` (from a launch link) names this registration's FHIR base."""
        return bool(iss) and normalize_iss(iss) == normalize_iss(self.iss)

    def require_redirect_uri(self) -> str:
        if not self.redirect_uri:
            raise ConfigurationError(
                "This registration has no redirect URI, so it cannot send a browser to "
                "the EHR's sign-in (only the web app can).",
                code="missing_redirect_uri",
            )
        return self.redirect_uri

    def __repr__(self) -> str:
        return (
            f"Registration(id={self.id!r}, iss={self.iss!r}, client_id={self.client_id!r}, "
            f"client_type={self.client_type!r}, client_secret="
            f"{'<hidden>' if self.client_secret else None}, "
            f"signing_keys={[k.kid for k in self.signing_keys]!r})"
        )
