"""Start a sandbox for a test or a benchmark and talk to its admin API.

    with running_sandbox(clients=[{...}], latency_ms=50) as sb:
        sb.launch("caredesk", patient="pat-001")["url"]
        sb.set_knobs(fail_next=[{"status": 503}])

`in_process=True` runs a threaded werkzeug server on 127.0.0.1:<free port> in a
background thread; `in_process=False` runs `python -m sandbox` as a subprocess.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from joserfc import jwk
from werkzeug.serving import WSGIRequestHandler, make_server

from sandbox.app import create_app
from sandbox.options import SandboxOptions

HTTP_TIMEOUT = 30

# Making an RSA-2048 key is 0.05-0.3 s of CPU, about half of starting an in-process
# sandbox, and a test run starts ~430 of them. Each takes the next of KEY_POOL keys made
# once per process, so sandboxes that run side by side (two EHRs in a test) still sign
# with different keys.
KEY_POOL = 4
_keys: list[jwk.RSAKey] = []
_keys_lock = threading.Lock()
_key_turn = itertools.count()


def _pooled_signing_key() -> jwk.RSAKey:
    turn = next(_key_turn) % KEY_POOL
    with _keys_lock:
        while len(_keys) <= turn:
            _keys.append(jwk.RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(8)}))
        return _keys[turn]


class _QuietHandler(WSGIRequestHandler):
    """No access log lines in test output (the admin request log has them)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


