"""Errors a job handler raises to tell ``run_task`` what to do with the task."""

from __future__ import annotations


class TaskError(Exception):
    """The task cannot succeed as it stands: fail it, keep the message on the row."""


class TemporaryTaskError(TaskError):
    """Worth another attempt later (a mail server down, a provider's 5xx)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def split_reference(reference: str) -> tuple[str, str]:
    """``(type, id)`` of a stored ``Type/id`` reference; TaskError when it is not one."""
    from fhir_mappers.fhirutil import parse_reference

    try:
        ref = parse_reference(reference)
    except ValueError as exc:
        raise TaskError(f"not a FHIR reference: {reference!r}") from exc
    if ref.type is None:
        raise TaskError(f"not a resolvable FHIR reference: {reference!r}")
    return ref.type, ref.id
