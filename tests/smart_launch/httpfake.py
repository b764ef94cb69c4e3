"""A tiny real HTTP server on 127.0.0.1 for protocol corners the sandbox has no knob for
(an off-base paging link, a forged id_token, odd cache headers)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests

from smart_launch.config import Registration
from smart_launch.discovery import SmartConfiguration
from smart_launch.launch import exchange_code
from smart_launch.tokens import TokenSet


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode()))

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Response:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out on purpose leaves a broken pipe behind; not a failure.
        pass


class FakeServer:
    """Routes by (method, path); records every request. Use as a context manager."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                req = Request(
                    self.command,
                    parts.path,
                    dict(parse_qsl(parts.query)),
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                )
                with fake.lock:
                    fake.requests.append(req)
                handler = fake.routes.get((self.command, parts.path))
                resp = handler(req) if handler else Response(404, {"error": "not_found"})
                body = resp.body
                payload = (
                    body
                    if isinstance(body, bytes)
                    else (b"" if body is None else json.dumps(body).encode())
                )
                self.send_response(resp.status)
                headers = {"Content-Type": "application/json", **resp.headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def route(self, method: str, path: str, handler: Handler | Response) -> None:
        self.routes[(method, path)] = handler if callable(handler) else (lambda _r: handler)

    def hits(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def exchange_any_code(
    reg: Registration, conf: SmartConfiguration, http: requests.Session
) -> TokenSet:
    """``exchange_code`` with a made-up code and verifier, as a test against a fake token
    endpoint sends them (what the endpoint answers is the test's)."""
    return exchange_code(
        reg, conf, http=http, code="c", code_verifier="v" * 43, scope_requested="launch openid"
    )
