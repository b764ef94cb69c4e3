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
from .errors import (
    AuthFailed,
    ClientRejected,
    EhrServerError,
    EhrUnreachable,
    GrantRejected,
    clean_error_code,
)

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
        raise AuthFailed(
            "No signing key is configured for this EHR.", code="no_signing_key", party="caredesk"
        )
    accepted = conf.token_endpoint_auth_signing_algs
    for key in keys:
        if not accepted or key.alg in accepted:
            return key
    raise AuthFailed(
        "The EHR accepts none of CareDesk's client-assertion algorithms "
        f"({', '.join(k.alg for k in keys)}); add a key with one it accepts "
        f"({', '.join(accepted)}).",
        code="unsupported_alg",
        party="caredesk",
    )


def client_auth(reg: Registration, conf: SmartConfiguration) -> ClientAuth:
    if reg.client_type == "public":
        return ClientAuth(reg.client_id, None, "none")
    if reg.client_type == "confidential-symmetric":
        return ClientAuth(reg.client_id, reg.client_secret, "client_secret_basic")
    key = signing_key_for(reg.signing_keys, conf)
    return ClientAuth(reg.client_id, None, SmartPrivateKeyJWT(key))


# OAuth error codes of a token endpoint, and whose fault each one is.
_CLIENT_ERRORS = {
    "invalid_client": "The EHR did not accept CareDesk's client credentials "
    "(unknown client, wrong secret or key, or a refused client assertion). "
    "Check the registration here and in the EHR.",
    "unauthorized_client": "The EHR does not allow this CareDesk client to use this kind "
    "of sign-in. Check the app's registration in the EHR.",
    "invalid_scope": "The EHR refused the scopes CareDesk is registered with. Check the "
    "registration's scopes against what the EHR allows this app.",
}
_SERVER_ERRORS = frozenset({"server_error", "temporarily_unavailable"})


def token_error(status: int, payload: Any, *, grant_type: str | None) -> AuthFailed:
    """The typed error for a token endpoint's non-200 answer (or a 200 that is not JSON)."""
    error = clean_error_code(payload.get("error")) if isinstance(payload, dict) else None
    description = payload.get("error_description") if isinstance(payload, dict) else None
    description = description if isinstance(description, str) else None
    kw: dict[str, Any] = {"error": error, "ehr_text": description, "status": status}
    if error in _CLIENT_ERRORS:
        return ClientRejected(_CLIENT_ERRORS[error], **kw)
    if error is None and status == 401:
        # RFC 6749 5.2: a 401 from the token endpoint is client authentication failing.
        return ClientRejected(_CLIENT_ERRORS["invalid_client"], **kw)
    if error == "invalid_grant":
        if grant_type == "refresh_token":
            message = "The EHR no longer accepts this session. Launch CareDesk again."
        else:
            message = (
                "The EHR did not accept this sign-in (it may have expired or been used). "
                "Launch CareDesk again."
            )
        return GrantRejected(message, **kw)
    if error in _SERVER_ERRORS or status >= 500:
        return EhrServerError(
            f"The EHR's token endpoint failed (HTTP {status}). Try again later.", **kw
        )
    return AuthFailed(
        f"The EHR's token endpoint refused the request (HTTP {status}"
        + (f", {error})." if error else ")."),
        code=error,
        **kw,
    )


def post_token(
    http: requests.Session,
    conf: SmartConfiguration,
    form: Mapping[str, str],
    auth: ClientAuth,
) -> dict[str, Any]:
    """POST ``form`` to the token endpoint with ``auth`` applied; the parsed JSON on 200.

    Nothing from the request or response body is logged: both carry secrets. Failures
    raise the :class:`AuthFailed` subclass that says whose fault it is.
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
    except requests.Timeout as exc:
        raise EhrUnreachable("The EHR's token endpoint did not answer in time.") from exc
    except requests.RequestException as exc:
        raise EhrUnreachable("The EHR's token endpoint could not be reached.") from exc
    with response:
        payload = json_or_none(response)
    if response.status_code != 200 or not isinstance(payload, dict):
        failure = token_error(response.status_code, payload, grant_type=form.get("grant_type"))
        log.info(
            "token endpoint refused grant_type=%s: status=%s error=%s party=%s",
            form.get("grant_type"),
            response.status_code,
            failure.error,
            failure.party,
        )
        raise failure
    if not payload.get("access_token"):
        raise AuthFailed("The token response carries no access_token.", code="invalid_response")
    token_type = str(payload.get("token_type") or "")
    if token_type.lower() != "bearer":
        raise AuthFailed("The token response is not a bearer token.", code="unsupported_token_type")
    return payload
