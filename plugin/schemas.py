"""Marshmallow schemas of the JSON API: what comes in is validated here (a failure is a 422
with per-field messages), what goes out is shaped here, and flask-smorest documents both
from these same classes (``plugin.api``'s decorators, ``plugin.openapi``), so the
document cannot drift from the code.

A rule across fields that JSON Schema can express is written twice on purpose, side by
side: the ``validates_schema`` method the server runs, and the schema's ``json_rules``
(JSON Schema keywords added to its OpenAPI component), so a client generated from the
document never sends what the server refuses. Text must be storable (``_text``).

Datetimes in and out are aware ISO 8601 (a datetime without an offset is refused: the
API cannot know which clock it was read from).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from marshmallow import (
    INCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)
from marshmallow.types import UnknownOption
from webargs.fields import DelimitedList

from helpdesk.tickets import (
    CATEGORIES,
    FOLLOW_UP_CHANNELS,
    MAX_PER_PAGE,
    NOTE_CHANNELS,
    NOTE_DIRECTIONS,
    PRIORITIES,
    REFERRAL_URGENCIES,
    STATUSES,
    TASK_KINDS,
)

# FHIR ids are [A-Za-z0-9\-\.]{1,64} by the spec, but real EHRs send longer ones (see
# DESIGN.md), so only the character set is enforced; the column holds 300.
_FHIR_ID = r"[A-Za-z0-9\-\.]+"


def _reference(*types: str) -> validate.Regexp:
    return validate.Regexp(
        rf"^(?:{'|'.join(types)})/{_FHIR_ID}$",
        error=f"Must be a reference like {types[0]}/123.",
    )


_TEXT_MAX = 10_000
# Ids in paths and page numbers in queries stop at PostgreSQL's `integer`: a larger number
# names no row (404) or no page (422) rather than overflowing the query (a 500).
INT32_MAX = 2**31 - 1

# PostgreSQL text cannot hold NUL, and UTF-8 cannot encode an unpaired surrogate (JSON's
# "\ud800" decodes to one): either would fail at the database, so text is refused here
# first. NUL is refused by a pattern the document shows; a surrogate cannot be written in
# a pattern every JSON Schema engine reads (they are not characters), and is not valid
# Unicode text to begin with, so it is refused by a check the document names in words.
_NO_NUL = validate.Regexp(r"^[^\x00]*$", error="Text cannot contain NUL characters.")


def _encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError("Text cannot contain unpaired surrogate characters.") from exc


def _text(*validators: validate.Validator, **kwargs: Any) -> fields.String:
    """A string that can be stored (no NUL, no unpaired surrogate), with its other
    validators."""
    return fields.String(validate=[*validators, _NO_NUL, _encodable], **kwargs)


class StrictSchema(Schema):
    """Refuses unknown fields (documented as ``additionalProperties: false``)."""

    # JSON Schema keywords for the rules across fields (see the module docstring).
    json_rules: ClassVar[dict[str, Any]] = {}

    class Meta:
        unknown = RAISE


# --- errors --------------------------------------------------------------------------------


class ErrorBodySchema(Schema):
    code = fields.String(required=True, metadata={"example": "validation_failed"})
    message = fields.String(required=True)
    request_id = fields.String(
        required=True, metadata={"description": "Also on the server's log line."}
    )
    # Not named `fields`: that is Schema's own attribute.
    field_errors = fields.Dict(
        keys=fields.String(),
        values=fields.Raw(),
        data_key="fields",
        metadata={"description": "Only on 422: the messages per input field."},
    )
    ehr_text = fields.String(
        metadata={
            "description": "Only when the EHR failed or refused: what the EHR said, one "
            "line, control characters stripped; the EHR's words, not CareDesk's."
        }
    )


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)


# --- tickets -------------------------------------------------------------------------------


class NoteSchema(Schema):
    id = fields.Integer(dump_only=True)
    author = fields.String(allow_none=True, metadata={"description": "The fhirUser."})
    channel = fields.String(validate=validate.OneOf(NOTE_CHANNELS))
    direction = fields.String(validate=validate.OneOf(NOTE_DIRECTIONS))
    body = fields.String()
    created_at = fields.AwareDateTime()


class NoteCreateSchema(StrictSchema):
    body = _text(validate.Length(min=1, max=_TEXT_MAX), required=True)
    channel = fields.String(load_default="internal", validate=validate.OneOf(NOTE_CHANNELS))
    direction = fields.String(validate=validate.OneOf(NOTE_DIRECTIONS))

    json_rules: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {
                "description": "An internal note (the default channel) has direction "
                "internal or none.",
                "properties": {
                    "channel": {"enum": ["internal"]},
                    "direction": {"enum": ["internal"]},
                },
            },
            {
                "description": "A call or message says whether it was inbound or outbound.",
                "required": ["channel", "direction"],
                "properties": {
                    "channel": {"enum": [c for c in NOTE_CHANNELS if c != "internal"]},
                    "direction": {"enum": [d for d in NOTE_DIRECTIONS if d != "internal"]},
                },
            },
        ]
    }

    @validates_schema
    def _direction_matches_channel(self, data: dict[str, Any], **_: Any) -> None:
        channel, direction = data.get("channel", "internal"), data.get("direction")
        if channel == "internal" and direction not in (None, "internal"):
            raise ValidationError("An internal note has direction internal.", "direction")
        if channel != "internal" and direction in (None, "internal"):
            # A call or message went one way or the other; the log must say which.
            raise ValidationError("Say whether this was inbound or outbound.", "direction")

    def load_note(self, data: Any) -> dict[str, Any]:
        loaded: dict[str, Any] = self.load(data)
        loaded.setdefault("direction", "internal")
        return loaded


class TicketSchema(Schema):
    id = fields.Integer()
    patient_ref = fields.String(allow_none=True)
    subject = fields.String()
    description = fields.String()
    status = fields.String(validate=validate.OneOf(STATUSES))
    priority = fields.String(validate=validate.OneOf(PRIORITIES))
    category = fields.String(validate=validate.OneOf(CATEGORIES))
    assignee = fields.String(allow_none=True)
    due_at = fields.AwareDateTime(allow_none=True)
    overdue = fields.Boolean()
    allowed_transitions = fields.List(fields.String())
    created_by = fields.String(allow_none=True)
    source = fields.String()
    created_at = fields.AwareDateTime()
    updated_at = fields.AwareDateTime()


class TicketDetailSchema(TicketSchema):
    notes = fields.List(fields.Nested(NoteSchema))


class TicketPageSchema(Schema):
    items = fields.List(fields.Nested(TicketSchema), required=True)
    total = fields.Integer(required=True)
    page = fields.Integer(required=True)
    per_page = fields.Integer(required=True)


class TicketCreateSchema(StrictSchema):
    subject = _text(validate.Length(min=1, max=300), required=True)
    description = _text(validate.Length(max=_TEXT_MAX), load_default="")
    category = fields.String(required=True, validate=validate.OneOf(CATEGORIES))
    priority = fields.String(load_default="normal", validate=validate.OneOf(PRIORITIES))
    assignee = _text(validate.Length(min=1, max=300), allow_none=True, load_default=None)
    patient = fields.String(
        load_default=None,
        validate=[validate.Length(max=300), _reference("Patient")],
        metadata={"description": "Only for launches without patient context."},
    )


class TicketUpdateSchema(StrictSchema):
    status = fields.String(validate=validate.OneOf(STATUSES))
    priority = fields.String(validate=validate.OneOf(PRIORITIES))
    category = fields.String(validate=validate.OneOf(CATEGORIES))
    assignee = _text(validate.Length(min=1, max=300), allow_none=True)
    subject = _text(validate.Length(min=1, max=300))
    description = _text(validate.Length(max=_TEXT_MAX))
    due_at = fields.AwareDateTime(
        allow_none=True,
        metadata={"description": "Overrides the category's SLA due time."},
    )

    json_rules: ClassVar[dict[str, Any]] = {"minProperties": 1}

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **_: Any) -> None:
        if not data:
            raise ValidationError("Nothing to change.")


class TicketListQuerySchema(StrictSchema):
    status = DelimitedList(
        fields.String(validate=validate.OneOf(STATUSES)),
        validate=validate.Length(min=1),
        metadata={"description": "One status or several, comma-separated."},
    )
    patient = fields.String(validate=_reference("Patient"))
    category = fields.String(validate=validate.OneOf(CATEGORIES))
    assignee = _text(validate.Length(min=1, max=300))
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=INT32_MAX))
    per_page = fields.Integer(load_default=25, validate=validate.Range(min=1, max=MAX_PER_PAGE))


# --- tasks ---------------------------------------------------------------------------------


class TaskSchema(Schema):
    id = fields.Integer()
    kind = fields.String()
    status = fields.String(
        metadata={
            "description": "queued | scheduled | running | waiting | done | failed | "
            "needs-authorization | cancelled"
        }
    )
    patient_ref = fields.String(allow_none=True)
    due_at = fields.AwareDateTime(allow_none=True)
    assignee = fields.String(allow_none=True)
    attempts = fields.Integer()
    max_attempts = fields.Integer()
    last_error = fields.String(allow_none=True)
    payload = fields.Dict()
    created_at = fields.AwareDateTime()
    updated_at = fields.AwareDateTime()
    finished_at = fields.AwareDateTime(allow_none=True)


class TaskListSchema(Schema):
    items = fields.List(fields.Nested(TaskSchema), required=True)


class TaskListQuerySchema(StrictSchema):
    kind = fields.String(validate=validate.OneOf(TASK_KINDS))
    patient = fields.String(
        validate=_reference("Patient"),
        metadata={"description": "Only for launches without patient context."},
    )


class FollowUpCreateSchema(StrictSchema):
    kind = fields.String(required=True, validate=validate.Equal("follow-up"))
    reason = _text(validate.Length(min=1, max=1000), required=True)
    due_at = fields.AwareDateTime(
        metadata={"description": "Exact due time (aware); a time already past is 422."}
    )
    due = _text(
        validate.Length(min=1, max=100),
        metadata={
            "description": "A phrase read in the viewer's time zone, e.g. "
            "“in 2 days, morning”, “tomorrow at 3pm”. Default: tomorrow morning. A phrase "
            "CareDesk cannot read is 422 with the reason under `due`."
        },
    )
    assignee = _text(validate.Length(min=1, max=300))
    channel = fields.String(load_default="phone", validate=validate.OneOf(FOLLOW_UP_CHANNELS))
    patient = fields.String(
        validate=_reference("Patient"),
        metadata={"description": "Only for launches without patient context."},
    )

    json_rules: ClassVar[dict[str, Any]] = {
        "not": {"required": ["due_at", "due"], "description": "Not both `due_at` and `due`."}
    }

    @validates_schema
    def _one_due(self, data: dict[str, Any], **_: Any) -> None:
        if "due_at" in data and "due" in data:
            raise ValidationError("Give `due_at` or `due`, not both.", "due")


class ReferralCreateSchema(StrictSchema):
    kind = fields.String(required=True, validate=validate.Equal("referral"))
    reason = _text(validate.Length(min=1, max=1000), required=True)
    specialty = _text(validate.Length(min=1, max=200))
    organization = fields.String(validate=_reference("Organization"))
    practitioner = fields.String(validate=_reference("Practitioner", "PractitionerRole"))
    urgency = fields.String(load_default="routine", validate=validate.OneOf(REFERRAL_URGENCIES))
    appointment = fields.String(
        validate=_reference("Appointment"),
        metadata={"description": "The appointment the referral came out of."},
    )
    assignee = _text(validate.Length(min=1, max=300))
    patient = fields.String(
        validate=_reference("Patient"),
        metadata={"description": "Only for launches without patient context."},
    )

    json_rules: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {"required": ["specialty"]},
            {"required": ["organization"]},
            {"required": ["practitioner"]},
        ]
    }

    @validates_schema
    def _has_target(self, data: dict[str, Any], **_: Any) -> None:
        if not any(data.get(k) for k in ("specialty", "organization", "practitioner")):
            raise ValidationError(
                "Say where to refer: a specialty, an organization or a practitioner.",
                "specialty",
            )


TASK_CREATE_SCHEMAS: dict[str, type[StrictSchema]] = {
    "follow-up": FollowUpCreateSchema,
    "referral": ReferralCreateSchema,
}


def load_task_create(data: Any) -> dict[str, Any]:
    """Pick the schema by ``kind`` (a tagged union), then validate with it."""
    if not isinstance(data, dict):
        raise ValidationError("Expected a JSON object.", "_schema")
    kind = data.get("kind")
    schema = TASK_CREATE_SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise ValidationError(f"Must be one of: {', '.join(TASK_KINDS)}.", "kind")
    loaded: dict[str, Any] = schema().load(data)
    return loaded


class TaskCreateSchema(Schema):
    """A follow-up or a referral, told apart by ``kind``: loads with ``load_task_create``
    and is documented as the ``oneOf`` of the two (``json_rules``)."""

    class Meta:
        unknown = INCLUDE  # the branches of the oneOf refuse unknown fields

    json_rules: ClassVar[dict[str, Any]] = {
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
    }

    def load(  # type: ignore[override]
        self,
        data: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        many: bool | None = None,
        partial: bool | Sequence[str] | None = None,
        unknown: UnknownOption | None = None,
    ) -> dict[str, Any]:
        return load_task_create(data)


# --- context and board (built by plugin.context and plugin.board_data; free-form) ------


class ContextSchema(Schema):
    """The patient's help-desk context (``fhir_mappers.context.HelpdeskContext``)."""

    class Meta:
        unknown = INCLUDE  # free-form: plugin.context owns the shape; these are its keys

    patient_id = fields.String(allow_none=True)
    generated_at = fields.AwareDateTime()
    viewer_tz = fields.String()
    contact = fields.Dict(allow_none=True)
    visits = fields.List(fields.Dict())
    insurance = fields.Dict()
    tickets = fields.List(fields.Dict())
    tasks = fields.List(fields.Dict())
    surveys = fields.List(fields.Dict())
    flags = fields.List(fields.String())
    unavailable = fields.Dict(metadata={"description": "part -> why it could not be fetched"})
    warnings = fields.List(fields.Dict())


class BoardSchema(Schema):
    """The day board (``plugin.board_data.fetch_board``)."""

    class Meta:
        unknown = INCLUDE

    date = fields.Date()
    location = fields.String(allow_none=True)
    practitioner = fields.String(allow_none=True)
    sort = fields.String()
    rows = fields.List(fields.Dict())
    unavailable = fields.Dict()


class ContextQuerySchema(StrictSchema):
    refresh = fields.Boolean(
        load_default=False,
        metadata={"description": "Read the EHR again instead of the 30-second cache."},
    )


class BoardQuerySchema(StrictSchema):
    date = fields.Date(metadata={"description": "YYYY-MM-DD; default: today (viewer's zone)."})
    location = _text(validate.Length(min=1, max=300))
    practitioner = _text(validate.Length(min=1, max=300))
    sort = fields.String(validate=validate.OneOf(("time", "flags")))
