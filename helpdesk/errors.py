"""Errors a user can cause, raised by the services and turned into a response at the web
edge (``plugin.errors``): one JSON shape or a sidebar-sized page, never a traceback."""

from __future__ import annotations

from typing import Any


class ConfigError(RuntimeError):
    """The configuration cannot run; the message names the variable to set."""


class AppError(Exception):
    """An error a user can cause, with a message safe to show them.

    A kind of error is its HTTP status and its code, given where the class is named:
    ``class NotFound(AppError, status=404, code="not_found")``; a subclass keeps what it
    does not give."""

    status = 400
    code = "bad_request"

    def __init_subclass__(
        cls, *, status: int | None = None, code: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if code is not None:
            cls.code = code

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class NotFound(AppError, status=404, code="not_found"):
    """The row does not exist, or the caller may not see it: the same answer, so ids
    cannot be probed."""


class Forbidden(AppError, status=403, code="forbidden"):
    """The request names something the caller may not act on."""
