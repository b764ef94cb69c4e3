"""The /ehr page, `python -m sandbox` as a subprocess, and --data-dir persistence."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from sandbox.testing import SandboxHandle, running_sandbox
from tests.sandbox.conftest import (
    LAUNCH_URL,
    Pkce,
    authorize_params,
    exchange,
    fhir_get,
    fhir_post,
    login,
)
from tests.sandbox.population import population


def _page(sb: SandboxHandle, **params: str) -> str:
    resp = requests.get(f"{sb.base_url}/ehr?{urlencode(params)}", timeout=10)
    assert resp.status_code == 200
    return resp.text


def _iframe_src(page: str) -> str:
    match = re.search(r'<iframe id="app-frame"[^>]* src="([^"]+)"', page)
    assert match, "no sidebar iframe"
    return html.unescape(match.group(1))


def _token_for_launch(sb: SandboxHandle, launch_url: str) -> dict[str, Any]:
    query = parse_qs(urlsplit(launch_url).query)
    assert query["iss"] == [sb.fhir_base]
    pkce = Pkce.new()
    params = authorize_params(
        sb, pkce, scope="launch openid fhirUser patient/*.rs", launch=query["launch"][0]
    )
    resp = requests.get(
        f"{sb.base_url}/auth/authorize?{urlencode(params)}", allow_redirects=False, timeout=10
    )
    code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
    body: dict[str, Any] = exchange(sb, code, pkce.verifier).json()
    return body


def test_ehr_page_offers_clinician_and_scheduler(sb: SandboxHandle) -> None:
    page = _page(sb)
    assert "prac-clinician-lee" in page and "prac-scheduler-ortiz" in page
    assert "(clinician)" in page and "(scheduler)" in page


def test_ehr_chart_opens_caredesk_in_a_400px_sidebar_by_ehr_launch(sb: SandboxHandle) -> None:
    page = _page(sb, user="prac-clinician-lee", patient="pat-b")
    assert 'id="patient-banner"' in page and "Bob Beta" in page and "1980-05-06" in page
    assert "width: 400px" in page
    src = _iframe_src(page)
    assert src.startswith(LAUNCH_URL + "?")
    body = _token_for_launch(sb, src)
    assert body["patient"] == "pat-b"
    assert body["need_patient_banner"] is False
    assert fhir_get(sb, "Patient/pat-b", body["access_token"]).status_code == 200


def test_ehr_launch_without_patient_for_the_scheduler_board(sb: SandboxHandle) -> None:
    page = _page(sb, user="prac-scheduler-ortiz", mode="board")
    body = _token_for_launch(sb, _iframe_src(page))
    assert "patient" not in body
    assert body["intent"] == "scheduler-board"
    introspected = requests.post(
        f"{sb.base_url}/auth/introspect", data={"token": body["access_token"]}, timeout=10
    ).json()
    assert introspected["fhirUser"] == "Practitioner/prac-scheduler-ortiz"


def test_ehr_full_tab_launch_redirects_to_the_app_with_banner(sb: SandboxHandle) -> None:
    resp = requests.get(
        f"{sb.base_url}/ehr/launch?user=prac-clinician-lee&patient=pat-a",
        allow_redirects=False,
        timeout=10,
    )
    assert resp.status_code == 302
    body = _token_for_launch(sb, resp.headers["Location"])
    assert body["patient"] == "pat-a"
    assert body["need_patient_banner"] is True


def test_ehr_page_escapes_patient_names(sb: SandboxHandle) -> None:
    page = _page(sb, user="prac-clinician-lee", patient="pat-xss")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_cli_help_documents_contract_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sandbox", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for flag in (
        "--port",
        "--host",
        "--profile",
        "--data-dir",
        "--latency-ms",
        "--clients",
        "--token-lifetime",
        "--error-rate",
        "--disable",
        "--timezone",
        "--extra-appointments",
        "--omit-display",
        "--no-canonical-version-search",
        "--iss-trailing-slash",
        "--fhir-user",
        "--rotate-refresh",
        "--refresh-id-token",
        "--refresh-token-lifetime",
        "--consent-drop-scope",
        "--exit-with-parent",
    ):
        assert flag in out
    assert "questionnaire-response-create" in out
    assert "appointment-update" in out
    for profile in ("smart", "epic", "oracle", "thirdparty"):
        assert f"  {profile} " in out
    assert "/admin/{knobs" in out and "clock,expire-tokens" in out


def test_subprocess_sandbox_persists_writes_and_grants_in_data_dir(
    tmp_path: Path, clients: list[dict[str, Any]]
) -> None:
    data_dir = tmp_path / "data"
    with running_sandbox(clients=clients, in_process=False, data_dir=data_dir) as sb:
        assert sb.fhir_base == f"http://127.0.0.1:{sb.port}/fhir"
        token = login(sb, scope="openid fhirUser user/*.cruds", patient="pat-001")["access_token"]
        qr = {
            "resourceType": "QuestionnaireResponse",
            "status": "completed",
            "subject": {"reference": "Patient/pat-001"},
            "identifier": {"system": "urn:x", "value": "kept"},
        }
        created = fhir_post(sb, "QuestionnaireResponse", token, qr)
        assert created.status_code == 201, created.text
        sb.register_client(
            {"client_id": "runtime", "type": "public", "redirect_uris": ["http://127.0.0.1:9/cb"]}
        )
    with running_sandbox(in_process=False, data_dir=data_dir) as again:
        found = fhir_get(again, "QuestionnaireResponse?identifier=kept", token)
        assert found.status_code == 200, found.text  # the grant survived the restart
        assert found.json()["entry"][0]["resource"]["id"] == created.json()["id"]
        listing = requests.get(f"{again.base_url}/admin/clients", timeout=10).json()
        assert "runtime" in {c["client_id"] for c in listing}


def test_clients_file_in_toml_is_loaded(tmp_path: Path) -> None:
    from sandbox.clients import load_clients_file

    path = tmp_path / "clients.toml"
    path.write_text(
        '[[clients]]\nclient_id = "toml-app"\ntype = "confidential-symmetric"\n'
        'client_secret = "x"\nredirect_uris = ["http://127.0.0.1:9/callback"]\n',
        encoding="utf-8",
    )
    with running_sandbox(clients=load_clients_file(path), population=population()) as sb:
        pkce = Pkce.new()
        params = authorize_params(sb, pkce, client_id="toml-app", scope="user/*.rs")
        callback = sb.approve(f"{sb.base_url}/auth/authorize?{urlencode(params)}")
        code = parse_qs(urlsplit(callback).query)["code"][0]
        assert exchange(sb, code, pkce.verifier, auth=("toml-app", "x")).status_code == 200
