"""`caredesk ehr ...`: what an integration engineer types to register and check an EHR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from helpdesk.models import EhrRegistration, SigningKey
from plugin.cli import cli
from sandbox.testing import running_sandbox
from smart_launch.features import FEATURES, scopes_for_features


@pytest.fixture
def cli_env(migrated_sqlite_url, redis_url, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CAREDESK_ENV", "test")
    monkeypatch.setenv("CAREDESK_SECRET_KEY", "s" * 48)  # one key across CLI invocations
    monkeypatch.setenv("CAREDESK_DATABASE_URL", migrated_sqlite_url)
    monkeypatch.setenv("CAREDESK_REDIS_URL", redis_url)
    runner = CliRunner()

    def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
        return runner.invoke(cli, list(args), input=input, catch_exceptions=False)

    return run


def _rows(sqlite_url: str) -> list[EhrRegistration]:
    engine = create_engine(sqlite_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            rows = list(session.query(EhrRegistration).all())
            for row in rows:
                _ = list(row.signing_keys)
            return rows
    finally:
        engine.dispose()


def test_add_list_show_and_remove(cli_env, sqlite_url, monkeypatch) -> None:
    monkeypatch.setenv("CAREDESK_CLIENT_SECRET", "very-secret-value")
    added = cli_env(
        "ehr",
        "add",
        "--iss",
        "https://ehr.example/fhir/",
        "--client-id",
        "cd",
        "--type",
        "confidential-symmetric",
        "--frame-origin",
        "https://ehr.example",
        "--slug",
        "example",
    )
    assert added.exit_code == 0, added.output
    assert "registered example" in added.output
    listed = cli_env("ehr", "list", "--json")
    [row] = json.loads(listed.output)
    assert row["iss"] == "https://ehr.example/fhir" and row["has_client_secret"] is True
    shown = cli_env("ehr", "show", "example")
    assert "very-secret-value" not in shown.output + listed.output + added.output
    assert json.loads(shown.output)["frame_origins"] == ["https://ehr.example"]
    assert cli_env("ehr", "remove", "example", "--yes").exit_code == 0
    assert json.loads(cli_env("ehr", "list", "--json").output) == []


def test_symmetric_client_without_secret_is_a_usage_error(cli_env, monkeypatch) -> None:
    monkeypatch.delenv("CAREDESK_CLIENT_SECRET", raising=False)
    result = cli_env(
        "ehr",
        "add",
        "--iss",
        "https://e/fhir",
        "--client-id",
        "c",
        "--type",
        "confidential-symmetric",
    )
    assert result.exit_code == 2
    assert "client secret" in result.output


def test_generated_keys_are_published_and_rotation_keeps_the_old_one(
    cli_env, sqlite_url, make_app
) -> None:
    assert (
        cli_env(
            "ehr",
            "add",
            "--iss",
            "https://k/fhir",
            "--client-id",
            "c",
            "--type",
            "confidential-asymmetric",
            "--generate-key",
            "ES384",
            "--slug",
            "k",
        ).exit_code
        == 0
    )
    [reg] = _rows(sqlite_url)
    [first] = reg.signing_keys
    assert first.alg == "ES384" and b"PRIVATE KEY" not in first.private_key_enc
    rotated = cli_env("ehr", "rotate-key", "k")
    assert rotated.exit_code == 0 and "retired, still published" in rotated.output
    app = make_app()
    kids = {k["kid"] for k in app.test_client().get("/.well-known/jwks.json").json["keys"]}
    [reg] = _rows(sqlite_url)
    assert {k.kid for k in reg.signing_keys} == kids and len(kids) == 2
    assert cli_env("ehr", "remove", "k", "--kid", first.kid).exit_code == 0
    kids_after = {k["kid"] for k in app.test_client().get("/.well-known/jwks.json").json["keys"]}
    assert first.kid not in kids_after and len(kids_after) == 1
    current = next(k for k in _rows(sqlite_url)[0].signing_keys if k.retired_at is None)
    refused = cli_env("ehr", "remove", "k", "--kid", current.kid)
    assert refused.exit_code != 0 and "rotate first" in refused.output
    assert isinstance(current, SigningKey)


SAMPLE = Path(__file__).resolve().parents[2] / "fixtures" / "registrations" / "sample-ehr.json"


def _show(cli_env, key: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    result = cli_env("ehr", "show", key)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def test_add_from_the_sample_file_registers_every_setting(cli_env) -> None:
    added = cli_env("ehr", "add", "--from-file", str(SAMPLE))
    assert added.exit_code == 0, added.output
    sample = json.loads(SAMPLE.read_text("utf-8"))
    shown = _show(cli_env, "sandbox")
    assert shown["slug"] == "sandbox" and shown["name"] == sample["name"]
    assert shown["iss"] == sample["iss"] and shown["client_type"] == sample["client_type"]
    assert shown["scopes"] == " ".join(sample["scopes"])
    assert shown["backend_client_id"] == "caredesk-jobs"
    assert shown["backend_scopes"] == " ".join(sample["backend_scopes"])
    assert shown["frame_origins"] == sample["frame_origins"]
    assert [k["alg"] for k in shown["signing_keys"]] == ["ES384"]
    # The same file again changes nothing (a provisioning script may run twice).
    again = cli_env("ehr", "add", "--from-file", str(SAMPLE))
    assert again.exit_code == 0 and "nothing changed" in again.output
    assert _show(cli_env, "sandbox") == shown


def test_a_toml_registration_file_reads_the_same(cli_env, tmp_path) -> None:
    path = tmp_path / "ehr.toml"
    path.write_text(
        "# TOML has comments\n"
        'iss = "https://ehr.example/fhir/r4/"\n'
        'client_id = "cd"\n'
        'scopes = ["launch", "openid", "fhirUser", "patient/Patient.read"]\n'
        'frame_origins = ["https://ehr.example"]\n'
        "allow_writes = false\n",
        encoding="utf-8",
    )
    added = cli_env("ehr", "add", "--from-file", str(path))
    assert added.exit_code == 0, added.output
    shown = _show(cli_env, "ehr-example-fhir-r4")
    assert shown["iss"] == "https://ehr.example/fhir/r4" and shown["client_type"] == "public"
    assert shown["scopes"] == "launch openid fhirUser patient/Patient.read"
    assert shown["allow_writes"] is False and shown["signing_keys"] == []


def test_a_bad_registration_file_reports_every_bad_field_at_once(
    cli_env, sqlite_url, tmp_path
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps(
            {
                "_comment": "comments are fine",
                "iss": "ehr.example/fhir",
                "client_type": "confidential",
                "client_secret": "s3cret",
                "scopes": "launch openid patient/Apointment.rs ...",
                "backend_scopes": ["system/Patient.rs", "patient/Coverage.rs"],
                "frame_origins": ["https://ehr.example/app"],
                "timezone": "America/Chicago",
            }
        ),
        encoding="utf-8",
    )
    result = cli_env("ehr", "add", "--from-file", str(path))
    assert result.exit_code == 2
    out = result.output
    for field in (
        "iss:",
        "client_id: Missing data for required field.",
        "client_type:",
        "client_secret: Secrets do not belong",
        "scopes: 'patient/Apointment.rs'",
        "did you mean Appointment?",
        "scopes: '...'",
        "backend_scopes: 'patient/Coverage.rs'",
        "frame_origins[0]:",
        "timezone: Unknown field.",
    ):
        assert field in out, field
    assert "s3cret" not in out
    assert "9 problems" in out  # two of them in `scopes`
    assert _rows(sqlite_url) == []


def test_flags_are_validated_like_the_file(cli_env, sqlite_url) -> None:
    result = cli_env(
        "ehr",
        "add",
        "--iss",
        "https://e/fhir",
        "--client-id",
        "c",
        "--backend-client-id",
        "jobs",
        "--backend-scopes",
        "system/Patient.rs system/Appointment.rs ...",
    )
    assert result.exit_code == 2
    assert "backend_scopes: '...': not a SMART scope" in result.output
    assert _rows(sqlite_url) == []


def _add_example(cli_env, *extra: str):  # type: ignore[no-untyped-def]
    return cli_env(
        "ehr",
        "add",
        "--iss",
        "https://ehr.example/fhir",
        "--client-id",
        "cd",
        "--slug",
        "example",
        "--name",
        "Example Health",
        "--frame-origin",
        "https://ehr.example",
        "--backend-client-id",
        "cd-jobs",
        *extra,
    )


def test_adding_a_registered_iss_again_is_refused_and_changes_nothing(cli_env) -> None:
    assert _add_example(cli_env).exit_code == 0
    before = _show(cli_env, "example")
    # Re-running `ehr add` with fewer options used to rename the slug and drop the name,
    # the frame origin and the backend client.
    again = cli_env("ehr", "add", "--iss", "https://ehr.example/fhir/", "--client-id", "cd")
    assert again.exit_code == 1
    assert "already registered as example" in again.output
    assert "slug, name, frame_origins, backend_client_id, backend_scopes" in again.output
    assert "caredesk ehr update example" in again.output
    assert _show(cli_env, "example") == before
    same = _add_example(cli_env)
    assert same.exit_code == 0 and "nothing changed" in same.output


def test_a_slug_taken_by_another_ehr_is_refused(cli_env) -> None:
    assert _add_example(cli_env).exit_code == 0
    other = cli_env(
        "ehr", "add", "--iss", "https://other.example/fhir", "--client-id", "x", "--slug", "example"
    )
    assert other.exit_code == 2
    assert "slug: 'example' is already the slug of https://ehr.example/fhir" in other.output


def test_update_changes_only_what_it_is_given_and_keeps_the_slug(cli_env, tmp_path) -> None:
    assert _add_example(cli_env).exit_code == 0
    before = _show(cli_env, "example")
    updated = cli_env(
        "ehr", "update", "example", "--scopes", "launch openid fhirUser user/Patient.rs"
    )
    assert updated.exit_code == 0, updated.output
    assert "scopes: " in updated.output and "-> launch openid fhirUser user/Patient.rs" in (
        updated.output
    )
    after = _show(cli_env, "example")
    assert after["scopes"] == "launch openid fhirUser user/Patient.rs"
    assert {k: v for k, v in after.items() if k != "scopes"} == {
        k: v for k, v in before.items() if k != "scopes"
    }
    # From a file: only the fields in it; iss and slug may be repeated but not changed.
    path = tmp_path / "change.json"
    path.write_text(json.dumps({"name": "Example Health (test)"}), encoding="utf-8")
    assert cli_env("ehr", "update", "example", "--from-file", str(path)).exit_code == 0
    assert _show(cli_env, "example")["name"] == "Example Health (test)"
    path.write_text(json.dumps({"slug": "renamed", "scopes": "user/Nothing.rs"}), "utf-8")
    refused = cli_env("ehr", "update", "example", "--from-file", str(path))
    assert refused.exit_code == 2
    assert "slug: stays 'example'" in refused.output and "scopes: 'user/Nothing.rs'" in (
        refused.output
    )
    assert cli_env("ehr", "update", "example", "--name", "Example Health (test)").output == (
        "example: nothing to change\n"
    )


def test_changing_the_client_type_clears_what_no_longer_applies(cli_env, monkeypatch) -> None:
    monkeypatch.setenv("CAREDESK_CLIENT_SECRET", "very-secret-value")
    added = cli_env(
        "ehr",
        "add",
        "--iss",
        "https://s/fhir",
        "--client-id",
        "c",
        "--type",
        "confidential-symmetric",
        "--slug",
        "s",
    )
    assert added.exit_code == 0, added.output
    assert _show(cli_env, "s")["has_client_secret"] is True
    monkeypatch.delenv("CAREDESK_CLIENT_SECRET")
    to_asym = cli_env("ehr", "update", "s", "--type", "confidential-asymmetric")
    assert to_asym.exit_code == 0, to_asym.output
    assert "client_type: confidential-symmetric -> confidential-asymmetric" in to_asym.output
    assert "client secret: removed" in to_asym.output
    assert "generated, published in the JWKS" in to_asym.output
    shown = _show(cli_env, "s")
    assert shown["has_client_secret"] is False and len(shown["signing_keys"]) == 1
    to_public = cli_env("ehr", "update", "s", "--client-type", "public")
    assert "removed, no longer published" in to_public.output
    assert _show(cli_env, "s")["signing_keys"] == []
    # Back to symmetric needs a secret, and says so without changing anything.
    refused = cli_env("ehr", "update", "s", "--type", "confidential-symmetric")
    assert refused.exit_code == 2 and "$CAREDESK_CLIENT_SECRET" in refused.output
    assert _show(cli_env, "s")["client_type"] == "public"
    # A backend client keeps its key when the launch client stops signing.
    with_backend = cli_env(
        "ehr", "update", "s", "--type", "confidential-asymmetric", "--backend-client-id", "jobs"
    )
    assert "backend_scopes: (none) -> system/Patient.rs" in with_backend.output
    kept = cli_env("ehr", "update", "s", "--type", "public")
    assert "signing key" not in kept.output and len(_show(cli_env, "s")["signing_keys"]) == 1
    dropped = cli_env("ehr", "update", "s", "--no-backend")
    assert "backend_client_id: jobs -> (none)" in dropped.output
    assert "removed, no longer published" in dropped.output


def test_add_says_which_features_the_scopes_leave_out(cli_env) -> None:
    # CareDesk's default launch scopes cover every feature that can run on a launch; only
    # what needs a backend client is left out without one.
    plain = cli_env("ehr", "add", "--iss", "https://a/fhir", "--client-id", "a")
    gaps = plain.output.split("not covered by these scopes", 1)[1].splitlines()[1:]
    assert [g.strip() for g in gaps] == [
        "survey publishing: needs a backend client",
        "inbound message matching: needs a backend client",
        "insurance outreach: needs a backend client",
    ]
    # With a backend client and the default backend scopes: nothing left out.
    full = cli_env(
        "ehr", "add", "--iss", "https://b/fhir", "--client-id", "b", "--backend-client-id", "b-jobs"
    )
    assert full.exit_code == 0 and "not covered" not in full.output
    # Backend scopes without Questionnaire: publishing will not work, and it says why.
    update = cli_env(
        "ehr", "update", "b-fhir", "--backend-scopes", "system/Patient.rs system/Appointment.rus"
    )
    assert "survey publishing: the backend scopes lack system/Questionnaire.crs" in update.output


def test_scopes_lists_each_feature_at_both_levels(cli_env) -> None:
    result = cli_env("ehr", "scopes", "--json")
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert "user/Questionnaire.rs" in rows["survey-write-back"]["user_scopes"]
    assert rows["survey-publish"]["backend_scopes"] == ["system/Questionnaire.crs"]
    text = cli_env("ehr", "scopes").output
    assert f"all, backend:    {scopes_for_features(FEATURES, 'backend')}" in text


def test_check_with_a_correct_registration_verifies_and_exits_0(cli_env, sqlite_url) -> None:
    with running_sandbox() as sb:
        added = cli_env(
            "ehr",
            "add",
            "--iss",
            sb.fhir_base,
            "--client-id",
            "c",
            "--type",
            "confidential-asymmetric",
            "--generate-key",
            "ES384",
            "--backend-client-id",
            "caredesk-jobs",
            "--backend-scopes",
            scopes_for_features(FEATURES, "backend"),
            "--slug",
            "sb",
        )
        assert added.exit_code == 0, added.output
        [reg] = _rows(sqlite_url)
        keys = {"keys": [dict(k.public_jwk) for k in reg.signing_keys]}
        # CareDesk registered in the EHR: the launch client and the backend client.
        sb.register_client(
            {
                "client_id": "c",
                "type": "confidential-asymmetric",
                "jwks": keys,
                "redirect_uris": ["urn:caredesk:check"],
            }
        )
        sb.register_client(
            {
                "client_id": "caredesk-jobs",
                "type": "confidential-asymmetric",
                "jwks": keys,
                "backend": True,
                "redirect_uris": [],
            }
        )
        result = cli_env("ehr", "check", "sb")
        assert result.exit_code == 0, result.output
        report = json.loads(cli_env("ehr", "check", "sb", "--json").output)
    assert report["exit_code"] == 0
    assert [x for x in report["lines"] if x["result"] == "failed"] == []
    # The CLI looks for CareDesk's CSAT Questionnaire too, so the survey features are
    # verified like the others.
    unverified = {f for f, v in report["features"].items() if v["verdict"] != "verified"}
    assert unverified == set()
    csat = next(x for x in report["lines"] if x["name"] == "CSAT Questionnaire")
    assert csat["result"] == "verified"
    assert all(f["works"] for f in report["features"].values())


def test_check_reports_exactly_the_features_that_are_off(cli_env) -> None:
    with running_sandbox(disabled=("well-known", "questionnaire-response-create")) as sb:
        result = cli_env("ehr", "check", sb.fhir_base, "--json")
    report = json.loads(result.output)
    not_supported = {line["name"] for line in report["lines"] if line["status"] == "missing"}
    assert ".well-known/smart-configuration" in not_supported
    assert any("QuestionnaireResponse" in name for name in not_supported)
    assert report["features"]["survey write-back"]["works"] is False
    assert report["features"]["launch"]["works"] is True  # via the CapabilityStatement
    assert report["discovery_source"].startswith("capability-statement")
    # Without a registration the client cannot be tried, so launch is not proved.
    assert report["features"]["launch"]["verdict"] == "skipped"
    assert result.exit_code == 1
