"""Talking to the token endpoint: client authentication and error handling.

authlib's ``ClientAuth`` applies the registration's auth method to the request; the
asymmetric method is authlib's ``PrivateKeyJWT`` with our own signer, because its
defaults (RS256, ``exp`` an hour out, a ``jti`` that is reused when ``claims`` is shared
between calls) are not what SMART asks for.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import requests
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc import jwt

from ._http import json_or_none
from .config import Registration, SigningKey
from .discovery import SmartConfiguration
from .errors import AuthFailed

log = logging.getLogger(__name__)

TOKEN_TIMEOUT = 15.0
# SMART Backend Services: "exp ... no more than five minutes in the future".
ASSERTION_LIFETIME = timedelta(seconds=300)
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def client_assertion(
    client_id: str,
    token_endpoint: str,
    key: SigningKey,
    *,
    now: datetime | None = None,
    lifetime: timedelta = ASSERTION_LIFETIME,
) -> str:
    """A signed private_key_jwt client assertion (RFC 7523, SMART Backend Services)."""
    if lifetime > ASSERTION_LIFETIME:
        raise ValueError("client assertions must expire within 5 minutes")
    now = now or datetime.now(UTC)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "jti": uuid.uuid4().hex,
        "iat": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
    }
    header = {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key.private_key(), algorithms=[key.alg])


class SmartPrivateKeyJWT(PrivateKeyJWT):  # type: ignore[misc]
    """authlib's private_key_jwt method, signing with :func:`client_assertion`."""

    def __init__(self, key: SigningKey) -> None:
        super().__init__()
        self.key = key
        self.alg = key.alg

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return client_assertion(auth.client_id, token_endpoint, self.key)


def signing_key_for(keys: tuple[SigningKey, ...], conf: SmartConfiguration) -> SigningKey:
    """The first key whose alg the server accepts (all of them if it does not say)."""
    if not keys:
        raise AuthFailed("No signing key is configured for this EHR.", error="no_signing_key")
    accepted = conf.token_endpoint_auth_signing_algs
    for key in keys:
        if not accepted or key.alg in accepted:
            return key
    raise AuthFailed(
        "The EHR accepts none of our client-assertion algorithms.", error="unsupported_alg"
    )


def client_auth(reg: Registration, conf: SmartConfiguration) -> ClientAuth:
    if reg.client_type == "public":
        return ClientAuth(reg.client_id, None, "none")
    if reg.client_type == "confidential-symmetric":
        return ClientAuth(reg.client_id, reg.client_secret, "client_secret_basic")
    key = signing_key_for(reg.signing_keys, conf)
    return ClientAuth(reg.client_id, None, SmartPrivateKeyJWT(key))


def post_token(
    http: requests.Session,
    conf: SmartConfiguration,
    form: Mapping[str, str],
    auth: ClientAuth,
) -> dict[str, Any]:
    """POST ``form`` to the token endpoint with ``auth`` applied; the parsed JSON on 200.

    Nothing from the request or response body is logged: both carry secrets.
    """
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
    }
    uri, headers, body = auth.prepare("POST", conf.token_endpoint, headers, urlencode(form))
    try:
        response = http.post(
            uri, data=body, headers=headers, timeout=TOKEN_TIMEOUT, allow_redirects=False
        )
    except requests.RequestException as exc:
        raise AuthFailed(
            "The EHR's token endpoint could not be reached.", error="temporarily_unavailable"
        ) from exc
    with response:
        payload = json_or_none(response)
    if response.status_code != 200 or not isinstance(payload, dict):
        error = payload.get("error") if isinstance(payload, dict) else None
        description = payload.get("error_description") if isinstance(payload, dict) else None
        log.info(
            "token endpoint refused grant_type=%s: status=%s error=%s",
            form.get("grant_type"),
            response.status_code,
            error,
        )
        raise AuthFailed(
            description or error or f"The EHR's token endpoint answered {response.status_code}.",
            error=error if isinstance(error, str) else None,
            error_description=description if isinstance(description, str) else None,
            status=response.status_code,
        )
    if not payload.get("access_token"):
        raise AuthFailed("The token response carries no access_token.", error="invalid_response")
    token_type = str(payload.get("token_type") or "")
    if token_type.lower() != "bearer":
        raise AuthFailed(
            "The token response is not a bearer token.", error="unsupported_token_type"
        )
    return payload
