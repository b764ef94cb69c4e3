"""Logging with a request id (or job id) on every line.

The id lives in a context variable so it follows the request into worker threads that
copy the context, and jobs set it to their job id. Log lines carry ids and FHIR resource
ids only: never names, phone numbers, tokens or codes; ``helpdesk.redact`` is the net
under that rule for lines that quote a URL or a payload (ours and the libraries').
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from typing import Any

from flask import Flask, Response, g, request

from helpdesk import redact
from helpdesk.logctx import current_request_id, request_id_var

# An incoming X-Request-Id is reused only when it looks like an id, so a caller cannot
# inject text (or PHI) into our log lines through the header.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


__all__ = ["configure", "current_request_id", "new_request_id", "request_id_var"]

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


def configure(app: Flask) -> None:
    # Every record of the process, ours and the libraries', is redacted as it is made.
    redact.install()
    level = str(app.config.get("LOG_LEVEL", "INFO")).upper()
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if app.config.get("LOG_FORMAT") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    for name in ("caredesk", app.logger.name):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        # Replace our own handler on re-configuration (tests build many apps).
        logger.handlers = [h for h in logger.handlers if not getattr(h, "_caredesk", False)]
        handler._caredesk = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = True if app.config.get("TESTING") else logger.propagate

    app.before_request(_begin_request)
    app.after_request(_tag_response)


def new_request_id() -> str:
    return secrets.token_hex(8)


def _begin_request() -> None:
    incoming = request.headers.get("X-Request-Id", "")
    rid = incoming if _SAFE_ID.match(incoming) else new_request_id()
    g.request_id = rid
    g.request_id_token = request_id_var.set(rid)


def _tag_response(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", request_id_var.get())
    return response
