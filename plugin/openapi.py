"""The OpenAPI 3 document of ``/api/``, built from the app's URL map, the views' ``@doc``
descriptions (``plugin.api``) and the marshmallow schemas (``plugin.schemas``).

Walking the URL map rather than keeping a list means a new ``/api/`` route shows up in
the document the moment it is registered; a route without ``@doc`` still appears, marked
undocumented, and the API tests fail until it is described.
"""

from __future__ import annotations

import re
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema

from plugin import __version__, schemas
from plugin.api import Doc

EXTENSION = "caredesk.openapi"
OPENAPI_VERSION = "3.0.3"

_RULE_ARG = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_CONVERTER_TYPES = {"int": "integer", "float": "number"}

_ERROR_TEXT = {
    401: "No active launch for this browser (launch again from the EHR).",
    403: "Missing or wrong CSRF token (`X-CSRF-Token`).",
    404: "No such item in this EHR.",
    409: "Not possible in the item's current state.",
    415: "The body is not JSON.",
    422: "Invalid input; `error.fields` has the messages per field.",
    502: "The EHR failed or answered unexpectedly.",
}

# Nested schemas before the schemas that nest them: apispec registers a nested schema
# under its default name on first sight, and a later explicit name would clash.
_COMPONENTS: tuple[tuple[str, type[Schema]], ...] = (
    ("ErrorBody", schemas.ErrorBodySchema),
    ("Error", schemas.ErrorSchema),
    ("Note", schemas.NoteSchema),
    ("Ticket", schemas.TicketSchema),
    ("TicketDetail", schemas.TicketDetailSchema),
    ("TicketPage", schemas.TicketPageSchema),
    ("TicketCreate", schemas.TicketCreateSchema),
    ("TicketUpdate", schemas.TicketUpdateSchema),
    ("NoteCreate", schemas.NoteCreateSchema),
    ("Task", schemas.TaskSchema),
    ("TaskList", schemas.TaskListSchema),
    ("FollowUpCreate", schemas.FollowUpCreateSchema),
    ("ReferralCreate", schemas.ReferralCreateSchema),
    ("Context", schemas.ContextSchema),
    ("Board", schemas.BoardSchema),
)


def openapi_path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    """``/api/l/<launch_id>/tickets/<int:ticket_id>`` -> ``/api/l/{launch_id}/tickets/
    {ticket_id}`` and its path parameters."""
    params: list[dict[str, Any]] = []
    for match in _RULE_ARG.finditer(rule):
        params.append(
            {
                "name": match["name"],
                "in": "path",
                "required": True,
                "schema": {"type": _CONVERTER_TYPES.get(match["converter"] or "", "string")},
            }
        )
    return _RULE_ARG.sub(lambda m: "{" + m["name"] + "}", rule), params


def _content(schema: type[Schema] | str) -> dict[str, Any]:
    ref: Any = schema
    if schema == "OpenApiDocument":
        ref = {"type": "object", "description": "An OpenAPI 3 document."}
    elif isinstance(schema, str):
        ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"application/json": {"schema": ref}}


def _operation(endpoint: str, method: str, meta: Doc | None) -> dict[str, Any]:
    if meta is None:
        return {
            "operationId": endpoint,
            "summary": "(undocumented)",
            "responses": {"default": {"description": "undocumented"}},
        }
    op: dict[str, Any] = {
        "operationId": endpoint,
        "summary": meta.summary,
        "tags": list(meta.tags),
        "responses": {},
    }
    if meta.description:
        op["description"] = meta.description
    if meta.query is not None:
        op["parameters"] = [{"in": "query", "schema": meta.query}]
    if meta.body is not None:
        op["requestBody"] = {"required": True, "content": _content(meta.body)}
    for status, schema in meta.responses.items():
        response: dict[str, Any] = {"description": "Success"}
        if schema is not None:
            response["content"] = _content(schema)
        op["responses"][str(status)] = response
    for status in meta.errors:
        op["responses"][str(status)] = {
            "description": _ERROR_TEXT.get(status, "Error"),
            "content": _content("Error"),
        }
    if not meta.public:
        op["security"] = (
            [{"browserCookie": []}]
            if method in ("get", "head")
            else [{"browserCookie": [], "csrfToken": []}]
        )
    op["responses"].setdefault(
        "500",
        {"description": "Unexpected error; quote `request_id`.", "content": _content("Error")},
    )
    return op


def build_spec(app: Flask) -> dict[str, Any]:
    spec = APISpec(
        title="CareDesk API",
        version=__version__,
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={
            "description": "The sidebar's JSON API. Every route but this document names "
            "a launch (`/api/l/{launch_id}/...`) and needs this browser's launch cookie; "
            "state-changing requests also need the launch's CSRF token in `X-CSRF-Token` "
            '(the sidebar page carries it in `<meta name="csrf-token">`). Errors have '
            'one shape: `{"error": {"code", "message", "request_id"}}`.'
        },
    )
    for name, schema in _COMPONENTS:
        spec.components.schema(name, schema=schema)
    spec.components.schema(
        "TaskCreate",
        component={
            "oneOf": [
                {"$ref": "#/components/schemas/FollowUpCreate"},
                {"$ref": "#/components/schemas/ReferralCreate"},
            ],
            "discriminator": {
                "propertyName": "kind",
                "mapping": {
                    "follow-up": "#/components/schemas/FollowUpCreate",
                    "referral": "#/components/schemas/ReferralCreate",
                },
            },
        },
    )
    spec.components.security_scheme(
        "browserCookie", {"type": "apiKey", "in": "cookie", "name": "caredesk_browser"}
    )
    spec.components.security_scheme(
        "csrfToken", {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"}
    )
    by_path: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.rule.startswith("/api/"):
            continue
        path, params = openapi_path(rule.rule)
        operations, _ = by_path.setdefault(path, ({}, params))
        meta = getattr(app.view_functions[rule.endpoint], "__openapi__", None)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operations[method.lower()] = _operation(rule.endpoint, method.lower(), meta)
    for path, (operations, params) in by_path.items():
        spec.path(path=path, operations=operations, parameters=params or None)
    return spec.to_dict()


def spec_for(app: Flask) -> dict[str, Any]:
    """Built once per app: the URL map does not change after the first request."""
    cached: dict[str, Any] | None = app.extensions.get(EXTENSION)
    if cached is None:
        cached = build_spec(app)
        app.extensions[EXTENSION] = cached
    return cached
