"""`python -m sandbox`: run the sandbox EHR on its own (what `caredesk sandbox` runs)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server

from sandbox.app import create_app
from sandbox.clients import client_from_json, load_clients_file
from sandbox.options import FEATURES, PROFILES, REFRESH_ID_TOKEN_MODES, SandboxOptions

DESCRIPTION = """\
A local SMART on FHIR R4 EHR for development, demos, tests and benchmarks.

  FHIR base (the iss)   http://HOST:PORT/fhir
  SMART configuration   http://HOST:PORT/fhir/.well-known/smart-configuration
  OAuth endpoints       http://HOST:PORT/auth/{authorize,token,jwks,introspect}
  EHR page              http://HOST:PORT/ehr
  Admin API             http://HOST:PORT/admin/{knobs,clients,launch,requests,stats,
                        clock,expire-tokens,generate-appointments,reset}

The admin API has no authentication: keep the sandbox on 127.0.0.1.
"""

EPILOG = (
    """\
profiles:
"""
    + "\n".join(
        textwrap.fill(
            p.description, width=88, initial_indent=f"  {name:11}", subsequent_indent=" " * 13
        )
        for name, p in PROFILES.items()
    )
    + """

examples:
  python -m sandbox --port 8090 --clients clients.json
  python -m sandbox --port 8090 --profile epic --latency-ms 100 --disable batch
  python -m sandbox --port 8090 --client-id caredesk --client-type public \\
      --redirect-uri http://127.0.0.1:5000/callback --launch-url http://127.0.0.1:5000/launch
