from __future__ import annotations

import pytest
import requests

from smart_launch.config import Registration
from smart_launch.discovery import (
    OAUTH_URIS,
    DiscoveryCache,
    discover,
    find_registration,
)
from smart_launch.errors import DiscoveryError, UnknownIssuer
from tests.smart_launch.httpfake import FakeServer, Response


def reg_for(fake: FakeServer) -> Registration:
    return Registration(
        id="r1",
        iss=f"{fake.base_url}/fhir",
        client_id="c",
        client_type="public",
        scopes="launch",
        redirect_uri="http://127.0.0.1/cb",
    )


def test_discovery_resolves_relative_endpoints_and_caches_by_max_age(
    fake: FakeServer, http: requests.Session
) -> None:
    doc = {
        "issuer": f"{fake.base_url}/fhir",
        "authorization_endpoint": "../auth/authorize",
        "token_endpoint": "/auth/token",
        "jwks_uri": "jwks",
        "capabilities": ["launch-ehr", "permission-v2"],
        "code_challenge_methods_supported": ["S256"],
    }
    fake.route(
        "GET",
        "/fhir/.well-known/smart-configuration",
        Response(200, doc, {"Cache-Control": "max-age=120"}),
    )
    cache = DiscoveryCache()
    conf = discover(reg_for(fake), http=http, cache=cache)
    assert conf.authorization_endpoint == f"{fake.base_url}/fhir/auth/authorize"
    assert conf.token_endpoint == f"{fake.base_url}/auth/token"
    assert conf.jwks_uri == f"{fake.base_url}/fhir/.well-known/jwks"
    assert conf.source == "well-known"
    assert "permission-v2" in conf.capabilities
    assert discover(reg_for(fake), http=http, cache=cache) is conf
    assert len(fake.hits("/fhir/.well-known/smart-configuration")) == 1


def test_discovery_refetches_after_cache_expiry(fake: FakeServer, http: requests.Session) -> None:
    fake.route(
        "GET",
        "/fhir/.well-known/smart-configuration",
        Response(
            200,
            {"authorization_endpoint": "/a", "token_endpoint": "/t"},
            {"Cache-Control": "no-store"},
        ),
    )
    cache = DiscoveryCache(minimum=0.0)
    discover(reg_for(fake), http=http, cache=cache)
    discover(reg_for(fake), http=http, cache=cache)
    assert len(fake.hits("/fhir/.well-known/smart-configuration")) == 2


def test_discovery_falls_back_to_capability_statement(
    fake: FakeServer, http: requests.Session
) -> None:
    capstmt = {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [
                        {
                            "url": OAUTH_URIS,
                            "extension": [
                                {"url": "authorize", "valueUri": f"{fake.base_url}/auth/authorize"},
                                {"url": "token", "valueUri": f"{fake.base_url}/auth/token"},
                            ],
                        }
                    ]
                },
            }
        ],
    }
    fake.route("GET", "/fhir/metadata", Response(200, capstmt))
    conf = discover(reg_for(fake), http=http, cache=None)
    assert conf.source == "capability-statement"
    assert conf.token_endpoint == f"{fake.base_url}/auth/token"
    assert conf.issuer is None
    assert conf.expected_id_token_issuer == f"{fake.base_url}/fhir"


def test_discovery_does_not_follow_redirects_off_the_registered_base(
    fake: FakeServer, http: requests.Session
) -> None:
    fake.route(
        "GET",
        "/fhir/.well-known/smart-configuration",
        Response(302, None, {"Location": "http://127.0.0.2:1/evil"}),
    )
    with pytest.raises(DiscoveryError):
        discover(reg_for(fake), http=http, cache=None)
    assert [r.path for r in fake.requests] == [
        "/fhir/.well-known/smart-configuration",
        "/fhir/metadata",
    ]


def test_unregistered_issuer_is_refused_before_any_request(fake: FakeServer) -> None:
    registered = reg_for(fake)
    registry = {registered.iss: registered}
    with pytest.raises(UnknownIssuer):
        find_registration(f"{fake.base_url}/fhir-other", registry)
    with pytest.raises(UnknownIssuer):
        find_registration("https://ehr.test/fhir", registry)
    assert fake.requests == []
    assert find_registration(f"{fake.base_url}/fhir/", registry).id == "r1"
