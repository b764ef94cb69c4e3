"""The id on every log line: a request id in the web app, ``job:<id>`` in a worker.

It lives in a context variable so it follows the request into worker threads that copy
the context; the store records it on audit rows, so an audit row leads to its log lines.
"""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("caredesk_request_id", default="-")


def current_request_id() -> str:
    return request_id_var.get()
