"""The app factory: configuration, errors with request ids, security headers, health."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from helpdesk.errors import ConfigError
from plugin import create_app
from sandbox.testing import running_sandbox
from tests.conftest import dispose

ROOT = Path(__file__).resolve().parents[2]


def _run(
    env: dict[str, str], argv: list[str], timeout: int, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """A command as a user runs it (from the repository unless ``cwd``), with exactly
    ``env``."""
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_production_without_secret_key_refuses_to_start(monkeypatch) -> None:
    monkeypatch.delenv("CAREDESK_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="CAREDESK_SECRET_KEY"):
        create_app({"ENV": "production"})


def test_wsgi_without_secret_key_exits_nonzero_naming_the_variable(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    env["CAREDESK_ENV"] = "production"
    proc = _run(env, [sys.executable, "-c", "import wsgi"], timeout=60)
    assert proc.returncode != 0
    assert "CAREDESK_SECRET_KEY" in proc.stderr


def test_cli_db_upgrade_in_production_without_secret_names_the_variable(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    env["CAREDESK_ENV"] = "production"
    proc = _run(env, [sys.executable, "-m", "plugin.cli", "db", "upgrade"], 60, cwd=tmp_path)
    assert proc.returncode != 0
    assert "CAREDESK_SECRET_KEY" in proc.stderr + proc.stdout


def test_cli_db_upgrade_on_a_database_not_created_yet_says_so_in_one_line(
    tmp_path, redis_url
) -> None:
    """docs/integration.md's first command on a fresh PostgreSQL without the database."""
    from tests.conftest import PG_BASE

    missing = PG_BASE.rsplit("/", 1)[0] + "/caredesk_not_created_" + secrets.token_hex(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    env.update(
        CAREDESK_ENV="production",
        CAREDESK_SECRET_KEY="k" * 40,
        CAREDESK_DATABASE_URL=missing,
        CAREDESK_REDIS_URL=redis_url,
    )
    proc = _run(env, [sys.executable, "-m", "plugin.cli", "db", "upgrade"], 60, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "cannot open the store at CAREDESK_DATABASE_URL" in proc.stderr
    assert "does not exist" in proc.stderr


def test_environment_variables_configure_the_app(monkeypatch, pg_url, redis_url) -> None:
    monkeypatch.setenv("CAREDESK_SECRET_KEY", "k" * 40)
    monkeypatch.setenv("CAREDESK_DATABASE_URL", pg_url)
    monkeypatch.setenv("CAREDESK_REDIS_URL", redis_url)
    monkeypatch.setenv("CAREDESK_SMTP_STARTTLS", "true")
    monkeypatch.setenv("CAREDESK_LOG_LEVEL", "DEBUG")
    app = create_app()
    assert app.config["SECRET_KEY"] == "k" * 40
    assert app.config["DATABASE_URL"] == pg_url
    assert app.config["SMTP_STARTTLS"] is True
    assert app.config["ENV"] == "production"
    dispose(app)


PRODUCTION = {"ENV": "production", "SECRET_KEY": "p" * 48}


@pytest.mark.parametrize(
    ("missing", "variable"),
    [("REDIS_URL", "CAREDESK_REDIS_URL"), ("DATABASE_URL", "CAREDESK_DATABASE_URL")],
)
def test_production_without_a_service_url_refuses_to_start_naming_it(
    monkeypatch, pg_url, redis_url, missing, variable
) -> None:
    for name in ("CAREDESK_REDIS_URL", "CAREDESK_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    config = PRODUCTION | {"DATABASE_URL": pg_url, "REDIS_URL": redis_url}
    config[missing] = None
    with pytest.raises(ConfigError, match=variable):
        create_app(config)


def test_production_refuses_sqlite_and_a_short_secret(pg_url, redis_url) -> None:
    with pytest.raises(ConfigError, match="CAREDESK_DATABASE_URL names SQLite"):
        create_app(PRODUCTION | {"DATABASE_URL": "sqlite:///x.db", "REDIS_URL": redis_url})
    with pytest.raises(ConfigError, match="CAREDESK_SECRET_KEY is too short"):
        create_app({"ENV": "production", "SECRET_KEY": "x", "DATABASE_URL": pg_url})


def test_production_ignores_flask_debug(monkeypatch, pg_url, redis_url) -> None:
    monkeypatch.setenv("FLASK_DEBUG", "1")
    app = create_app(PRODUCTION | {"DATABASE_URL": pg_url, "REDIS_URL": redis_url})
    assert app.debug is False
    dispose(app)


def test_wsgi_in_production_without_redis_exits_naming_the_variable(pg_url) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    env.update(CAREDESK_ENV="production", CAREDESK_SECRET_KEY="s" * 48)
    env["CAREDESK_DATABASE_URL"] = pg_url
    proc = _run(env, [sys.executable, "-c", "import wsgi"], timeout=60)
    assert proc.returncode != 0
    assert "CAREDESK_REDIS_URL" in proc.stderr


def test_one_shot_command_without_redis_starts_no_worker_and_prints_only_its_output(
    sqlite_url,
) -> None:
    """`caredesk ehr list --json`-style commands run with no Redis configured (outside the
    demo), never start a worker or a scheduler, and print nothing but their output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    env.update(
        CAREDESK_ENV="development", CAREDESK_SECRET_KEY="s" * 48, CAREDESK_DATABASE_URL=sqlite_url
    )
    upgrade = _run(env, [sys.executable, "-m", "plugin.cli", "db", "upgrade"], timeout=60)
    assert upgrade.returncode == 0, upgrade.stderr
    proc = _run(env, [sys.executable, "-m", "plugin.cli", "jobs", "status", "--json"], timeout=60)
    # The store's side is reported; RQ's side says why it is missing. Exactly JSON.
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert "CAREDESK_REDIS_URL" in status["rq"]["error"]
    assert "scheduler" not in proc.stderr.lower() and "worker" not in proc.stderr.lower()


def test_ehr_check_json_without_redis_is_exactly_json(sqlite_url) -> None:
    """The guide's `caredesk ehr check --json <ehr> | python -m json.tool`, with no Redis
    configured: nothing but the report reaches stdout (no worker, no scheduler lines)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    env.update(
        CAREDESK_ENV="development", CAREDESK_SECRET_KEY="s" * 48, CAREDESK_DATABASE_URL=sqlite_url
    )
    upgrade = _run(env, [sys.executable, "-m", "plugin.cli", "db", "upgrade"], timeout=60)
    assert upgrade.returncode == 0, upgrade.stderr
    with running_sandbox() as sb:
        proc = _run(
            env,
            [
                "bash",
                "-c",
                f"{sys.executable} -m plugin.cli ehr check --json {sb.fhir_base}"
                f" | {sys.executable} -m json.tool",
            ],
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["lines"] and "features" in report
    assert "scheduler" not in proc.stderr.lower() and "worker" not in proc.stderr.lower()


def test_unknown_environment_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="CAREDESK_ENV"):
        create_app({"ENV": "staging-ish"})


@pytest.fixture
def failing_app(app):  # type: ignore[no-untyped-def]
    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret internal detail")

    @app.get("/api/boom")
    def api_boom() -> str:
        raise RuntimeError("secret internal detail")

    return app


def test_json_request_that_raises_gets_the_json_error_shape(failing_app, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="caredesk")
    response = failing_app.test_client().get("/api/boom")
    assert response.status_code == 500
    error = response.get_json()["error"]
    assert set(error) == {"code", "message", "request_id"}
    assert error["code"] == "internal_error"
    assert "secret internal detail" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    assert response.headers["X-Request-Id"] == error["request_id"]
    logged = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert logged and logged[0].request_id == error["request_id"]


def test_browser_request_that_raises_gets_the_html_error_page(failing_app, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="caredesk")
    response = failing_app.test_client().get("/boom", headers={"Accept": "text/html"})
    assert response.status_code == 500
    assert response.mimetype == "text/html"
    body = response.get_data(as_text=True)
    rid = response.headers["X-Request-Id"]
    assert rid in body
    assert "Traceback" not in body and "secret internal detail" not in body
    assert any(getattr(r, "request_id", None) == rid for r in caplog.records)


def test_unknown_page_is_a_readable_404(client) -> None:
    response = client.get("/nope", headers={"Accept": "text/html"})
    assert response.status_code == 404
    assert "Not found" in response.get_data(as_text=True)
    assert client.get("/api/nope").get_json()["error"]["code"] == "not_found"


def test_incoming_request_id_is_kept_only_when_it_looks_like_an_id(client) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-Id": "abc12345-xyz"}).headers["X-Request-Id"]
        == "abc12345-xyz"
    )
    injected = client.get("/healthz", headers={"X-Request-Id": "John Smith 555-1234"})
    assert injected.headers["X-Request-Id"] != "John Smith 555-1234"


def test_security_headers(client) -> None:
    response = client.get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in csp
    assert "script-src 'self'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Strict-Transport-Security" not in response.headers
    secure = client.get("/", base_url="https://caredesk.example")
    assert "max-age=" in secure.headers["Strict-Transport-Security"]


def test_csp_frame_ancestors_lists_registered_ehr_origins(app, client) -> None:
    from helpdesk import registry
    from helpdesk.crypto import get_vault
    from helpdesk.db import get_store

    with app.app_context(), get_store(app).session() as session:
        registry.upsert(
            session,
            get_vault(app),
            slug="e",
            iss="https://ehr.example/fhir",
            client_id="c",
            frame_origins=["https://ehr.example", "https://evil; script-src *"],
        )
    app.extensions["caredesk.frame_origins"].invalidate()
    csp = client.get("/").headers["Content-Security-Policy"]
    assert "frame-ancestors 'self' https://ehr.example" in csp
    assert "evil" not in csp


def test_healthz_reports_store_and_queue_backends(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["store"]["backend"] == "sqlite" and body["store"]["ok"] is True
    assert body["store"]["schema"]["says"] == "at head"
    assert body["queue"]["backend"] == "redis" and body["queue"]["ok"] is True


def test_healthz_is_503_when_the_queue_is_down(sqlite_url) -> None:
    app = create_app(
        {"ENV": "test", "DATABASE_URL": sqlite_url, "REDIS_URL": "redis://127.0.0.1:1/0"}
    )
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["queue"]["ok"] is False
    app.extensions["caredesk.db"].engine.dispose()


def _unmigrated_app(tmp_path: Path):  # type: ignore[no-untyped-def]
    return create_app(
        {
            "ENV": "test",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'never-migrated.db'}",
            "REDIS_URL": "",
        }
    )


def test_a_store_never_migrated_is_503_on_healthz_and_says_what_to_run(tmp_path) -> None:
    """A store that answers but has no CareDesk tables failed every request but /healthz,
    which said "ok": a deploy that forgot `caredesk db upgrade` looked healthy."""
    app = _unmigrated_app(tmp_path)
    try:
        response = app.test_client().get("/healthz")
        assert response.status_code == 503
        store = response.get_json()["store"]
        assert store["ok"] is False and store["schema"]["revision"] is None
        assert "caredesk db upgrade" in store["schema"]["says"]
    finally:
        dispose(app)


@pytest.mark.parametrize(
    ("path", "html"),
    [
        ("/launch?iss=https://ehr.example/fhir&launch=abc", True),
        ("/api/l/abc/context", False),
        ("/s/some-survey-link-token", True),
    ],
)
def test_a_request_on_a_store_never_migrated_is_503_saying_so_not_500(
    tmp_path, path: str, html: bool, caplog
) -> None:
    app = _unmigrated_app(tmp_path)
    try:
        with caplog.at_level(logging.ERROR, logger="caredesk.errors"):
            response = app.test_client().get(path)
        assert response.status_code == 503
        if html:
            assert "needs an upgrade" in response.get_data(as_text=True)
        else:
            assert response.get_json()["error"]["code"] == "store_not_migrated"
        assert any("store not ready (not_migrated)" in r.getMessage() for r in caplog.records)
    finally:
        dispose(app)


@pytest.mark.parametrize(
    ("recorded", "known", "ok", "says"),
    [
        ("0001", ("0001", {"0001"}), True, "at head"),
        ("0001", ("0002", {"0001", "0002"}), False, "behind"),
        ("0003", ("0002", {"0001", "0002"}), True, "newer than this code"),
    ],
)
def test_healthz_says_whether_the_schema_is_this_codes(
    app, monkeypatch, recorded: str, known: tuple[str, set[str]], ok: bool, says: str
) -> None:
    """Behind: 503 (this code needs a migration). Newer: still 200, so the old processes
    of a rolling deploy keep serving once the new code has migrated the store."""
    from sqlalchemy import text

    from helpdesk import migrate
    from helpdesk.db import get_store

    with get_store(app).engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": recorded})
    monkeypatch.setattr(migrate, "known_revisions", lambda: (known[0], frozenset(known[1])))
    response = app.test_client().get("/healthz")
    assert response.status_code == (200 if ok else 503)
    schema = response.get_json()["store"]["schema"]
    assert schema["ok"] is ok and schema["says"].startswith(says)