@dataclass
class SandboxHandle:
    base_url: str
    port: int
    fhir_base: str = field(init=False)

    def __post_init__(self) -> None:
        self.fhir_base = f"{self.base_url}/fhir"

    # -- admin API

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        resp = requests.request(method, self.base_url + path, json=body, timeout=HTTP_TIMEOUT)
        if resp.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {resp.status_code} {resp.text}")
        return resp.json() if resp.content else None

    def register_client(self, client: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/admin/clients", dict(client))
        return result

    def set_knobs(self, **knobs: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/admin/knobs", knobs)
        return result

    def get_knobs(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/admin/knobs")
        return result

    def launch(
        self,
        client_id: str,
        patient: str | None = None,
        encounter: str | None = None,
        user: str | None = None,
        intent: str | None = None,
    ) -> dict[str, Any]:
        body = {"client_id": client_id, "patient": patient, "encounter": encounter, "user": user}
        if intent is not None:
            body["intent"] = intent
        result: dict[str, Any] = self._call("POST", "/admin/launch", body)
        return result

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/admin/requests")
        return result

    def clear_requests(self) -> None:
        self._call("DELETE", "/admin/requests")

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/admin/stats")
        return result

    def reset(self) -> None:
        self._call("POST", "/admin/reset")

    def put_resource(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        """Store a resource as the EHR's users would (no token); returns it with id/meta."""
        result: dict[str, Any] = self._call("POST", "/admin/resources", dict(resource))
        return result

    def resource(self, rtype: str, rid: str) -> dict[str, Any]:
        """A resource as stored in the sandbox, read without a token."""
        result: dict[str, Any] = self._call("GET", f"/admin/resources/{rtype}/{rid}")
        return result

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        """Move the sandbox's clock forward: what it issued is `seconds` older."""
        result: dict[str, Any] = self._call("POST", "/admin/clock", {"advance_seconds": seconds})
        return result

    def reset_clock(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/admin/clock", {"reset": True})
        return result

    def clock(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/admin/clock")
        return result

    def expire_tokens(self) -> int:
        """End every live access token now (refresh tokens stay); returns how many."""
        return int(self._call("POST", "/admin/expire-tokens")["expired"])

    def generate_appointments(self, date: str, count: int, location: str | None = None) -> int:
        body: dict[str, Any] = {"date": date, "count": count}
        if location is not None:
            body["location"] = location
        return int(self._call("POST", "/admin/generate-appointments", body)["added"])

    # -- driving the browser side of a launch without a browser

    def approve(
        self,
        authorize_url: str,
        *,
        user: str | None = None,
        patient: str | None = None,
        untick: Sequence[str] = (),
    ) -> str:
        """Follow an authorize URL like a user would; return the redirect (callback) URL.

        EHR launches redirect at once. Standalone launches show the login/patient picker,
        which is submitted with `user` (a Practitioner id; default the first user),
        `patient` (default the first patient offered) and the scope boxes as shown, less
        the ones in `untick`.
        """
        resp = requests.get(authorize_url, allow_redirects=False, timeout=HTTP_TIMEOUT)
        if resp.status_code in (302, 303):
            return str(resp.headers["Location"])
        if resp.status_code != 200:
            raise RuntimeError(f"authorize answered {resp.status_code}: {resp.text[:200]}")
        form = _parse_form(resp.text)
        data: dict[str, Any] = {"pending": form["pending"], "decision": "approve"}
        data["user"] = user or form["user"][0]
        if form["patient"]:
            data["patient"] = patient or form["patient"][0]
        data["consent"] = "1"
        data["scope"] = [s for s in form["scope"] if s not in untick]
        post = requests.post(
            f"{self.base_url}/auth/authorize/decide",
            data=data,
            allow_redirects=False,
            timeout=HTTP_TIMEOUT,
        )
        if post.status_code not in (302, 303):
            raise RuntimeError(f"approve answered {post.status_code}: {post.text[:200]}")
        return str(post.headers["Location"])

    def login(
        self,
        client_id: str,
        redirect_uri: str,
        scope: str,
        *,
        patient: str | None = None,
        user: str | None = None,
        launch: bool = False,
        client_secret: str | None = None,
    ) -> dict[str, Any]:
        """A whole authorization-code flow with PKCE; returns the token response.

        `launch=True` makes it an EHR launch (via /admin/launch with `patient`); otherwise
        a standalone launch through the picker.
        """
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": secrets.token_urlsafe(12),
            "aud": self.fhir_base,
            "code_challenge": challenge.decode().rstrip("="),
            "code_challenge_method": "S256",
        }
        if launch:
            user_ref = f"Practitioner/{user}" if user else None
            params["launch"] = self.launch(client_id, patient=patient, user=user_ref)["launch"]
        callback = self.approve(
            f"{self.base_url}/auth/authorize?{urlencode(params)}", user=user, patient=patient
        )
        query = parse_qs(urlsplit(callback).query)
        if "code" not in query:
            raise RuntimeError(f"authorize failed: {query}")
        auth = (client_id, client_secret) if client_secret else None
        form = {
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        if auth is None:
            form["client_id"] = client_id
        resp = requests.post(
            f"{self.base_url}/auth/token", data=form, auth=auth, timeout=HTTP_TIMEOUT
        )
        if resp.status_code != 200:
            raise RuntimeError(f"token answered {resp.status_code}: {resp.text}")
        result: dict[str, Any] = resp.json()
        return result


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, list[str]] = {"pending": [], "user": [], "patient": [], "scope": []}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("name") == "pending":
            self.fields["pending"].append(a.get("value") or "")
        elif tag == "input" and a.get("name") == "scope" and "checked" in a:
            self.fields["scope"].append(a.get("value") or "")
        elif tag == "select":
            self._select = a.get("name")
        elif tag == "option" and self._select in self.fields:
            self.fields[self._select].append(a.get("value") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def _parse_form(html: str) -> dict[str, Any]:
    parser = _FormParser()
    parser.feed(html)
    if not parser.fields["pending"]:
        raise RuntimeError("the authorize page has no sign-in form")
    return {
        "pending": parser.fields["pending"][0],
        "user": parser.fields["user"],
        "patient": parser.fields["patient"],
        "scope": parser.fields["scope"],
    }


@contextmanager
def running_sandbox(
    *,
    profile: str = "smart",
    latency_ms: float = 0,
    clients: Sequence[Mapping[str, Any]] = (),
    disabled: Sequence[str] = (),
    token_lifetime_s: int | None = None,
    in_process: bool = True,
    data_dir: Path | None = None,
    population: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    timezone: str = "America/Chicago",
    extra_appointments: int = 0,
    **knobs: Any,
) -> Iterator[SandboxHandle]:
    """A sandbox on 127.0.0.1:<free port> for the duration of the block.

    `token_lifetime_s=None` keeps the profile's default (3600 s; oracle 600 s). Other
    keyword arguments are initial knobs (any field of `sandbox.options.Knobs`, e.g.
    omit_display=True, rotate_refresh=False); they win over the profile's defaults.
    `population` replaces the fixtures (in-process only).
    """
    if in_process:
        options = SandboxOptions(
            profile=profile,
            latency_ms=latency_ms,
            clients=list(clients),
            disabled=list(disabled),
            token_lifetime_s=token_lifetime_s,
            data_dir=data_dir,
            population=population,
            timezone=timezone,
            extra_appointments=extra_appointments,
            knobs=knobs,
            signing_key=_pooled_signing_key(),
        )
        app = create_app(options)
        server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="sandbox", daemon=True
        )
        thread.start()
        try:
            yield SandboxHandle(f"http://127.0.0.1:{server.server_port}", server.server_port)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
        return
    if population is not None:
        raise ValueError("population= works in-process only")
    with tempfile.TemporaryDirectory(prefix="sandbox-") as tmp:
        cmd = [sys.executable, "-m", "sandbox", "--port", "0", "--profile", profile]
        cmd += ["--latency-ms", str(latency_ms), "--timezone", timezone]
        cmd += ["--extra-appointments", str(extra_appointments)]
        if token_lifetime_s is not None:
            cmd += ["--token-lifetime", str(token_lifetime_s)]
        for feature in disabled:
            cmd += ["--disable", feature]
        if clients:
            path = Path(tmp) / "clients.json"
            path.write_text(json.dumps(list(map(dict, clients))), encoding="utf-8")
            cmd += ["--clients", str(path)]
        if data_dir is not None:
            cmd += ["--data-dir", str(data_dir)]
        # stderr to a file: a pipe nobody reads would block a chatty server.
        err_path = Path(tmp) / "stderr.log"
        err_file = err_path.open("w", encoding="utf-8")
        proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            cmd,
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
            cwd=str(Path(__file__).resolve().parent.parent),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            port = _wait_for_port(proc, err_path)
            handle = SandboxHandle(f"http://127.0.0.1:{port}", port)
            if knobs:
                handle.set_knobs(**knobs)
            yield handle
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            err_file.close()


def _wait_for_port(proc: subprocess.Popen[str], err_path: Path, timeout: float = 30) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    result: dict[str, int] = {}

    def read() -> None:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"http://[\d.]+:(\d+)/", line)
        if match:
            result["port"] = int(match.group(1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if "port" not in result:
        proc.kill()
        proc.wait()
        err = err_path.read_text(encoding="utf-8")
        raise RuntimeError(f"python -m sandbox did not start: {err[-2000:]}")
    port = result["port"]
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=2).close()
            return port
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("python -m sandbox started but does not answer")
