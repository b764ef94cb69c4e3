"""SMART `authorize-post`: with a scope string too long for a URL, CareDesk sends the
browser to the EHR with a form POST — which Chromium submits under CareDesk's CSP."""

from __future__ import annotations

import re

from helpdesk import registry
from sandbox.testing import running_sandbox
from tests.ehr import connect
from tests.live import serve

CLIENT_ID = "caredesk-post"
# Granular v2 scopes (SMART 2 `?category=` style) make a realistic long scope string.
LONG_SCOPES = registry.DEFAULT_SCOPES + "".join(
    f" patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
    f"observation-category|c{i}"
    for i in range(20)
)


def test_long_scope_string_launch_uses_a_form_post(make_app, chromium) -> None:
    app = make_app()
    with serve(app) as url, running_sandbox() as sb:
        connect(app, sb, url, client_id=CLIENT_ID, scopes=LONG_SCOPES, sandbox_scopes=LONG_SCOPES)
        launch_url = sb.launch(CLIENT_ID, patient="pat-001")["url"]
        page = chromium.new_page()
        methods: list[str] = []
        page.on("request", lambda r: methods.append(f"{r.method} {r.url.split('?')[0]}"))
        violations: list[str] = []
        page.on(
            "console", lambda m: violations.append(m.text) if "Content Security" in m.text else None
        )
        page.goto(launch_url)
        page.wait_for_url(re.compile(r".*/l/[^/]+/$"), timeout=20_000)
        # The sidebar may be sent before the EHR answers; its sections fill in after.
        page.get_by_text("Okonkwo").first.wait_for(timeout=20_000)
        assert f"POST {sb.base_url}/auth/authorize" in methods
        assert violations == []
        page.close()