"""
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=8090, help="TCP port (0: pick a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="smart")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep writes, runtime clients, grants and the signing key here across restarts",
    )
    parser.add_argument("--latency-ms", type=float, default=0, help="added latency per request")
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="share (0..1) of FHIR requests given 503"
    )
    parser.add_argument(
        "--token-lifetime",
        type=int,
        dest="token_lifetime_s",
        help="access token lifetime in seconds (default: 3600; oracle profile: 600)",
    )
    parser.add_argument(
        "--disable",
        action="append",
        default=[],
        choices=FEATURES,
        metavar="FEATURE",
        help=f"switch a feature off (repeatable): {', '.join(FEATURES)}",
    )
    behaviour = parser.add_argument_group(
        "real-server behaviours (knobs; unset: the profile's default; all can change at "
        "runtime with POST /admin/knobs)"
    )
    behaviour.add_argument(
        "--refresh-token-lifetime",
        type=int,
        dest="refresh_token_lifetime_s",
        help="refresh token lifetime in seconds (default: until used or revoked)",
    )
    behaviour.add_argument(
        "--rotate-refresh",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a new refresh token on every refresh, the old one spent (default: on); "
        "--no-rotate-refresh keeps the presented one valid and returns none",
    )
    behaviour.add_argument(
        "--refresh-id-token",
        choices=REFRESH_ID_TOKEN_MODES,
        help="id_token on refresh: as at launch, without aud, or none (default: normal)",
    )
    behaviour.add_argument(
        "--iss-trailing-slash",
        action="store_const",
        const=True,
        help="the EHR's launch link sends iss with a trailing slash",
    )
    behaviour.add_argument(
        "--fhir-user",
        choices=["relative", "absolute"],
        help="fhirUser as Practitioner/<id> or as an absolute URL (default: relative)",
    )
    behaviour.add_argument(
        "--omit-display",
        action="store_const",
        const=True,
        help="strip display from every Reference served",
    )
    behaviour.add_argument(
        "--no-canonical-version-search",
        dest="canonical_version_search",
        action="store_const",
        const=False,
        help="take url=X|1.0.0 as a whole url (matches nothing); url=X&version=1.0.0 works",
    )
    behaviour.add_argument(
        "--consent-drop-scope",
        action="append",
        metavar="SCOPE",
        help="a scope the user unticks at consent (repeatable)",
    )
    parser.add_argument("--timezone", default="America/Chicago", help="the clinic's time zone")
    parser.add_argument(
        "--extra-appointments",
        type=int,
        default=0,
        help="add N generated booked appointments today (load tests)",
    )
    parser.add_argument(
        "--clients", type=Path, help="client registrations: a JSON list or a TOML [[clients]] file"
    )
    reg = parser.add_argument_group("one client from flags")
    reg.add_argument("--client-id")
    reg.add_argument(
        "--client-type",
        choices=["public", "confidential-symmetric", "confidential-asymmetric"],
        default="public",
    )
    reg.add_argument("--client-secret", help="for confidential-symmetric clients")
    reg.add_argument("--jwks-uri", help="for confidential-asymmetric clients")
    reg.add_argument("--jwks-file", type=Path, help="inline JWKS (JSON file) for asymmetric")
    reg.add_argument("--redirect-uri", action="append", default=[], help="repeatable")
    reg.add_argument("--launch-url", help="where the EHR page launches the app")
    reg.add_argument("--scopes", help="space-separated allowed scopes (default: any)")
    reg.add_argument("--backend", action="store_true", help="may use client_credentials")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the process that started this one ends (even by SIGKILL), so a "
        "wrapper that dies leaves no sandbox listening",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> SandboxOptions:
    clients: list[dict[str, Any]] = []
    if args.clients:
        clients.extend(load_clients_file(args.clients))
    if args.client_id:
        data: dict[str, Any] = {
            "client_id": args.client_id,
            "type": args.client_type,
            "redirect_uris": args.redirect_uri,
            "backend": args.backend,
        }
        if args.client_secret:
            data["client_secret"] = args.client_secret
        if args.jwks_uri:
            data["jwks_uri"] = args.jwks_uri
        if args.jwks_file:
            import json

            data["jwks"] = json.loads(args.jwks_file.read_text(encoding="utf-8"))
        if args.launch_url:
            data["launch_url"] = args.launch_url
        if args.scopes:
            data["scopes"] = args.scopes
        clients.append(data)
    for data in clients:
        client_from_json(data)  # fail at start-up, with the message, on a bad registration
    return SandboxOptions(
        knobs=knobs_from_args(args),
        profile=args.profile,
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        latency_ms=args.latency_ms,
        clients=clients,
        token_lifetime_s=args.token_lifetime_s,
        error_rate=args.error_rate,
        disabled=args.disable,
        timezone=args.timezone,
        extra_appointments=args.extra_appointments,
    )


def knobs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The knobs given on the command line (absent ones keep the profile's default)."""
    knobs: dict[str, Any] = {
        name: getattr(args, name)
        for name in (
            "refresh_token_lifetime_s",
            "rotate_refresh",
            "refresh_id_token",
            "iss_trailing_slash",
            "omit_display",
            "canonical_version_search",
        )
        if getattr(args, name) is not None
    }
    if args.fhir_user is not None:
        knobs["fhir_user_relative"] = args.fhir_user == "relative"
    if args.consent_drop_scope:
        knobs["consent_drop_scopes"] = list(args.consent_drop_scope)
    return knobs


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    try:
        options = options_from_args(args)
        app = create_app(options)
    except (ValueError, OSError) as exc:
        print(f"sandbox: {exc}", file=sys.stderr)  # noqa: T201 - CLI error message
        return 2
    # werkzeug would set its logger to INFO and print every request; it follows
    # --log-level instead, and the access lines themselves are DEBUG.
    logging.getLogger("werkzeug").setLevel(args.log_level.upper())
    server = make_server(
        options.host, options.port, app, threaded=True, request_handler=_DebugAccessLog
    )
    port = server.server_port
    # SIGTERM (what a supervisor or `kill` sends) ends the process like Ctrl-C: the
    # listening socket is closed on the way out, request threads are daemons.
    signal.signal(signal.SIGTERM, _interrupt)
    # SIGINT too, explicitly: a process started in the background of a non-interactive
    # shell (or by a parent that ignores SIGINT, as pytest-xdist's workers do) inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.exit_with_parent:
        _watch_parent(os.getppid())
    # One line on stdout that a parent process can wait for.
    print(f"sandbox listening on http://{options.host}:{port}/fhir", flush=True)  # noqa: T201
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logging.getLogger(__name__).info("sandbox: stopping")
    finally:
        server.server_close()
    return 0


class _DebugAccessLog(WSGIRequestHandler):
    """One access line per request, at DEBUG (--log-level DEBUG shows them)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.log("debug", '"%s" %s %s', self.requestline, code, size)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _watch_parent(parent: int) -> None:
    """Once the parent is gone (this process is re-parented), stop as on SIGTERM."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
