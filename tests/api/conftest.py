"""Two EHR registrations (A and B) with active launches, and the app served over real HTTP.

Launch rows are written straight into the store (the launch flow itself is tested in
tests/plugin/test_launch.py): a browser is a requests.Session whose `caredesk_browser`
cookie is the secret whose SHA-256 is the row's `browser_hash`, as after a real callback.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from sqlalchemy import select

from helpdesk.db import get_store
from helpdesk.models import AuditEvent, EhrRegistration, LaunchSession
from plugin.csrf import csrf_token
from tests.live import serve

VIEWER_TZ = "America/Chicago"


@dataclass
class Browser:
    """One browser tab on one launch (the AuthActions of these tests)."""

    base: str
    launch_id: str
    secret: str
    csrf: str
    http: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        # Sent as a header: requests' cookie jar is fussy about bare-IP domains.
        self.http.headers["Cookie"] = f"caredesk_browser={self.secret}"

    def url(self, path: str, *, api_path: bool = True) -> str:
        prefix = "/api/l/" if api_path else "/l/"
        return f"{self.base}{prefix}{self.launch_id}{path}"

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.url(path), timeout=10, **kw)

    def send(
        self, method: str, path: str, json: Any = None, *, csrf: str | None = "auto", **kw: Any
    ) -> requests.Response:
        headers = dict(kw.pop("headers", {}))
        if csrf == "auto":
            headers["X-CSRF-Token"] = self.csrf
        elif csrf is not None:
            headers["X-CSRF-Token"] = csrf
        return self.http.request(
            method, self.url(path), json=json, headers=headers, timeout=10, **kw
        )

    def post(self, path: str, json: Any = None, **kw: Any) -> requests.Response:
        return self.send("POST", path, json, **kw)

    def patch(self, path: str, json: Any = None, **kw: Any) -> requests.Response:
        return self.send("PATCH", path, json, **kw)

    def page(self, path: str) -> requests.Response:
        return self.http.get(self.url(path, api_path=False), timeout=10, allow_redirects=False)

    def form(self, path: str, data: dict[str, str], *, with_csrf: bool = True) -> requests.Response:
        body = dict(data)
        if with_csrf:
            body["csrf_token"] = self.csrf
        return self.http.post(
            self.url(path, api_path=False), data=body, timeout=10, allow_redirects=False
        )

    def close(self) -> None:
        self.http.close()


@dataclass
class Env:
    app: Any
    base: str
    registrations: dict[str, int]
    browsers: list[Browser] = field(default_factory=list)

    def launch(
        self,
        ehr: str,
        *,
        patient: str | None = "Patient/p1",
        user: str = "Practitioner/dr-a",
        status: str = "active",
        scope: str | None = None,
    ) -> Browser:
        """A launch as after a real callback. The grant is the EHR's usual one: the
        patient's data for a launch from a chart, every patient's (``user/``) for a launch
        without one; ``scope`` overrides it (``patient/`` scopes only, say)."""
        if scope is None:
            scope = (
                "launch openid fhirUser patient/*.rs"
                if patient
                else "launch openid fhirUser user/*.rs"
            )
        secret = secrets.token_urlsafe(32)
        launch_id = secrets.token_urlsafe(24)
        with self.app.app_context(), get_store(self.app).session() as db:
            row = LaunchSession(
                id=launch_id,
                registration_id=self.registrations[ehr],
                status=status,
                browser_hash=hashlib.sha256(secret.encode()).hexdigest(),
                patient_ref=patient,
                fhir_user=user,
                scope_granted=scope,
                context={},
            )
            db.add(row)
            db.flush()
            token = csrf_token(row)
        browser = Browser(self.base, launch_id, secret, token)
        self.browsers.append(browser)
        return browser

    def audit_events(self, action: str | None = None) -> list[AuditEvent]:
        with get_store(self.app).session() as db:
            query = select(AuditEvent).order_by(AuditEvent.id)
            if action:
                query = query.where(AuditEvent.action == action)
            return list(db.scalars(query))

    def db(self) -> Any:
        return get_store(self.app).session()


def _registration(slug: str) -> EhrRegistration:
    return EhrRegistration(
        slug=slug,
        name=f"EHR {slug}",
        iss=f"http://127.0.0.1:9/{slug}/fhir",
        client_id=f"caredesk-{slug}",
        client_type="public",
        scopes="launch openid fhirUser patient/*.rs",
        frame_origins=[],
    )


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Extra configuration for a test (override in a test module or with indirect)."""
    return {}


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """The store for a test: SQLite; a module overrides this to run on PostgreSQL too."""
    return sqlite_url


@pytest.fixture
def env(make_app: Any, db_url: str, app_config: dict[str, Any]) -> Iterator[Env]:
    app = make_app(DATABASE_URL=db_url, **app_config)
    with app.app_context(), get_store(app).session() as db:
        a, b = _registration("ehr-a"), _registration("ehr-b")
        db.add_all([a, b])
        db.flush()
        ids = {"A": a.id, "B": b.id}
    with serve(app) as base:
        environment = Env(app=app, base=base, registrations=ids)
        try:
            yield environment
        finally:
            for browser in environment.browsers:
                browser.close()


@pytest.fixture
def a(env: Env) -> Browser:
    return env.launch("A")


@pytest.fixture
def b(env: Env) -> Browser:
    return env.launch("B", user="Practitioner/dr-b")
