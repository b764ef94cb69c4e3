"""Pure protocol pieces: state, PKCE, scopes, the authorize request, callback parsing,
TokenSet, and the HTTP header helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from smart_launch._http import cache_ttl, is_under, outcome_text, parse_retry_after
from smart_launch.config import Registration, normalize_iss
from smart_launch.discovery import SmartConfiguration, find_registration
from smart_launch.errors import (
    AuthorizationDenied,
    BrowserMismatch,
    ConfigurationError,
    StateError,
    UnknownIssuer,
)
from smart_launch.launch import (
    PendingLaunch,
    browser_key,
    build_authorization_request,
    check_browser,
    check_pending,
    new_browser_secret,
    new_pkce,
    new_state,
    parse_callback,
    scopes_for,
    state_key,
)
from smart_launch.scopes import missing_scopes, translate
from smart_launch.tokens import TokenSet

# A non-UTC clock: expiry maths must not depend on the server's zone.
TZ = timezone(timedelta(hours=-5))
NOW = datetime(2026, 11, 3, 9, 30, tzinfo=TZ)


def reg(scopes: str = "launch openid fhirUser patient/Patient.read") -> Registration:
    return Registration(
        id="r1",
        iss="https://ehr.test/fhir",
        client_id="caredesk",
        client_type="public",
        scopes=scopes,
        redirect_uri="https://caredesk.test/callback",
    )


def conf(*caps: str) -> SmartConfiguration:
    return SmartConfiguration(
        fhir_base="https://ehr.test/fhir",
        issuer="https://ehr.test/fhir",
        authorization_endpoint="https://ehr.test/auth/authorize",
        token_endpoint="https://ehr.test/auth/token",
        capabilities=frozenset(caps),
    )


def test_state_has_at_least_128_bits_and_is_urlsafe() -> None:
    states = {new_state() for _ in range(200)}
    assert len(states) == 200
    for state in states:
        assert len(state) >= 22  # 128 bits in base64url
        assert set(state) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_pkce_challenge_is_s256_of_verifier() -> None:
    verifier, challenge = new_pkce()
    assert 43 <= len(verifier) <= 128
    import base64
    import hashlib

    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert challenge == expected.decode()
    assert new_pkce()[0] != verifier


def test_pending_launch_accepts_matching_state_within_ten_minutes() -> None:
    pending = PendingLaunch.start(reg(), conf(), launch="L1", now=NOW)
    assert check_pending(pending, state=pending.state, now=NOW + timedelta(minutes=9)) is pending


def test_pending_launch_rejects_expired_state() -> None:
    pending = PendingLaunch.start(reg(), conf(), now=NOW)
    with pytest.raises(StateError, match="10 minutes"):
        check_pending(pending, state=pending.state, now=NOW + timedelta(minutes=10))


def test_callback_rejects_unknown_or_replayed_state() -> None:
    # The store hands back None for a state it never saw or already consumed.
    with pytest.raises(StateError):
        check_pending(None, state=new_state(), now=NOW)


def test_callback_rejects_state_that_does_not_match_the_stored_one() -> None:
    pending = PendingLaunch.start(reg(), conf(), now=NOW)
    with pytest.raises(StateError):
        check_pending(pending, state=new_state(), now=NOW)


def test_pending_launch_json_round_trip_hides_secrets_in_repr() -> None:
    pending = PendingLaunch.start(reg(), conf(), launch="L1", now=NOW)
    assert PendingLaunch.from_json(pending.to_json()) == pending
    assert pending.state not in repr(pending)
    assert pending.code_verifier not in repr(pending)


@pytest.mark.parametrize(
    ("v1", "v2"),
    [
        ("patient/Patient.read", "patient/Patient.rs"),
        ("user/Task.write", "user/Task.cud"),
        ("system/*.*", "system/*.cruds"),
        ("launch/patient", "launch/patient"),
        ("openid fhirUser offline_access", "openid fhirUser offline_access"),
    ],
)
def test_scopes_translate_v1_to_v2(v1: str, v2: str) -> None:
    assert translate(v1, v2=True) == v2


@pytest.mark.parametrize(
    ("v2", "v1"),
    [
        ("patient/Patient.rs", "patient/Patient.read"),
        ("patient/Patient.r", "patient/Patient.read"),
        ("user/Task.cu", "user/Task.write"),
        ("user/Task.cruds", "user/Task.*"),
        ("patient/Observation.rs?category=laboratory", "patient/Observation.read"),
        ("patient/Patient.r patient/Patient.s", "patient/Patient.read"),
    ],
)
def test_scopes_translate_v2_to_v1(v2: str, v1: str) -> None:
    assert translate(v2, v2=False) == v1


def test_scopes_for_uses_v2_only_when_server_advertises_permission_v2() -> None:
    r = reg("launch patient/Patient.read user/Task.rs")
    assert scopes_for(r, conf("permission-v2")) == "launch patient/Patient.rs user/Task.rs"
    assert scopes_for(r, conf("permission-v1")) == "launch patient/Patient.read user/Task.read"
    assert scopes_for(r, conf()) == "launch patient/Patient.read user/Task.read"


def test_authorization_request_carries_pkce_aud_state_and_launch() -> None:
    verifier, challenge = new_pkce()
    # No code_challenge_methods advertised at all: S256 is still sent.
    req = build_authorization_request(reg(), conf(), state="st", code_verifier=verifier, launch="L")
    assert req.method == "GET"
    parts = urlsplit(req.url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://ehr.test/auth/authorize"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query == {
        "response_type": "code",
        "client_id": "caredesk",
        "redirect_uri": "https://caredesk.test/callback",
        "scope": "launch openid fhirUser patient/Patient.read",
        "state": "st",
        "aud": "https://ehr.test/fhir",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "launch": "L",
    }


def test_standalone_authorization_request_has_no_launch_param() -> None:
    req = build_authorization_request(reg(), conf(), state="s", code_verifier="v" * 43, launch=None)
    assert "launch" not in req.params


def test_long_scope_uses_post_when_authorize_post_advertised() -> None:
    long = " ".join(f"patient/Resource{i}.read" for i in range(80))
    r = reg(long)
    post = build_authorization_request(
        r, conf("authorize-post"), state="s", code_verifier="v" * 43, launch="L"
    )
    assert post.method == "POST"
    assert post.url == "https://ehr.test/auth/authorize"
    assert post.params["scope"] == long
    get = build_authorization_request(r, conf(), state="s", code_verifier="v" * 43, launch="L")
    assert get.method == "GET"
    short = build_authorization_request(
        reg(), conf("authorize-post"), state="s", code_verifier="v" * 43, launch="L"
    )
    assert short.method == "GET"


def test_parse_callback_returns_code_and_state() -> None:
    assert parse_callback({"code": "c", "state": "s"}) == ("c", "s")


def test_parse_callback_raises_authorization_denied_with_description() -> None:
    with pytest.raises(AuthorizationDenied) as info:
        parse_callback(
            {"error": "access_denied", "error_description": "User said no", "state": "s"}
        )
    assert info.value.error == "access_denied"
    assert info.value.error_description == "User said no"
    assert info.value.ehr_text == "User said no"
    assert "User said no" not in info.value.summary  # the EHR's words are not ours


def test_parse_callback_without_state_is_a_state_error() -> None:
    with pytest.raises(StateError):
        parse_callback({"code": "c"})


def token_set(**kw: object) -> TokenSet:
    body = {
        "access_token": "AT-secret",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "launch/patient patient/Patient.rs",
        "refresh_token": "RT-secret",
        "patient": "p1",
        "encounter": "e1",
        "fhirContext": [{"reference": "Appointment/a1"}],
        "need_patient_banner": False,
        "smart_style_url": "https://ehr.test/style.json",
        "intent": "reconcile",
        "tenant": "t1",
        "vendor_thing": 7,
        **kw,
    }
    return TokenSet.from_response(
        body,
        scope_requested="launch/patient openid patient/Patient.read patient/Coverage.read",
        now=NOW,
        id_claims={"fhirUser": "Practitioner/9"},
    )


def test_token_set_keeps_launch_context_and_json_round_trips() -> None:
    ts = token_set()
    assert ts.patient == "p1" and ts.encounter == "e1"
    assert ts.fhir_context == ({"reference": "Appointment/a1"},)
    assert ts.need_patient_banner is False
    assert ts.intent == "reconcile" and ts.tenant == "t1"
    assert ts.fhir_user == "Practitioner/9"
    assert ts.extra == {"vendor_thing": 7}
    assert ts.expires_at == NOW + timedelta(seconds=300)
    again = TokenSet.from_json(ts.to_json())
    assert again == ts
    assert again.expires_at.utcoffset() == timedelta(hours=-5)


def test_token_set_repr_never_shows_tokens() -> None:
    ts = token_set()
    for text in (repr(ts), str(ts), ts.redacted_repr(), f"{ts}"):
        assert "AT-secret" not in text and "RT-secret" not in text


def test_token_set_reports_scopes_granted_less_than_asked() -> None:
    # Asked for Coverage and openid; got neither (no id_token either).
    assert token_set().missing_scopes() == ["openid", "patient/Coverage.read"]


def test_missing_scopes_treats_refresh_token_as_offline_access_granted() -> None:
    # Epic: refresh token issued, offline_access absent from scope.
    assert missing_scopes("offline_access", "patient/*.read", has_refresh_token=True) == []
    assert missing_scopes("offline_access", "patient/*.read") == ["offline_access"]


def test_missing_scopes_compares_v1_and_v2_by_meaning() -> None:
    assert missing_scopes("patient/Patient.read", "patient/Patient.rs") == []
    assert missing_scopes("patient/Patient.rs", "patient/*.read") == []
    assert missing_scopes("patient/Patient.cruds", "patient/Patient.rs") == [
        "patient/Patient.cruds"
    ]
    assert missing_scopes("user/Patient.read", "patient/Patient.read") == ["user/Patient.read"]


def test_expires_soon_uses_margin_and_aware_times() -> None:
    ts = token_set()
    # A 300-second token: the default margin is a tenth of that.
    assert not ts.expires_soon(NOW + timedelta(seconds=269))
    assert ts.expires_soon(NOW + timedelta(seconds=271))
    assert ts.expires_soon(NOW + timedelta(seconds=241), timedelta(seconds=60))
    assert ts.expires_soon(NOW.astimezone(UTC) + timedelta(seconds=300), timedelta(0))


def test_token_set_refuses_naive_expiry() -> None:
    with pytest.raises(ValueError):
        TokenSet("a", "Bearer", datetime(2026, 1, 1), "", "")


def test_refresh_response_keeps_context_and_old_refresh_token_when_not_rotated() -> None:
    first = token_set()
    second = TokenSet.from_response(
        {"access_token": "AT2", "token_type": "bearer", "expires_in": 60},
        scope_requested=first.scope_requested,
        now=NOW,
        previous=first,
    )
    assert second.refresh_token == "RT-secret"
    assert second.patient == "p1" and second.fhir_user == "Practitioner/9"
    assert second.scope_granted == first.scope_granted


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("Tue, 03 Nov 2026 14:31:00 GMT", 60.0),
        ("Tue, 03 Nov 2026 14:00:00 GMT", 0.0),  # in the past
        ("soon", None),
        (None, None),
    ],
)
def test_retry_after_parses_seconds_and_http_dates(
    value: str | None, expected: float | None
) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Cache-Control": "public, max-age=600"}, 600),
        ({"Cache-Control": "max-age=999999"}, 3600),  # ceiling
        ({"Cache-Control": "no-store"}, 60),  # floor
        ({"Expires": "Tue, 03 Nov 2026 14:50:00 GMT"}, 1200),
        ({"Expires": "garbage"}, 60),
        ({}, 300),
    ],
)
def test_cache_ttl_honors_headers_within_bounds(headers: dict[str, str], expected: float) -> None:
    assert cache_ttl(headers, now=NOW, default=300, minimum=60, ceiling=3600) == expected


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://ehr.test/fhir", True),
        ("https://ehr.test/fhir/Patient?page=2", True),
        ("https://EHR.test:443/fhir/Patient", True),
        ("https://ehr.test/fhir-evil/Patient", False),
        ("https://ehr.test.attacker.net/fhir/Patient", False),
        ("http://ehr.test/fhir/Patient", False),
        ("https://ehr.test:8443/fhir/Patient", False),
        ("https://ehr.test/fhir/../admin", False),
        ("https://ehr.test/other", False),
    ],
)
def test_is_under_base(url: str, ok: bool) -> None:
    assert is_under(url, "https://ehr.test/fhir") is ok


def test_outcome_text_joins_diagnostics_and_details() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"diagnostics": "bad date"}, {"details": {"text": "unknown code"}}, {}],
    }
    assert outcome_text(outcome) == "bad date; unknown code"
    assert outcome_text({"resourceType": "Patient"}) is None


def test_registration_without_redirect_uri_cannot_authorize() -> None:
    # Jobs and the command line never redirect a browser: no placeholder URI needed.
    jobs = Registration(
        id="r1", iss="https://ehr.test/fhir", client_id="c", client_type="public", scopes="launch"
    )
    assert jobs.redirect_uri is None
    with pytest.raises(ConfigurationError) as info:
        build_authorization_request(jobs, conf(), state="s", code_verifier="v" * 43, launch="L")
    assert info.value.code == "missing_redirect_uri" and info.value.party == "caredesk"


@pytest.mark.parametrize(
    ("iss", "matches"),
    [
        ("https://ehr.test/fhir", True),
        ("https://ehr.test/fhir/", True),  # a real server's launch link
        ("https://EHR.test:443/fhir//", True),
        ("HTTPS://ehr.test/fhir", True),
        ("https://ehr.test/FHIR", False),  # paths are case-sensitive
        ("https://ehr.test/fhir2", False),
        ("https://ehr.test/fhir/Patient", False),
        ("http://ehr.test/fhir", False),
        ("https://ehr.test:8443/fhir", False),
        ("https://ehr.test.evil/fhir", False),
        ("", False),
    ],
)
def test_launch_iss_matches_registered_base_despite_trailing_slash(iss: str, matches: bool) -> None:
    assert reg().matches_iss(iss) is matches
    registry = {reg().iss: reg()}
    if matches:
        assert find_registration(iss, registry).id == "r1"
    else:
        with pytest.raises(UnknownIssuer):
            find_registration(iss, registry)


def test_registered_iss_with_trailing_slash_matches_launch_without() -> None:
    slashed = Registration(
        id="r2", iss="https://ehr.test/fhir/", client_id="c", client_type="public", scopes="x"
    )
    assert slashed.matches_iss("https://ehr.test/fhir")
    assert normalize_iss("https://EHR.test:443/fhir/") == "https://ehr.test/fhir"


class PendingStore:
    """The web edge's table of pending launches, reduced: peek, then consume."""

    def __init__(self) -> None:
        self.rows: dict[str, PendingLaunch] = {}

    def add(self, pending: PendingLaunch) -> None:
        self.rows[state_key(pending.state)] = pending

    def peek(self, state: str) -> PendingLaunch | None:
        return self.rows.get(state_key(state))

    def consume(self, state: str) -> PendingLaunch | None:
        return self.rows.pop(state_key(state), None)


