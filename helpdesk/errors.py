"""Errors a user can cause, raised by the services and turned into a response at the web
edge (``plugin.errors``): one JSON shape or a sidebar-sized page, never a traceback."""

from __future__ import annotations


class ConfigError(RuntimeError):
    """The configuration cannot run; the message names the variable to set."""


class AppError(Exception):
    """An error a user can cause, with a message safe to show them."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class NotFound(AppError):
    status = 404
    code = "not_found"


class Forbidden(AppError):
    status = 403
    code = "forbidden"
