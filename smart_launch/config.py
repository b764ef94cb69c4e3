"""Plain configuration types: what the lead's EhrRegistration rows turn into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from joserfc.jwk import ECKey, RSAKey

Alg = Literal["RS384", "ES384"]
ClientType = Literal["public", "confidential-symmetric", "confidential-asymmetric"]


@dataclass(frozen=True, repr=False)
class SigningKey:
    """A private signing key for private_key_jwt. ``private_pem`` is PKCS#8 PEM text."""

    kid: str
    alg: Alg
    private_pem: str

    def private_key(self) -> RSAKey | ECKey:
        params: dict[str, Any] = {"kid": self.kid, "alg": self.alg, "use": "sig"}
        if self.alg == "RS384":
            return RSAKey.import_key(self.private_pem, parameters=params)  # type: ignore[arg-type]
        if self.alg == "ES384":
            return ECKey.import_key(self.private_pem, parameters=params)  # type: ignore[arg-type]
        raise ValueError(f"unsupported signing algorithm {self.alg!r}")

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK with ``kid``, ``alg`` and ``use=sig`` (what a JWKS serves)."""
        jwk = dict(self.private_key().as_dict(private=False))
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return jwk

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r}, private_pem=<hidden>)"


@dataclass(frozen=True, repr=False)
class Registration:
    """One registered EHR. ``iss`` is the exact FHIR base the EHR sends on launch.

    ``signing_keys[0]`` signs client assertions; every key in the tuple stays published in
    the JWKS, so a rotated-out key keeps verifying until it is removed.
    """

    id: str
    iss: str
    client_id: str
    client_type: ClientType
    scopes: str
    redirect_uri: str
    client_secret: str | None = None
    signing_keys: tuple[SigningKey, ...] = ()
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

    def __repr__(self) -> str:
        return (
            f"Registration(id={self.id!r}, iss={self.iss!r}, client_id={self.client_id!r}, "
            f"client_type={self.client_type!r}, client_secret="
            f"{'<hidden>' if self.client_secret else None}, "
            f"signing_keys={[k.kid for k in self.signing_keys]!r})"
        )