def test_callback_from_another_browser_is_refused_before_the_state_is_used() -> None:
    victim = new_browser_secret()
    store = PendingStore()
    pending = PendingLaunch.start(reg(), conf(), launch="L", now=NOW, browser_secret=victim)
    store.add(pending)
    assert pending.browser_key == browser_key(victim) and victim not in pending.to_json()
    code, state = parse_callback({"code": "c", "state": pending.state})
    for attacker in (new_browser_secret(), None, ""):
        with pytest.raises(BrowserMismatch):
            check_pending(store.peek(state), state=state, now=NOW, browser_secret=attacker)
    # Nothing was used up: the victim's own callback still works, once.
    assert check_pending(store.peek(state), state=state, now=NOW, browser_secret=victim)
    assert store.consume(state) is pending
    with pytest.raises(StateError):
        check_pending(store.peek(state), state=state, now=NOW, browser_secret=victim)


def test_browser_binding_is_checked_before_expiry_and_survives_json() -> None:
    secret = new_browser_secret()
    pending = PendingLaunch.start(reg(), conf(), now=NOW, browser_secret=secret)
    assert PendingLaunch.from_json(pending.to_json()) == pending
    later = NOW + timedelta(minutes=11)
    with pytest.raises(BrowserMismatch):
        check_pending(pending, state=pending.state, now=later, browser_secret="x" * 43)
    with pytest.raises(StateError, match="10 minutes"):
        check_pending(pending, state=pending.state, now=later, browser_secret=secret)
    check_browser(pending.browser_key, secret)
    assert state_key(pending.state) != pending.state and len(state_key("s")) == 64
