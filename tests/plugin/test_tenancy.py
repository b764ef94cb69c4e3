"""Two EHRs, two registrations: a session launched from EHR B never sees EHR A's tickets."""

from __future__ import annotations

import re

import requests

from sandbox.testing import running_sandbox
from tests.ehr import connect
from tests.live import serve

CLIENT_ID = "caredesk-tenancy"


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert found
    return found.group(1)


def test_tickets_of_ehr_a_are_invisible_to_a_session_from_ehr_b(make_app) -> None:
    app = make_app()
    with serve(app) as url, running_sandbox() as ehr_a, running_sandbox() as ehr_b:
        for slug, sb in (("ehr-a", ehr_a), ("ehr-b", ehr_b)):
            connect(app, sb, url, client_id=CLIENT_ID, slug=slug)
        # The same patient id exists in both EHRs (same fixtures): ids alone must not leak.
        browser_a, browser_b = requests.Session(), requests.Session()
        page_a = browser_a.get(ehr_a.launch(CLIENT_ID, patient="pat-001")["url"], timeout=30)
        page_b = browser_b.get(ehr_b.launch(CLIENT_ID, patient="pat-001")["url"], timeout=30)
        assert page_a.status_code == page_b.status_code == 200
        launch_a = re.search(r"/l/([^/]+)/", page_a.url).group(1)  # type: ignore[union-attr]
        launch_b = re.search(r"/l/([^/]+)/", page_b.url).group(1)  # type: ignore[union-attr]

        created = browser_a.post(
            f"{url}/api/l/{launch_a}/tickets",
            json={"subject": "Billing question from EHR A", "category": "billing"},
            headers={"X-CSRF-Token": _csrf(page_a.text)},
            timeout=30,
        )
        assert created.status_code == 201, created.text
        ticket_id = created.json()["id"]

        listed = browser_b.get(f"{url}/api/l/{launch_b}/tickets", timeout=30).json()
        assert listed["items"] == [] and listed["total"] == 0
        direct = browser_b.get(f"{url}/api/l/{launch_b}/tickets/{ticket_id}", timeout=30)
        assert direct.status_code == 404
        patched = browser_b.patch(
            f"{url}/api/l/{launch_b}/tickets/{ticket_id}",
            json={"status": "closed"},
            headers={"X-CSRF-Token": _csrf(page_b.text)},
            timeout=30,
        )
        assert patched.status_code == 404
        sidebar_b = browser_b.get(f"{url}/l/{launch_b}/?refresh=1", timeout=30).text
        assert "Billing question from EHR A" not in sidebar_b
        # B's browser cannot borrow A's launch id either.
        assert browser_b.get(f"{url}/api/l/{launch_a}/tickets", timeout=30).status_code == 401
        # A still sees its own ticket in the sidebar.
        assert "Billing question from EHR A" in browser_a.get(page_a.url, timeout=30).text
