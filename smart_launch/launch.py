"""EHR and standalone launch: state, PKCE, the authorize request, the callback, the code
exchange, refresh and id_token verification.

Storage-agnostic: the caller keeps a :class:`PendingLaunch` server-side keyed by
:func:`state_key` (single use) and a :class:`TokenSet` per grant.

The callback, in this order, so that someone holding a victim's callback URL cannot
burn its state from another browser:

1. :func:`parse_callback` reads ``code`` and ``state`` (or the EHR's ``error``);
2. the caller looks the pending launch up by ``state_key(state)`` *without* using it up;
3. :func:`check_pending` checks the state, the browser binding (the cookie secret given
   to the browser that started the launch, :func:`browser_key`) and the expiry;
4. only then does the caller consume the pending launch atomically (single use) and
   call :func:`exchange_code`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jws, jwt
from joserfc.errors import ClaimError, JoseError, MissingClaimError
from joserfc.jwk import KeySet
from joserfc.jwt import ClaimsOption, JWTClaimsRegistry

from ._cache import TtlCache
from ._http import cache_ttl, json_or_none
from ._token_endpoint import client_auth, post_token
from .config import Registration
from .discovery import SmartConfiguration
from .errors import (
    AuthorizationDenied,
    BrowserMismatch,
    IdTokenInvalid,
    NeedsAuthorization,
    StateError,
)
from .scopes import translate
from .tokens import TokenSet, normalize_fhir_user

__all__ = [
    "AuthorizationRequest",
    "JwksCache",
    "PendingLaunch",
    "TokenSet",
    "browser_key",
    "build_authorization_request",
    "check_browser",
    "check_pending",
    "exchange_code",
    "new_browser_secret",
    "new_pkce",
    "new_state",
    "parse_callback",
    "refresh",
    "scopes_for",
    "state_key",
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


def state_key(state: str) -> str:
    """What to index a pending launch by: SHA-256 of the state, so a read of the store
    does not hand out live states."""
    return hashlib.sha256(state.encode()).hexdigest()


def new_browser_secret() -> str:
    """A fresh secret for the browser-binding cookie. Issue one at every launch, never
    reuse one the browser brought: a planted cookie must not bind the new launch."""
    return secrets.token_urlsafe(32)


def browser_key(secret: str) -> str:
    """What the server keeps of the browser's secret (SHA-256), to compare at callback."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check_browser(expected_key: str | None, secret: str | None) -> None:
    """Raise :class:`BrowserMismatch` unless ``secret`` is the one ``expected_key`` was
    made from (constant time)."""
    if (
        not expected_key
        or not secret
        or not secrets.compare_digest(expected_key, browser_key(secret))
    ):
        raise BrowserMismatch(
            "This sign-in did not start in this browser (or the browser blocked CareDesk's "
            "cookie). Launch CareDesk again from the EHR."
        )


