"""SMART client libraries written by others launch against the sandbox (no CareDesk code)."""

from __future__ import annotations

import secrets

from authlib.integrations.requests_client import OAuth2Session
from fhirclient import client as fhir_client

from sandbox.testing import SandboxHandle
from tests.sandbox.conftest import REDIRECT


def test_fhirclient_standalone_launch_reads_the_patient(sb: SandboxHandle) -> None:
    settings = {
        "app_id": "pub",
        "api_base": sb.fhir_base,
        "redirect_uri": REDIRECT,
        "scope": "launch/patient openid fhirUser patient/*.read",
    }
    smart = fhir_client.FHIRClient(settings=settings)
    # fhirclient finds the OAuth endpoints in the CapabilityStatement's oauth-uris.
    authorize_url = smart.authorize_url
    assert authorize_url.startswith(f"{sb.base_url}/auth/authorize?")
    callback = sb.approve(authorize_url, user="prac-scheduler-ortiz", patient="pat-c")
    smart.handle_callback(callback)
    assert smart.ready
    assert smart.patient_id == "pat-c"
    patient = smart.patient
    assert patient is not None
    assert patient.name[0].family == "Gamma"
    assert smart.human_name(patient.name[0]) == "Carol Gamma"


def test_authlib_oauth2_session_ehr_launch_reads_the_patient(sb: SandboxHandle) -> None:
    launch = sb.launch("pub", patient="pat-b")
    verifier = secrets.token_urlsafe(48)
    with OAuth2Session(
        "pub",
        redirect_uri=REDIRECT,
        scope="launch openid fhirUser patient/*.rs",
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    ) as session:
        url, state = session.create_authorization_url(
            f"{sb.base_url}/auth/authorize",
            code_verifier=verifier,
            aud=sb.fhir_base,
            launch=launch["launch"],
        )
        callback = sb.approve(url)
        token = session.fetch_token(
            f"{sb.base_url}/auth/token",
            authorization_response=callback,
            code_verifier=verifier,
            state=state,
        )
        assert token["patient"] == "pat-b"
        resp = session.get(f"{sb.fhir_base}/Patient/{token['patient']}", timeout=10)
        assert resp.status_code == 200
        assert resp.json()["name"][0]["family"] == "Beta"
