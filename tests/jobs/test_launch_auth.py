"""A job queued from the sidebar of an EHR without Backend Services runs on the refresh
token of the launch that queued it — after the user has left and the access token expired."""

from __future__ import annotations

import re

import requests

from sandbox.testing import running_sandbox
from tests.ehr import connect, sandbox_token
from tests.jobs.conftest import JOB_CONFIG, SECRET, load_task, run_burst
from tests.live import serve

CLIENT_ID = "caredesk-launch-auth"


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


def test_referral_runs_on_the_launchs_refresh_token(make_app) -> None:
    app = make_app(SECRET_KEY=SECRET, **JOB_CONFIG)
    with serve(app) as url, running_sandbox(token_lifetime_s=2) as sb:
        connect(app, sb, url, client_id=CLIENT_ID, client_type="confidential-symmetric")
        browser = requests.Session()
        page = browser.get(sb.launch(CLIENT_ID, patient="pat-003")["url"], timeout=30)
        assert page.status_code == 200
        queued = browser.post(
            page.url + "actions/task",
            data={
                "csrf_token": _csrf(page.text),
                "kind": "referral",
                "reason": "cardiology review",
                "specialty": "Cardiology",
            },
            timeout=30,
        )
        assert queued.status_code == 200
        browser.close()  # the user has left
        sb.expire_tokens()  # and the launch's access token has expired
        refreshes = sb.stats()["token_requests"]["refresh_token"]
        result = run_burst(app)
        assert result.returncode == 0, result.stderr[-2000:]
        task_id = int(re.search(r"task-(\d+)-a1", result.stdout + result.stderr).group(1))  # type: ignore[union-attr]
        task = load_task(app, task_id)
        assert task.status == "waiting", task.last_error
        # Refreshed with the launch's (rotating) refresh token; with a 2 s lifetime every
        # request is inside the 60 s renewal margin, so the count is not pinned here.
        assert sb.stats()["token_requests"]["refresh_token"] > refreshes
        assert sb.stats()["token_requests"]["client_credentials"] == 0
        found = requests.get(
            f"{sb.fhir_base}/ServiceRequest",
            params={"patient": "pat-003"},
            headers={"Authorization": f"Bearer {sandbox_token(sb)}"},
            timeout=10,
        ).json()
        assert len(found.get("entry", [])) == 1