@dataclass(frozen=True, repr=False, kw_only=True)
class PendingLaunch:
    """What the server keeps between the authorize redirect and the callback.

    ``browser_key`` binds it to the browser that started it (:func:`browser_key` of the
    cookie secret); ``None`` only for launches stored before binding existed.
    """

    # What the authorize redirect carried.
    state: str
    """The OAuth ``state`` sent with the authorize redirect; the callback must return it."""
    code_verifier: str
    """The PKCE verifier (S256): only its challenge left the server."""
    launch: str | None = None
    """The EHR's ``launch`` parameter (an EHR launch); ``None`` for a standalone launch."""
    # Whose launch it is, and when it started.
    registration_id: str
    scope_requested: str
    created_at: datetime
    browser_key: str | None = None

    @classmethod
    def start(
        cls,
        reg: Registration,
        conf: SmartConfiguration,
        *,
        launch: str | None = None,
        scope: str | None = None,
        now: datetime | None = None,
        browser_secret: str | None = None,
    ) -> PendingLaunch:
        verifier, _ = new_pkce()
        return cls(
            state=new_state(),
            code_verifier=verifier,
            registration_id=reg.id,
            scope_requested=scope or scopes_for(reg, conf),
            created_at=now or datetime.now(UTC),
            launch=launch,
            browser_key=browser_key(browser_secret) if browser_secret else None,
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
    pending: PendingLaunch | None,
    *,
    state: str,
    now: datetime | None = None,
    browser_secret: str | None = None,
) -> PendingLaunch:
    """Validate what the store holds for ``state``: the state itself, then the browser
    binding (when the launch has one), then the expiry. Call it *before* using the
    pending launch up, so a callback replayed from another browser changes nothing.

    ``None`` means unknown or already used: both are refused the same way so a replay
    learns nothing.
    """
    now = now or datetime.now(UTC)
    if pending is None or not secrets.compare_digest(pending.state, state):
        raise StateError("This sign-in link is unknown or was already used. Launch again.")
    if pending.browser_key is not None:
        check_browser(pending.browser_key, browser_secret)
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
    nonce: str | None = None,
) -> AuthorizationRequest:
    """The browser's next stop. GET with a query, or a form POST when the server offers
    ``authorize-post`` and the URL would be too long.

    PKCE S256 is always sent: SMART 2.x requires it, and servers that fail to advertise
    it still verify it or ignore it.
    """
    params: dict[str, str] = {
        "response_type": "code",
        "client_id": reg.client_id,
        "redirect_uri": reg.require_redirect_uri(),
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
    if nonce is not None:
        # OpenID Connect: echoed in the id_token, checked by verify_id_token(nonce=...).
        params["nonce"] = nonce
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
    """Thread-safe, bounded cache of servers' JWKS (by URI), kept as the server's cache
    headers say within [minimum, ceiling], and refetched when a kid is unknown (the
    server rotated its key)."""

    def __init__(
        self, *, minimum: float = 60.0, ceiling: float = 3600.0, maxsize: int = 64
    ) -> None:
        self.minimum = minimum
        self.ceiling = ceiling
        self._sets: TtlCache[str, KeySet] = TtlCache(maxsize=maxsize)

    def get(self, uri: str, *, http: requests.Session, kid: str | None, now: datetime) -> KeySet:
        key_set = self._sets.get(uri, now=now)
        if key_set is not None and (kid is None or any(k.kid == kid for k in key_set.keys)):
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
        self._sets.put(uri, key_set, expires_at=now + timedelta(seconds=ttl))
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


# What each failed claim means to the person reading the error.
_CLAIM_MESSAGES = {
    "iss": "The id_token was issued by a different server.",
    "aud": "The id_token was issued for a different app.",
    "exp": "The id_token has expired.",
    "iat": "The id_token was issued in the future.",
    "nonce": "The id_token does not belong to this sign-in (nonce).",
    "sub": "The id_token names no user.",
}


def id_token_claims_registry(
    conf: SmartConfiguration, *, client_id: str, now: datetime, nonce: str | None = None
) -> JWTClaimsRegistry:
    """joserfc's claims registry for a SMART id_token: ``iss`` is the discovery
    ``issuer`` (Epic: its OAuth server, not the FHIR base; see
    :attr:`SmartConfiguration.expected_id_token_issuer`), ``aud`` includes our client id,
    ``exp`` and ``sub`` present, ``exp``/``iat`` within :data:`CLOCK_SKEW`, ``nonce`` equal
    when the authorize request sent one."""
    options: dict[str, ClaimsOption] = {
        "iss": {"essential": True, "value": conf.expected_id_token_issuer},
        "aud": {"essential": True, "value": client_id},
        "exp": {"essential": True},
        "sub": {"essential": True},
    }
    if nonce is not None:
        options["nonce"] = {"essential": True, "value": nonce}
    return JWTClaimsRegistry(
        now=int(now.timestamp()), leeway=int(CLOCK_SKEW.total_seconds()), **options
    )


def verify_id_token(
    id_token: str,
    conf: SmartConfiguration,
    *,
    http: requests.Session,
    client_id: str,
    now: datetime | None = None,
    jwks_cache: JwksCache | None = None,
    nonce: str | None = None,
) -> dict[str, Any]:
    """The id_token's claims after checking its signature against the server's JWKS
    (refetched once for an unknown ``kid``: key rotation) and its claims with
    :func:`id_token_claims_registry`."""
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
    try:
        id_token_claims_registry(conf, client_id=client_id, now=now, nonce=nonce).validate(claims)
    except ClaimError as exc:
        message = _CLAIM_MESSAGES.get(exc.claim, f"The id_token's {exc.claim} claim is invalid.")
        if isinstance(exc, MissingClaimError):
            message = f"The id_token lacks its {exc.claim} claim."
        raise IdTokenInvalid(message, code=f"id_token_{exc.error}") from exc
    return claims


def _token_set(
    body: dict[str, Any],
    reg: Registration,
    conf: SmartConfiguration,
    *,
    http: requests.Session,
    scope_requested: str,
    now: datetime,
    nonce: str | None = None,
) -> TokenSet:
    claims: dict[str, Any] | None = None
    id_token = body.get("id_token")
    if isinstance(id_token, str) and id_token:
        claims = verify_id_token(
            id_token, conf, client_id=reg.client_id, http=http, now=now, nonce=nonce
        )
    return TokenSet.from_response(
        body, scope_requested=scope_requested, now=now, id_claims=claims, fhir_base=reg.fhir_base
    )


def exchange_code(
    reg: Registration,
    conf: SmartConfiguration,
    *,
    http: requests.Session,
    code: str,
    code_verifier: str,
    scope_requested: str,
    nonce: str | None = None,
) -> TokenSet:
    """Trade the authorization code for tokens, authenticating as the registration says.

    ``scope_requested`` is what the authorize request asked for (``PendingLaunch``
    keeps it). The id_token, when present, must verify (``nonce``: the one the authorize
    request sent, if any). The result's ``scope_granted`` may be narrower than asked: the app
    runs with it and ``TokenSet.missing_scopes()`` says what is absent.
    """
    now = datetime.now(UTC)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": reg.require_redirect_uri(),
        "code_verifier": code_verifier,
    }
    body = post_token(http, conf, form, client_auth(reg, conf))
    token_set = _token_set(
        body,
        reg,
        conf,
        http=http,
        scope_requested=scope_requested,
        now=now,
        nonce=nonce,
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
    on_accepted: Callable[[TokenSet], None] | None = None,
) -> TokenSet:
    """One refresh_token grant. Use :func:`smart_launch.refresh.refresh_serialized` from
    workers: a rotated refresh token must never be used twice.

    Whether a refresh token exists decides, not whether ``offline_access`` appears in
    the granted scope (Epic issues one without listing it).

    Once the server has accepted the refresh, its answer is the grant: a server that
    rotates refresh tokens has already retired the old one. So ``on_accepted`` (the
    caller's store) receives the new TokenSet before anything else is checked, and a
    refreshed id_token that fails verification is dropped with a warning: the identity
    verified at launch stands, the new tokens are kept. (The SMART reference launcher
    sends refreshed id_tokens without ``aud``; others omit the id_token.)
    """
    if not token_set.refresh_token:
        raise NeedsAuthorization("The EHR session has ended. Launch CareDesk again.")
    now = now or datetime.now(UTC)
    form = {"grant_type": "refresh_token", "refresh_token": token_set.refresh_token}
    # invalid_grant raises GrantRejected, a NeedsAuthorization: the user must relaunch.
    body = post_token(http, conf, form, client_auth(reg, conf))
    new_id_token = body.pop("id_token", None)
    accepted = TokenSet.from_response(
        body,
        scope_requested=token_set.scope_requested,
        now=now,
        previous=token_set,
        fhir_base=reg.fhir_base,
    )
    if on_accepted is not None:
        on_accepted(accepted)
    if not isinstance(new_id_token, str) or not new_id_token:
        return accepted
    try:
        claims = verify_id_token(new_id_token, conf, client_id=reg.client_id, http=http, now=now)
    except IdTokenInvalid as exc:
        log.warning(
            "registration %s: refreshed id_token dropped (%s); the launch's identity stands",
            reg.id,
            exc.summary,
        )
        return accepted
    previous_sub = token_set.id_claims.get("sub")
    if previous_sub is not None and claims.get("sub") != previous_sub:
        # OpenID Connect Core 12.2: a refreshed id_token must name the same subject.
        log.warning("registration %s: refreshed id_token names another subject; dropped", reg.id)
        return accepted
    return dataclasses.replace(
        accepted,
        id_token=new_id_token,
        id_claims=claims,
        fhir_user=normalize_fhir_user(
            claims.get("fhirUser") or claims.get("profile"), reg.fhir_base
        )
        or accepted.fhir_user,
    )
