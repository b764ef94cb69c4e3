"""EHR and standalone launch: state, PKCE, the authorize request, the callback, the code
exchange, refresh and id_token verification.

Storage-agnostic: the caller keeps a :class:`PendingLaunch` server-side keyed by its
state (single use) and a :class:`TokenSet` per grant.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ._http import cache_ttl, json_or_none
from ._token_endpoint import client_auth, post_token
from .config import Registration
from .discovery import SmartConfiguration
from .errors import AuthFailed, AuthorizationDenied, IdTokenInvalid, NeedsAuthorization, StateError
from .scopes import translate
from .tokens import TokenSet

__all__ = [
    "AuthorizationRequest",
    "JwksCache",
    "PendingLaunch",
    "TokenSet",
    "build_authorization_request",
    "check_pending",
    "exchange_code",
    "new_pkce",
    "new_state",
    "parse_callback",
    "refresh",
    "scopes_for",
    "verify_id_token",
]

log = logging.getLogger(__name__)

STATE_TTL = timedelta(minutes=10)
# Past this URL length some browsers, proxies and EHR embeddings truncate the request.
MAX_GET_URL = 1500
# id_token signature algorithms we accept. SMART requires servers to offer RS256;
# never "none" or HMAC (an HMAC id_token would be keyed with something we would share).
ID_TOKEN_ALGS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384")
CLOCK_SKEW = timedelta(seconds=120)


def new_state() -> str:
    """256 random bits, URL-safe (the spec asks for at least 122)."""
    return secrets.token_urlsafe(32)


def new_pkce() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge). 64 random bytes -> an 86-character verifier."""
    verifier = secrets.token_urlsafe(64)
    return verifier, create_s256_code_challenge(verifier)


@dataclass(frozen=True, repr=False)
class PendingLaunch:
    """What the server keeps between the authorize redirect and the callback."""

    state: str
    code_verifier: str
    registration_id: str
    scope_requested: str
    created_at: datetime
    launch: str | None = None

    @classmethod
    def start(
        cls,
        reg: Registration,
        conf: SmartConfiguration,
        *,
        launch: str | None = None,
        scope: str | None = None,
        now: datetime | None = None,
    ) -> PendingLaunch:
        verifier, _ = new_pkce()
        return cls(
            state=new_state(),
            code_verifier=verifier,
            registration_id=reg.id,
            scope_requested=scope or scopes_for(reg, conf),
            created_at=now or datetime.now(UTC),
            launch=launch,
        )

    def expires_at(self) -> datetime:
        return self.created_at + STATE_TTL

    def to_json(self) -> str:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PendingLaunch:
        data = json.loads(text)
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        return cls(**data)

    def __repr__(self) -> str:
        return (
            f"PendingLaunch(registration_id={self.registration_id!r}, "
            f"created_at={self.created_at.isoformat()}, state=<hidden>, code_verifier=<hidden>)"
        )


def check_pending(
    pending: PendingLaunch | None, *, state: str, now: datetime | None = None
) -> PendingLaunch:
    """Validate what the store returned for ``state`` (the store removed it: single use).

    ``None`` means unknown or already used: both are refused the same way so a replay
    learns nothing.
    """
    now = now or datetime.now(UTC)
    if pending is None or not secrets.compare_digest(pending.state, state):
        raise StateError("This sign-in link is unknown or was already used. Launch again.")
    if now >= pending.expires_at():
        raise StateError("This sign-in took longer than 10 minutes. Launch again.")
    return pending


def scopes_for(reg: Registration, conf: SmartConfiguration, scopes: str | None = None) -> str:
    """The registration's scopes in the syntax the server speaks (v2 iff permission-v2)."""
    return translate(scopes or reg.scopes, v2="permission-v2" in conf.capabilities)


@dataclass(frozen=True)
class AuthorizationRequest:
    method: Literal["GET", "POST"]
    url: str
    params: Mapping[str, str]


