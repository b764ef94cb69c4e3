"""The whole app against the sandbox's `thirdparty` profile (what a real third-party SMART
server did): the launch link's iss ends with "/", refresh tokens rotate on every use, the
refreshed id_token has no `aud`. A refresh the server accepted is kept and the sidebar
keeps working; with 60-second tokens, page views do not each ask for a token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import LaunchSession
from sandbox.testing import SandboxHandle, running_sandbox
from smart_launch.tokens import TokenSet
from tests.ehr import connect
from tests.live import serve

CLIENT_ID = "caredesk-test"


@pytest.fixture
def live(make_app) -> Iterator[tuple]:  # type: ignore[no-untyped-def,type-arg]
    app = make_app()
    with serve(app) as url:
        yield app, url


def _tokens(app, page_url: str) -> TokenSet:  # type: ignore[no-untyped-def]
    launch_id = re.search(r"/l/([^/?]+)", page_url).group(1)  # type: ignore[union-attr]
    with get_store(app).session() as session:
        row = session.get(LaunchSession, launch_id)
        assert row is not None and row.token_set_enc is not None
        return TokenSet.from_json(get_vault(app).decrypt(row.token_set_enc))


def _launch(sb: SandboxHandle, app, url: str) -> tuple[requests.Session, str]:  # type: ignore[no-untyped-def]
    connect(app, sb, url, client_id=CLIENT_ID, client_type="confidential-symmetric")
    link = sb.launch(CLIENT_ID, patient="pat-001", user="Practitioner/prac-clinician-lee")
    if sb.get_knobs()["iss_trailing_slash"]:
        # The EHR's link names the registered base with a "/" added; it still launches.
        assert parse_qs(urlsplit(link["url"]).query)["iss"] == [sb.fhir_base + "/"]
    browser = requests.Session()
    page = browser.get(link["url"], timeout=30)
    assert page.status_code == 200, page.text[:500]
    return browser, page.url.split("?")[0]


def _view(browser: requests.Session, sidebar: str) -> None:
    """One page view that reads the EHR (past the context cache, waiting for it)."""
    page = browser.get(sidebar + "?refresh=1&wait=1", timeout=30)
    assert page.status_code == 200 and "Okonkwo" in page.text, page.text[:500]


def test_refresh_whose_id_token_lacks_aud_keeps_the_new_tokens_and_the_session_works(
    live,
) -> None:  # type: ignore[no-untyped-def]
    app, url = live
    with running_sandbox(profile="thirdparty") as sb:
        knobs = sb.get_knobs()
        assert knobs["iss_trailing_slash"] and knobs["rotate_refresh"]
        assert knobs["refresh_id_token"] == "no-aud"
        browser, sidebar = _launch(sb, app, url)
        launched = _tokens(app, sidebar)
        assert launched.fhir_user == "Practitioner/prac-clinician-lee"
        seen = {launched.refresh_token}
        for n in (1, 2):
            assert sb.expire_tokens() >= 1  # the EHR ends the access token
            _view(browser, sidebar)
            assert sb.stats()["token_requests"]["refresh_token"] == n
            now = _tokens(app, sidebar)
            # The server rotated the refresh token and sent an id_token without aud: the
            # new tokens are kept (the next refresh works with them), the identity of the
            # launch stands.
            assert now.refresh_token not in seen and now.access_token != launched.access_token
            seen.add(now.refresh_token)
            assert (now.id_token, now.fhir_user) == (launched.id_token, launched.fhir_user)


def test_sixty_second_tokens_ten_page_views_make_at_most_one_token_request(live) -> None:  # type: ignore[no-untyped-def]
    app, url = live
    with running_sandbox(profile="thirdparty", token_lifetime_s=60) as sb:
        browser, sidebar = _launch(sb, app, url)
        assert _tokens(app, sidebar).refresh_margin().total_seconds() <= 6
        before = sb.stats()["token_requests"]
        for _ in range(10):
            _view(browser, sidebar)
        after = sb.stats()["token_requests"]
    asked = sum(after.values()) - sum(before.values())
    # A fixed 60-second margin called a fresh 60-second token "expiring" on every view.
    assert asked <= 1, (before, after)


def test_a_client_secret_the_ehr_refuses_is_caredesks_set_up_not_the_ehr(live) -> None:  # type: ignore[no-untyped-def]
    app, url = live
    with running_sandbox() as sb:
        connect(app, sb, url, client_id=CLIENT_ID, client_type="confidential-symmetric")
        # The EHR's registration of CareDesk has another secret than CareDesk's.
        sb.register_client(
            {
                "client_id": CLIENT_ID,
                "type": "confidential-symmetric",
                "client_secret": "not-the-one-caredesk-has",
                "redirect_uris": [f"{url}/callback"],
                "launch_url": f"{url}/launch",
            }
        )
        link = sb.launch(CLIENT_ID, patient="pat-001", user="Practitioner/prac-clinician-lee")
        page = requests.get(link["url"], timeout=30)
    assert page.status_code == 502
    assert "CareDesk&#39;s set-up for this EHR needs fixing" in page.text
    assert "The EHR did not answer as expected" not in page.text
    assert "did not accept CareDesk&#39;s client credentials" in page.text
    assert 'data-testid="ehr-said"' in page.text  # the EHR's own words, set apart


def test_names_without_display_are_read_once_then_cached(live) -> None:  # type: ignore[no-untyped-def]
    app, url = live
    with running_sandbox(profile="thirdparty") as sb:
        browser, sidebar = _launch(sb, app, url)
        _view(browser, sidebar)  # names read (or already in this EHR's name cache)
        sb.clear_requests()
        page = browser.get(sidebar + "?refresh=1&wait=1", timeout=30)
        assert page.status_code == 200
        # Names though no reference carried a display...
        assert "Okafor" in page.text and "CareDesk Clinic - Lakeview" in page.text
        assert "Aetna" in page.text
        paths = [r["path"] for r in sb.requests() if r["path"].startswith("/fhir/")]
    # ...and the patient's data read again, but not the names: they come from the cache.
    assert "/fhir/Patient/pat-001" in paths or "/fhir/Patient" in paths, paths
    named = {"/fhir/Practitioner", "/fhir/Location", "/fhir/Organization", "/fhir/PractitionerRole"}
    assert not named & set(paths), paths
