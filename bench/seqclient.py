"""The comparison for benchmark 1: a straightforward SMART client that does one thing at a
time. Discovery (cold only), authorize, token, then Patient, then Appointments, then
Coverages, then each referenced Practitioner and Location, one request after another.

Written with plain ``requests`` against the sandbox, sharing no code with CareDesk's
``smart_launch`` (it is what an app without CareDesk's parallel wave would do). It only
fetches: it renders nothing, so it does a little less work than CareDesk per launch.
Its clock starts at its first request to the EHR (discovery when cold, else authorize).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from bench.common import CLIENT_ID, HTTP_TIMEOUT


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


class _Counter:
    def __init__(self, http: requests.Session) -> None:
        self.http = http
        self.count = 0

    def get(self, url: str, **kw: Any) -> requests.Response:
        self.count += 1
        resp = self.http.get(url, timeout=HTTP_TIMEOUT, **kw)
        if resp.status_code >= 400:
            raise RuntimeError(f"GET {urlsplit(url).path}: {resp.status_code}")
        return resp

    def post(self, url: str, **kw: Any) -> requests.Response:
        self.count += 1
        resp = self.http.post(url, timeout=HTTP_TIMEOUT, **kw)
        if resp.status_code >= 400:
            raise RuntimeError(f"POST {urlsplit(url).path}: {resp.status_code}")
        return resp


def discover(http: _Counter, fhir_base: str) -> dict[str, Any]:
    conf: dict[str, Any] = http.get(f"{fhir_base}/.well-known/smart-configuration").json()
    return conf


def load(
    sb: Any, conf: dict[str, Any] | None, *, patient: str, redirect_uri: str, scope: str
) -> tuple[float, int, dict[str, Any]]:
    """One launch-to-data run; returns (seconds, EHR round trips, what was fetched)."""
    launch = sb.launch(CLIENT_ID, patient=patient)["launch"]  # the EHR's part: not timed
    with requests.Session() as session:
        http = _Counter(session)
        started = time.perf_counter()
        if conf is None:
            conf = discover(http, sb.fhir_base)
        verifier, challenge = _pkce()
        state = secrets.token_urlsafe(12)
        auth = http.get(
            conf["authorization_endpoint"],
            params={
                "response_type": "code",
                "client_id": CLIENT_ID,
                "redirect_uri": redirect_uri,
                "scope": scope,
                "state": state,
                "aud": sb.fhir_base,
                "launch": launch,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
            allow_redirects=False,
        )
        query = parse_qs(urlsplit(auth.headers["Location"]).query)
        if query.get("state") != [state] or "code" not in query:
            raise RuntimeError("authorize did not return a code for our state")
        token = http.post(
            conf["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": query["code"][0],
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
                "client_id": CLIENT_ID,
            },
        ).json()
        headers = {
            "Authorization": f"Bearer {token['access_token']}",
            "Accept": "application/fhir+json",
        }
        pid = token.get("patient") or patient
        base = sb.fhir_base
        today = dt.datetime.now(dt.UTC).date()
        fetched: dict[str, Any] = {
            "patient": http.get(f"{base}/Patient/{pid}", headers=headers).json()
        }
        appts = http.get(
            f"{base}/Appointment",
            params=[
                ("patient", pid),
                ("date", f"ge{(today - dt.timedelta(days=365)).isoformat()}"),
                ("date", f"le{(today + dt.timedelta(days=180)).isoformat()}"),
                ("_count", "100"),
            ],
            headers=headers,
        ).json()
        fetched["coverage"] = http.get(
            f"{base}/Coverage", params={"beneficiary": f"Patient/{pid}"}, headers=headers
        ).json()
        refs: list[str] = []
        for entry in appts.get("entry") or []:
            for participant in (entry.get("resource") or {}).get("participant") or []:
                ref = str((participant.get("actor") or {}).get("reference") or "")
                if ref.startswith(("Practitioner/", "Location/")) and ref not in refs:
                    refs.append(ref)
        fetched["actors"] = [http.get(f"{base}/{ref}", headers=headers).json() for ref in refs]
        elapsed = time.perf_counter() - started
    fetched["appointments"] = appts
    return elapsed, http.count, fetched


def measure(sb: Any, *, patient: str, samples: int, redirect_uri: str) -> dict[str, Any]:
    """`redirect_uri` is the one registered for the client (CareDesk's callback): the
    sandbox checks it; this client reads the code off the redirect and never calls it."""
    from helpdesk.registry import DEFAULT_SCOPES

    cold: list[float] = []
    cold_trips = 0
    for _ in range(samples):
        elapsed, trips, _ = load(
            sb, None, patient=patient, redirect_uri=redirect_uri, scope=DEFAULT_SCOPES
        )
        cold.append(elapsed)
        cold_trips = trips
    with requests.Session() as session:
        conf = discover(_Counter(session), sb.fhir_base)
    warm: list[float] = []
    warm_trips = 0
    for _ in range(samples):
        elapsed, trips, _ = load(
            sb, conf, patient=patient, redirect_uri=redirect_uri, scope=DEFAULT_SCOPES
        )
        warm.append(elapsed)
        warm_trips = trips
    return {
        "cold_s": cold,
        "warm_s": warm,
        "cold_round_trips": cold_trips,
        "warm_round_trips": warm_trips,
    }