def build_authorization_request(
    reg: Registration,
    conf: SmartConfiguration,
    *,
    state: str,
    code_verifier: str,
    launch: str | None,
    scope: str | None = None,
) -> AuthorizationRequest:
    """The browser's next stop. GET with a query, or a form POST when the server offers
    ``authorize-post`` and the URL would be too long.

    PKCE S256 is always sent: SMART 2.x requires it, and servers that fail to advertise
    it still verify it or ignore it.
    """
    params: dict[str, str] = {
        "response_type": "code",
        "client_id": reg.client_id,
        "redirect_uri": reg.redirect_uri,
        "scope": scope or scopes_for(reg, conf),
        "state": state,
        # aud is the FHIR base exactly as registered (= the iss the EHR launched with),
        # so a token minted for one server cannot be phished for another.
        "aud": reg.iss,
        "code_challenge": create_s256_code_challenge(code_verifier),
        "code_challenge_method": "S256",
    }
    if launch is not None:
        params["launch"] = launch
    separator = "&" if urlsplit(conf.authorization_endpoint).query else "?"
    url = f"{conf.authorization_endpoint}{separator}{urlencode(params)}"
    if "authorize-post" in conf.capabilities and len(url) > MAX_GET_URL:
        return AuthorizationRequest("POST", conf.authorization_endpoint, params)
    return AuthorizationRequest("GET", url, params)


def parse_callback(args: Mapping[str, str]) -> tuple[str, str]:
    """(code, state) from the redirect back. The state is not checked here: see
    :func:`check_pending`. An ``error`` raises :class:`AuthorizationDenied`.
    """
    if args.get("error"):
        raise AuthorizationDenied(args["error"], args.get("error_description"))
    code, state = args.get("code"), args.get("state")
    if not state:
        raise StateError("The EHR sent no state back. Launch again.")
    if not code:
        raise AuthorizationDenied("invalid_request", "The EHR sent no authorization code.")
    return code, state


