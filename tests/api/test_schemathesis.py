"""schemathesis over /api/openapi.json, against the real app over HTTP (PostgreSQL, Redis,
the sandbox EHR) with a session launched from the EHR: every operation gets bounded
generated examples (boundary values, fuzzing, then stateful sequences through the links
schemathesis infers from `Location` and the response schemas) and must answer with no
server error, in a status and a shape its document lists.

One refusal of documented-valid input is allowed, and only this one: a follow-up's `due`
phrase CareDesk cannot read, or a `due_at` already past, is 422 naming that field. JSON
Schema can say neither (a phrase grammar, the clock); the field descriptions say it.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events
from schemathesis.engine import from_schema as engine_for

from sandbox.testing import running_sandbox
from tests.ehr import connect
from tests.live import serve

CLIENT_ID = "caredesk-schemathesis"
# Per operation and phase; with the coverage phase's boundary cases and the stateful
# phase this is about 1,000 requests in under a minute on the 2-core machine.
MAX_EXAMPLES = 25
SEMANTIC_FIELDS = {"due", "due_at"}


@dataclass(frozen=True)
class Launched:
    base: str
    launch_id: str
    cookie: str
    csrf: str


@pytest.fixture
def launched(make_app: Any, pg_url: str) -> Iterator[Launched]:
    app = make_app(DATABASE_URL=pg_url)
    with serve(app) as base, running_sandbox() as sb:
        connect(app, sb, base, client_id=CLIENT_ID)
        with requests.Session() as browser:
            page = browser.get(sb.launch(CLIENT_ID, patient="pat-001")["url"], timeout=30)
            assert page.status_code == 200, page.text
            launch_id = re.search(r"/l/([^/]+)/", page.url)
            csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
            assert launch_id and csrf
            cookie = browser.cookies.get("caredesk_browser")
            assert cookie
            yield Launched(base, launch_id[1], cookie, csrf[1])


def _semantic_refusal(check: str, status: int | None, body: bytes) -> bool:
    if check != "positive_data_acceptance" or status != 422:
        return False
    fields = json.loads(body)["error"].get("fields") or {}
    return bool(fields) and set(fields) <= SEMANTIC_FIELDS


def test_generated_requests_get_no_server_error_and_documented_answers(launched) -> None:  # type: ignore[no-untyped-def]
    config = SchemathesisConfig.from_dict(
        {
            "seed": 20261130,
            "headers": {
                "Cookie": f"caredesk_browser={launched.cookie}",
                "X-CSRF-Token": launched.csrf,
            },
            "parameters": {"path.launch_id": launched.launch_id},
            # The session is the launch's cookie and token above, not generated values.
            "generation": {"max-examples": MAX_EXAMPLES, "with-security-parameters": False},
        }
    )
    schema = schemathesis.openapi.from_url(f"{launched.base}/api/openapi.json", config=config)
    started = time.monotonic()
    failures: list[str] = []
    semantic = 0
    statuses: Counter[int] = Counter()
    operations: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    for event in engine_for(schema).execute():
        if isinstance(event, events.NonFatalError | events.FatalError):
            failures.append(f"{getattr(event, 'label', '')}: {getattr(event, 'value', event)!r}")
        if not isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            continue
        recorder = event.recorder
        for case_id, interaction in recorder.interactions.items():
            if interaction.response is not None:
                statuses[interaction.response.status_code] += 1
                phases[str(getattr(event, "phase", "fuzzing"))] += 1
                operations[recorder.cases[case_id].value.operation.label] += 1
        for case_id, checks in recorder.checks.items():
            for check in checks:
                if check.status != Status.FAILURE:
                    continue
                answer = recorder.interactions.get(case_id)
                response = answer.response if answer else None
                status = response.status_code if response else None
                content = response.content if response else b""
                if _semantic_refusal(check.name, status, content or b"{}"):
                    semantic += 1
                    continue
                case = recorder.cases[case_id].value
                failures.append(
                    f"{check.name}: {case.operation.label} {case.path_parameters} "
                    f"query={case.query} body={case.body!r:.300} -> {status} {content!r:.400}"
                )
    elapsed = time.monotonic() - started
    print(  # the run's figures, for the record (pytest -s)
        f"\nschemathesis: {len(operations)} operations, {sum(statuses.values())} requests "
        f"in {elapsed:.0f} s; statuses {dict(sorted(statuses.items()))}; "
        f"{semantic} documented semantic refusals; per phase {dict(phases)}; "
        f"per operation {dict(operations)}"
    )
    assert not sorted(set(failures)), "\n".join(sorted(set(failures)))
    assert not [s for s in statuses if s >= 500]
    document = requests.get(f"{launched.base}/api/openapi.json", timeout=10).json()
    launch_operations = {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if "{launch_id}" in path and method in ("get", "post", "patch", "put", "delete")
    }
    assert set(operations) == launch_operations  # every operation of a launch ran
    assert statuses[200] and statuses[201]  # and not only refusals
