"""Drive a SMART launch against the sandbox the way a browser and CareDesk would."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests

from smart_launch.config import Registration, SigningKey
from smart_launch.discovery import SmartConfiguration, discover
from smart_launch.keys import generate_signing_key, jwks
from smart_launch.launch import (
    PendingLaunch,
    build_authorization_request,
    check_pending,
    exchange_code,
    parse_callback,
)
from smart_launch.tokens import TokenSet

REDIRECT = "http://127.0.0.1:9/callback"  # never fetched: the test reads Location
EHR_SCOPES = (
    "launch openid fhirUser offline_access patient/Patient.read patient/Appointment.read "
    "patient/Coverage.read"
)
STANDALONE_SCOPES = "launch/patient openid fhirUser offline_access patient/Patient.read"


@dataclass
class Launched:
    reg: Registration
    conf: SmartConfiguration
    pending: PendingLaunch
    tokens: TokenSet
    code: str


def client_and_registration(
    sb: Any, client_type: str, *, scopes: str, key: SigningKey | None = None
) -> Registration:
    client_id = f"caredesk-{client_type}"
    client: dict[str, Any] = {
        "client_id": client_id,
        "type": client_type,
        "redirect_uris": [REDIRECT],
    }
    kw: dict[str, Any] = {}
    if client_type == "confidential-symmetric":
        client["client_secret"] = kw["client_secret"] = "sandbox-secret-123"
    if client_type == "confidential-asymmetric":
        key = key or generate_signing_key("RS384")
        client["jwks"] = jwks([key])
        kw["signing_keys"] = (key,)
    sb.register_client(client)
    return Registration(
        id=f"reg-{client_type}",
        iss=sb.fhir_base,
        client_id=client_id,
        client_type=client_type,  # type: ignore[arg-type]
        scopes=scopes,
        redirect_uri=REDIRECT,
        **kw,
    )


_INPUT = re.compile(r'name="pending" value="([^"]+)"')
_SELECT = re.compile(r'<select name="(\w+)"[^>]*>\s*<option value="([^"]+)"')


def run_launch(
    sb: Any, reg: Registration, http: requests.Session, *, ehr: bool, patient: str | None = None
) -> Launched:
    conf = discover(reg, http=http, cache=None)
    launch_id = sb.launch(reg.client_id, patient=patient or "pat-001")["launch"] if ehr else None
    pending = PendingLaunch.start(reg, conf, launch=launch_id)
    request = build_authorization_request(
        reg,
        conf,
        state=pending.state,
        code_verifier=pending.code_verifier,
        launch=pending.launch,
        scope=pending.scope_requested,
    )
    with requests.Session() as browser:
        if request.method == "POST":
            answer = browser.post(request.url, data=dict(request.params), allow_redirects=False)
        else:
            answer = browser.get(request.url, allow_redirects=False)
        if not ehr:
            # The standalone patient picker: take its first user and patient and approve.
            page = answer.text
            pending_id = _INPUT.search(page)
            assert pending_id, page[:500]
            fields = {"pending": pending_id.group(1), "decision": "approve"}
            fields.update(dict(_SELECT.findall(page)))
            if patient is not None:
                fields["patient"] = patient
            answer = browser.post(
                f"{sb.base_url}/auth/authorize/decide", data=fields, allow_redirects=False
            )
    assert answer.status_code in (302, 303), answer.text[:500]
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT)
    code, state = parse_callback(dict(parse_qsl(urlsplit(location).query)))
    check_pending(pending, state=state)
    tokens = exchange_code(
        reg,
        conf,
        code=code,
        code_verifier=pending.code_verifier,
        http=http,
        scope_requested=pending.scope_requested,
    )
    return Launched(reg, conf, pending, tokens, code)


class MemoryStore:
    """CareDesk's encrypted DB rows, reduced to a dict of TokenSet JSON."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.lock = threading.Lock()

    def load(self, grant_id: str) -> TokenSet | None:
        with self.lock:
            text = self.data.get(grant_id)
        return TokenSet.from_json(text) if text else None

    def save(self, grant_id: str, token_set: TokenSet) -> None:
        with self.lock:
            self.data[grant_id] = token_set.to_json()