class JwksCache:
    """Thread-safe cache of the server's JWKS, refetched when a kid is unknown (rotation)."""

    def __init__(self, *, minimum: float = 60.0, ceiling: float = 3600.0) -> None:
        self.minimum = minimum
        self.ceiling = ceiling
        self._lock = threading.Lock()
        self._sets: dict[str, tuple[datetime, KeySet]] = {}

    def get(self, uri: str, *, http: requests.Session, kid: str | None, now: datetime) -> KeySet:
        with self._lock:
            entry = self._sets.get(uri)
        if entry and entry[0] > now:
            key_set = entry[1]
            if kid is None or any(k.kid == kid for k in key_set.keys):
                return key_set
        return self._fetch(uri, http=http, now=now)

    def _fetch(self, uri: str, *, http: requests.Session, now: datetime) -> KeySet:
        try:
            response = http.get(
                uri, headers={"Accept": "application/json"}, timeout=10.0, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise IdTokenInvalid("The EHR's signing keys could not be fetched.") from exc
        with response:
            doc = json_or_none(response)
        if response.status_code != 200 or not isinstance(doc, dict):
            raise IdTokenInvalid("The EHR's signing keys could not be fetched.")
        try:
            key_set = KeySet.import_key_set(doc)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise IdTokenInvalid("The EHR's signing keys are malformed.") from exc
        ttl = cache_ttl(
            response.headers, now=now, default=300.0, minimum=self.minimum, ceiling=self.ceiling
        )
        with self._lock:
            self._sets[uri] = (now + timedelta(seconds=ttl), key_set)
        return key_set


_default_jwks_cache = JwksCache()


def warm_jwks(
    conf: SmartConfiguration, *, http: requests.Session, jwks_cache: JwksCache | None = None
) -> None:
    """Fetch the server's JWKS ahead of the callback (call it while the user is at the
    authorize page), so verifying the id_token does not add a round trip after the token
    exchange. Failures are left for :func:`verify_id_token` to report."""
    if not conf.jwks_uri:
        return
    try:
        (jwks_cache or _default_jwks_cache).get(
            conf.jwks_uri, http=http, kid=None, now=datetime.now(UTC)
        )
    except IdTokenInvalid:
        log.info("JWKS prefetch failed; the callback will try again")


def verify_id_token(
    id_token: str,
    conf: SmartConfiguration,
    *,
    client_id: str,
    http: requests.Session,
    now: datetime | None = None,
    jwks_cache: JwksCache | None = None,
) -> dict[str, Any]:
    """The id_token's claims after checking signature (server JWKS), iss, aud and exp."""
    now = now or datetime.now(UTC)
    if not conf.jwks_uri:
        raise IdTokenInvalid("The EHR issued an id_token but publishes no jwks_uri.")
    cache = jwks_cache or _default_jwks_cache
    try:
        header = jws.extract_compact(id_token.encode()).headers()
    except (JoseError, ValueError) as exc:
        raise IdTokenInvalid("The id_token is not a JWT.") from exc
    kid = header.get("kid") if isinstance(header, dict) else None
    key_set = cache.get(conf.jwks_uri, http=http, kid=kid, now=now)
    try:
        token = jwt.decode(id_token, key_set, algorithms=list(ID_TOKEN_ALGS))
    except (JoseError, ValueError) as exc:
        raise IdTokenInvalid("The id_token signature does not verify.") from exc
    claims = dict(token.claims)
    expected_iss = conf.expected_id_token_issuer
    if claims.get("iss") != expected_iss:
        raise IdTokenInvalid("The id_token was issued by a different server.")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if client_id not in audiences:
        raise IdTokenInvalid("The id_token was issued for a different app.")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or datetime.fromtimestamp(exp, UTC) + CLOCK_SKEW < now:
        raise IdTokenInvalid("The id_token has expired.")
    iat = claims.get("iat")
    if isinstance(iat, int | float) and datetime.fromtimestamp(iat, UTC) - CLOCK_SKEW > now:
        raise IdTokenInvalid("The id_token was issued in the future.")
    return claims


def _token_set(
    body: dict[str, Any],
    reg: Registration,
    conf: SmartConfiguration,
    *,
    http: requests.Session,
    scope_requested: str,
    now: datetime,
    previous: TokenSet | None = None,
) -> TokenSet:
    claims: dict[str, Any] | None = None
    id_token = body.get("id_token")
    if isinstance(id_token, str) and id_token:
        claims = verify_id_token(id_token, conf, client_id=reg.client_id, http=http, now=now)
    return TokenSet.from_response(
        body, scope_requested=scope_requested, now=now, id_claims=claims, previous=previous
    )


def exchange_code(
    reg: Registration,
    conf: SmartConfiguration,
    *,
    code: str,
    code_verifier: str,
    http: requests.Session,
    scope_requested: str | None = None,
    now: datetime | None = None,
) -> TokenSet:
    """Trade the authorization code for tokens, authenticating as the registration says.

    The result's ``scope_granted`` may be narrower than asked: the app runs with it and
    ``TokenSet.missing_scopes()`` says what is absent.
    """
    now = now or datetime.now(UTC)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": reg.redirect_uri,
        "code_verifier": code_verifier,
    }
    body = post_token(http, conf, form, client_auth(reg, conf))
    token_set = _token_set(
        body,
        reg,
        conf,
        http=http,
        scope_requested=scope_requested or scopes_for(reg, conf),
        now=now,
    )
    missing = token_set.missing_scopes()
    if missing:
        # Scope names are not secrets; the grant is still usable for what was granted.
        log.info("registration %s granted fewer scopes than asked: %s", reg.id, missing)
    return token_set


def refresh(
    reg: Registration,
    conf: SmartConfiguration,
    token_set: TokenSet,
    *,
    http: requests.Session,
    now: datetime | None = None,
) -> TokenSet:
    """One refresh_token grant. Use :func:`smart_launch.refresh.refresh_serialized` from
    workers: a rotated refresh token must never be used twice.

    Whether a refresh token exists decides, not whether ``offline_access`` appears in
    the granted scope (Epic issues one without listing it).
    """
    if not token_set.refresh_token:
        raise NeedsAuthorization("The EHR session has ended. Launch CareDesk again.")
    now = now or datetime.now(UTC)
    form = {"grant_type": "refresh_token", "refresh_token": token_set.refresh_token}
    try:
        body = post_token(http, conf, form, client_auth(reg, conf))
    except AuthFailed as exc:
        if exc.error == "invalid_grant":
            raise NeedsAuthorization(
                "The EHR no longer accepts this session. Launch CareDesk again."
            ) from exc
        raise
    return _token_set(
        body,
        reg,
        conf,
        http=http,
        scope_requested=token_set.scope_requested,
        now=now,
        previous=token_set,
    )
