"""The OpenAPI 3 document of ``/api/``, by flask-smorest (apispec underneath).

The views of ``plugin.api`` declare what they take and give with flask-smorest's
decorators (``arguments`` validates the query or body with a ``plugin.schemas`` class,
``response`` dumps with one, ``alt_response`` names each error); the document is built from
those same declarations when the blueprint is registered, so it cannot list a route,
field or rule the server does not have. Here: the document's frame (title, security
schemes, the schemas' rules across fields) and the one error shape.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_smorest import Api
from flask_smorest import Blueprint as SmorestBlueprint
from marshmallow import Schema

from plugin import __version__, schemas

OPENAPI_VERSION = "3.0.3"

# Schemas whose rules across fields are JSON Schema keywords too (``json_rules``): each is
# registered before the views that use it, so its component carries them.
_RULED: tuple[type[schemas.StrictSchema] | type[schemas.TaskCreateSchema], ...] = (
    schemas.NoteCreateSchema,
    schemas.TicketUpdateSchema,
    schemas.FollowUpCreateSchema,
    schemas.ReferralCreateSchema,
    schemas.TaskCreateSchema,
)

UNEXPECTED = "UnexpectedError"


class CareDeskApi(Api):  # type: ignore[misc]
    """flask-smorest's ``Api`` with CareDesk's one error shape.

    ``plugin.errors`` owns every error handler (flask-smorest would register its own for
    ``HTTPException``, with a second shape); the documented error schema is
    ``plugin.schemas.ErrorSchema``; an error not listed on an operation (429, 500, 503)
    is its ``default`` response.
    """

    ERROR_SCHEMA = schemas.ErrorSchema
    DEFAULT_ERROR_RESPONSE_NAME = UNEXPECTED

    def _register_error_handlers(self) -> None:
        return None


def component_name(schema: type[Schema]) -> str:
    """The name apispec gives a schema class (``TicketCreateSchema`` -> ``TicketCreate``)."""
    name = schema.__name__
    return name.removesuffix("Schema") or name


def init_app(app: Flask, blueprint: SmorestBlueprint) -> CareDeskApi:
    """Make the app's ``Api``, frame its document and register the API blueprint."""
    api = CareDeskApi(
        app,
        spec_kwargs={
            "title": "CareDesk API",
            "version": __version__,
            "openapi_version": OPENAPI_VERSION,
            "info": {
                "description": "The sidebar's JSON API. Every route but this document names "
                "a launch (`/api/l/{launch_id}/...`) and needs this browser's launch cookie; "
                "state-changing requests also need the launch's CSRF token in "
                '`X-CSRF-Token` (the sidebar page carries it in `<meta name="csrf-token">`). '
                'Errors have one shape: `{"error": {"code", "message", "request_id"}}`, '
                "with `fields` (the messages per input field) on a 422."
            },
            # Every operation reads with the browser's launch cookie unless it says more
            # (writes add the CSRF token) or less (this document is public).
            "security": [{"browserCookie": []}],
        },
    )
    spec = api.spec
    spec.components.security_scheme(
        "browserCookie", {"type": "apiKey", "in": "cookie", "name": "caredesk_browser"}
    )
    spec.components.security_scheme(
        "csrfToken", {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"}
    )
    spec.components.response(
        UNEXPECTED,
        {
            "description": "Any other error: 429 too many requests, 500 unexpected (quote "
            "`request_id`), 503 the EHR is busy or down for now (see `Retry-After`).",
            "content": {"application/json": {"schema": component_name(schemas.ErrorSchema)}},
        },
    )
    for schema in _RULED:
        rules: dict[str, Any] = dict(schema.json_rules)
        spec.components.schema(component_name(schema), component=rules, schema=schema)
    api.register_blueprint(blueprint)
    return api
