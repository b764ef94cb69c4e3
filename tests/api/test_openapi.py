"""The OpenAPI document: valid, complete (every /api/ route and method), and true to what
the server actually answers (real responses validate against the documented schemas)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

_RULE_ARG = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def openapi_path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    """``/api/l/<launch_id>/tickets/<rowid:ticket_id>`` -> ``/api/l/{launch_id}/tickets/
    {ticket_id}`` and the names of its path parameters."""
    return _RULE_ARG.sub(r"{\1}", rule), [{"name": n} for n in _RULE_ARG.findall(rule)]


@pytest.fixture
def spec(env) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    import requests

    response = requests.get(f"{env.base}/api/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def _validator(spec: dict[str, Any], component: str) -> OAS30Validator:
    # The whole document is the root, so "$ref"s inside components resolve.
    return OAS30Validator({"$ref": f"#/components/schemas/{component}", **spec})


def test_document_is_a_valid_openapi_3_document(spec) -> None:
    validate(spec)
    assert spec["openapi"].startswith("3.")


def test_every_api_route_and_method_is_documented(env, spec) -> None:
    rules = [r for r in env.app.url_map.iter_rules() if r.rule.startswith("/api/")]
    assert len(rules) >= 8
    for rule in rules:
        path, params = openapi_path(rule.rule)
        assert path in spec["paths"], rule.rule
        item = spec["paths"][path]
        documented_params = {p["name"] for p in item.get("parameters", [])}
        assert documented_params == {p["name"] for p in params}
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            op = item[method.lower()]
            assert op["summary"] != "(undocumented)", (rule.rule, method)
            ok = [s for s in op["responses"] if s.startswith("2")]
            assert ok, (rule.rule, method)
            if "launch_id" in rule.arguments:
                assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }
            if method in ("POST", "PATCH"):
                assert {"browserCookie": [], "csrfToken": []} in op["security"]
                assert "403" in op["responses"] and "422" in op["responses"]
                # A body that is not JSON, or not parsable JSON, is documented too.
                assert "415" in op["responses"] and "400" in op["responses"]
                assert "requestBody" in op
    documented = {
        (path, method)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "patch", "put", "delete")
    }
    served = {
        (openapi_path(r.rule)[0], m.lower()) for r in rules for m in r.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == served


def test_query_parameters_and_request_bodies_come_from_the_schemas(spec) -> None:
    tickets = spec["paths"]["/api/l/{launch_id}/tickets"]
    query = {p["name"] for p in tickets["get"]["parameters"] if p["in"] == "query"}
    assert query == {"status", "patient", "category", "assignee", "page", "per_page"}
    body = tickets["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/TicketCreate"}
    create = spec["components"]["schemas"]["TicketCreate"]
    assert set(create["required"]) == {"subject", "category"}
    assert "clinical-question" in create["properties"]["category"]["enum"]
    task = spec["components"]["schemas"]["TaskCreate"]
    assert task["discriminator"]["propertyName"] == "kind"
    assert spec["components"]["schemas"]["Context"]["properties"].keys() >= {
        "contact",
        "visits",
        "insurance",
        "tickets",
        "tasks",
        "flags",
        "unavailable",
    }
    assert spec["components"]["schemas"]["Board"]["properties"].keys() >= {"date", "rows"}


def test_real_responses_match_the_documented_schemas(spec, a) -> None:
    created = a.post("/tickets", {"subject": "s", "category": "billing"})
    _validator(spec, "TicketDetail").validate(created.json())
    note = a.post(f"/tickets/{created.json()['id']}/notes", {"body": "b"})
    _validator(spec, "Note").validate(note.json())
    a.post(f"/tickets/{created.json()['id']}/notes", {"body": "c"})
    _validator(spec, "TicketDetail").validate(a.get(f"/tickets/{created.json()['id']}").json())
    _validator(spec, "TicketPage").validate(a.get("/tickets").json())
    task = a.post("/tasks", {"kind": "follow-up", "reason": "r", "due": "in 2 days"})
    _validator(spec, "Task").validate(task.json())
    _validator(spec, "TaskList").validate(a.get("/tasks").json())
    for error in (
        a.post("/tickets", {"subject": ""}),
        a.get("/tickets/424242"),
        a.post("/tickets", {"subject": "s", "category": "billing"}, csrf=None),
    ):
        assert error.status_code >= 400
        _validator(spec, "Error").validate(error.json())
    # And the validator is not a pushover: a wrong shape fails.
    with pytest.raises(Exception, match="required"):
        _validator(spec, "Error").validate({"code": "x"})


def test_context_and_board_are_documented_as_open_objects(spec) -> None:
    for name in ("Context", "Board"):
        assert spec["components"]["schemas"][name]["additionalProperties"] is True
