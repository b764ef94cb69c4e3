"""Errors say whose fault they are: CareDesk's credentials, the EHR, or the network; the
EHR's own words travel apart from ours, one line, with control characters stripped."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
import requests

from smart_launch.backend import backend_token
from smart_launch.config import Registration
from smart_launch.discovery import SmartConfiguration
from smart_launch.errors import (
    AuthFailed,
    BackendClientRejected,
    ClientRejected,
    EhrServerError,
    EhrUnreachable,
    FatalFhirError,
    FhirUnreachable,
    GrantRejected,
    NeedsAuthorization,
    NoBackendClient,
    SmartError,
    clean_ehr_text,
    clean_error_code,
)
from smart_launch.fhir import FhirClient
from smart_launch.keys import generate_signing_key
from smart_launch.launch import parse_callback
from tests.smart_launch.httpfake import FakeServer, Request, Response, exchange_any_code


def conf_for(base: str) -> SmartConfiguration:
    return SmartConfiguration(
        fhir_base=f"{base}/fhir",
        issuer=f"{base}/fhir",
        authorization_endpoint=f"{base}/auth/authorize",
        token_endpoint=f"{base}/auth/token",
    )


def reg_for(base: str, **kw: Any) -> Registration:
    return Registration(
        id="r1",
        iss=f"{base}/fhir",
        client_id="caredesk",
        client_type="public",
        scopes="launch openid",
        redirect_uri="http://127.0.0.1/callback",
        **kw,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TOKEN_CASES = [
    # status, body, class, party, OAuth error, EHR text
    (
        401,
        {"error": "invalid_client", "error_description": "unknown asymmetric client"},
        ClientRejected,
        "caredesk",
        "invalid_client",
        "unknown asymmetric client",
    ),
    (
        400,
        {"error": "invalid_client", "error_description": "client_assertion signature invalid"},
        ClientRejected,
        "caredesk",
        "invalid_client",
        "client_assertion signature invalid",
    ),
    (
        400,
        {"error": "unauthorized_client"},
        ClientRejected,
        "caredesk",
        "unauthorized_client",
        None,
    ),
    (400, {"error": "invalid_scope"}, ClientRejected, "caredesk", "invalid_scope", None),
    (401, b"Unauthorized", ClientRejected, "caredesk", None, None),
    (
        400,
        {"error": "invalid_grant", "error_description": "authorization code already used"},
        GrantRejected,
        "ehr",
        "invalid_grant",
        "authorization code already used",
    ),
    (
        503,
        {"error": "temporarily_unavailable"},
        EhrServerError,
        "ehr",
        "temporarily_unavailable",
        None,
    ),
    (500, b"<html>oops</html>", EhrServerError, "ehr", None, None),
    (400, {"error": "unsupported_grant_type"}, AuthFailed, "ehr", "unsupported_grant_type", None),
    (
        400,
        # An EHR (or someone in between) putting CR/LF and an escape into its words.
        {
            "error": "invalid_client\r\nX-Injected: 1",
            "error_description": "bad\r\nSet-Cookie: a\x1b[31m",
        },
        ClientRejected,
        "caredesk",
        "invalid_client",
        "bad Set-Cookie: a [31m",
    ),
]


@pytest.mark.parametrize(("status", "body", "cls", "party", "error", "ehr_text"), TOKEN_CASES)
def test_token_endpoint_errors_say_whose_fault(
    fake: FakeServer,
    http: requests.Session,
    status: int,
    body: Any,
    cls: type[AuthFailed],
    party: str,
    error: str | None,
    ehr_text: str | None,
) -> None:
    fake.route("POST", "/auth/token", Response(status, body))
    with pytest.raises(AuthFailed) as info:
        exchange_any_code(reg_for(fake.base_url), conf_for(fake.base_url), http)
    exc = info.value
    assert type(exc) is cls
    assert (exc.party, exc.error, exc.ehr_text, exc.status) == (party, error, ehr_text, status)
    # Our own sentence never carries the EHR's words; str() quotes them, attributed.
    if ehr_text:
        assert ehr_text not in exc.summary
        assert str(exc) == exc.message == f'{exc.summary} The EHR said: "{ehr_text}"'
    for text in (exc.summary, exc.message, repr(exc.to_dict())):
        assert "\r" not in text and "\n" not in text and "\x1b" not in text


def test_invalid_grant_means_launch_again(fake: FakeServer, http: requests.Session) -> None:
    fake.route("POST", "/auth/token", Response(400, {"error": "invalid_grant"}))
    with pytest.raises(NeedsAuthorization) as info:
        exchange_any_code(reg_for(fake.base_url), conf_for(fake.base_url), http)
    assert isinstance(info.value, GrantRejected)
    assert "Launch CareDesk again" in info.value.summary


def test_unreachable_token_endpoint_is_the_network(http: requests.Session) -> None:
    base = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(EhrUnreachable) as info:
        exchange_any_code(reg_for(base), conf_for(base), http)
    assert (info.value.party, info.value.temporary, info.value.error) == ("network", True, None)


def test_token_endpoint_that_never_answers_is_the_network(
    fake: FakeServer, http: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def slow(req: Request) -> Response:
        release.wait(2)
        return Response(200, {})

    fake.route("POST", "/auth/token", slow)
    monkeypatch.setattr("smart_launch._token_endpoint.TOKEN_TIMEOUT", 0.2)
    try:
        with pytest.raises(EhrUnreachable, match="did not answer in time") as info:
            exchange_any_code(reg_for(fake.base_url), conf_for(fake.base_url), http)
    finally:
        release.set()
    assert info.value.party == "network"


def test_backend_client_refused_is_caredesks_and_waits_for_a_user(
    fake: FakeServer, http: requests.Session
) -> None:
    fake.route(
        "POST",
        "/auth/token",
        Response(
            401, {"error": "invalid_client", "error_description": "unknown asymmetric client"}
        ),
    )
    reg = reg_for(
        fake.base_url,
        signing_keys=(generate_signing_key("ES384"),),
        backend_client_id="caredesk-jobs",
        backend_scopes="system/Patient.rs",
    )
    with pytest.raises(BackendClientRejected) as info:
        backend_token(reg, conf_for(fake.base_url), http=http)
    exc = info.value
    assert isinstance(exc, ClientRejected) and isinstance(exc, NeedsAuthorization)
    assert (exc.party, exc.error, exc.ehr_text) == (
        "caredesk",
        "invalid_client",
        "unknown asymmetric client",
    )


def test_no_backend_client_is_a_configuration_skip_without_a_request(
    fake: FakeServer, http: requests.Session
) -> None:
    with pytest.raises(NoBackendClient) as info:
        backend_token(reg_for(fake.base_url), conf_for(fake.base_url), http=http)
    assert info.value.party == "caredesk"
    assert isinstance(info.value, NeedsAuthorization)
    assert fake.requests == []


def test_fhir_refusal_is_the_ehrs_and_unreachable_fhir_is_the_network(
    fake: FakeServer, http: requests.Session
) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "forbidden", "diagnostics": "no\nscope"}],
    }
    fake.route("GET", "/fhir/Patient/p", Response(403, outcome))
    with FhirClient(f"{fake.base_url}/fhir", lambda: "t", session=http) as fhir:
        with pytest.raises(FatalFhirError) as refused:
            fhir.read("Patient", "p")
    assert (refused.value.party, refused.value.ehr_text) == ("ehr", "no scope")
    with FhirClient(f"http://127.0.0.1:{closed_port()}/fhir", lambda: "t", session=http) as fhir:
        with pytest.raises(FhirUnreachable) as down:
            fhir.read("Patient", "p")
    assert (down.value.party, down.value.temporary) == ("network", True)


def test_callback_error_code_and_text_are_cleaned_and_attributed() -> None:
    with pytest.raises(SmartError) as info:
        parse_callback(
            {
                "error": "access_denied\r\nX-Injected: 1",
                "error_description": "User\r\nsaid\tno",
                "state": "s",
            }
        )
    exc = info.value
    assert exc.to_dict() == {
        "code": "access_denied",
        "party": "ehr",
        "summary": exc.summary,
        "error": "access_denied",
        "ehr_text": "User said no",
        "status": None,
        "temporary": False,
    }
    assert "\r" not in exc.message and "User said no" not in exc.summary


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain", "plain"),
        ("a\r\nb", "a b"),
        ("tab\there", "tab here"),
        ("bidi\u202etxt", "bidi txt"),
        ("line\u2028sep", "line sep"),
        ("  \x00\x07 ", None),
        (42, None),
        ("x" * 600, "x" * 499 + "…"),
    ],
)
def test_clean_ehr_text(raw: object, clean: str | None) -> None:
    assert clean_ehr_text(raw) == clean


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("invalid_grant", "invalid_grant"),
        ("access_denied\r\nSet-Cookie: x", "access_denied"),
        ("\r\nonly-after", None),
        ("", None),
        (None, None),
        ("a" * 80, "a" * 64),
    ],
)
def test_clean_error_code(raw: object, clean: str | None) -> None:
    assert clean_error_code(raw) == clean
