"""Configuration: documented defaults, overridden by ``CAREDESK_*`` environment variables.

Every setting a deployment may change is listed in ``SETTINGS`` (the README's configuration
table is generated from it by ``caredesk config``), so there is one place to read what a
variable means and what it defaults to.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENVIRONMENTS = ("production", "development", "demo", "test")


class ConfigError(RuntimeError):
    """The configuration cannot run; the message names the variable to set."""


@dataclass(frozen=True)
class Setting:
    name: str  # Flask config key; the environment variable is CAREDESK_<name>
    default: Any
    meaning: str

    @property
    def env(self) -> str:
        return f"CAREDESK_{self.name}"


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "ENV",
        "production",
        "`production`, `development`, `demo` or `test`. Only demo and "
        "test may run without a secret key.",
    ),
    Setting(
        "SECRET_KEY",
        None,
        "Required outside demo/test. Signs CSRF tokens and derives the "
        "at-rest encryption key unless `CAREDESK_ENCRYPTION_KEYS` is set.",
    ),
    Setting(
        "ENCRYPTION_KEYS",
        None,
        "Comma-separated Fernet keys for tokens, secrets and private "
        "keys at rest; the first encrypts, all decrypt (rotation). Default: derived from the "
        "secret key.",
    ),
    Setting(
        "DATABASE_URL",
        None,
        "SQLAlchemy URL of the help-desk store. Default: SQLite file "
        "`instance/caredesk.db`. Production: `postgresql+psycopg://...`.",
    ),
    Setting(
        "REDIS_URL",
        None,
        "Redis for RQ jobs and locks. Unset: the embedded in-process "
        "queue (fakeredis and a worker thread), fine for the demo only.",
    ),
    Setting("EMBEDDED_WORKER", True, "With no `REDIS_URL`, start the in-process worker thread."),
    Setting("QUEUES", "default", "Comma-separated RQ queue names `caredesk worker` listens on."),
    Setting(
        "PUBLIC_URL",
        None,
        "External base URL of CareDesk (used for the OAuth redirect_uri "
        "behind a proxy). Default: derived from the request.",
    ),
    Setting(
        "PROXY_FIX",
        0,
        "Number of reverse proxies in front of CareDesk whose X-Forwarded-* headers to trust.",
    ),
    Setting("LOG_LEVEL", "INFO", "Log level of the `caredesk` loggers."),
    Setting("LOG_FORMAT", "text", "`text` or `json` (one JSON object per line)."),
    Setting(
        "VIEWER_TIMEZONE", "America/Chicago", "Time zone for times when the location has none."
    ),
    # --- patient satisfaction surveys (issue 7) ---
    Setting(
        "SURVEY_DELAY_MINUTES",
        120,
        "Minutes after a visit is fulfilled before its survey invitation is sent.",
    ),
    Setting(
        "SURVEY_QUIET_HOURS",
        "21:00-08:00",
        "`HH:MM-HH:MM` in the patient's time zone when no invitation is sent; a send that "
        "falls inside waits for the end. Empty: no quiet hours.",
    ),
    Setting(
        "SURVEY_FATIGUE_DAYS",
        30,
        "At most one survey invitation per patient within this many days.",
    ),
    Setting(
        "SURVEY_SAMPLE_PERCENT",
        100,
        "Share (0-100) of eligible visits that get an invitation; the choice is a stable "
        "hash of the appointment, so retries decide the same way.",
    ),
    Setting("SURVEY_LINK_DAYS", 7, "Days a survey link stays valid after it is sent."),
    Setting(
        "SURVEY_RATE_PER_IP",
        30,
        "Survey page requests allowed per client IP per minute.",
    ),
    Setting(
        "SURVEY_RATE_PER_TOKEN",
        10,
        "Survey page requests allowed per survey link per minute.",
    ),
    Setting(
        "SURVEY_PUBLIC_URL",
        None,
        "Base URL patients open survey links at (`<url>/s/<token>`). Default: "
        "`CAREDESK_PUBLIC_URL`.",
    ),
    Setting(
        "SURVEY_IDENTIFIER_SYSTEM",
        "https://caredesk.example/fhir/sid/survey-invitation",
        "QuestionnaireResponse.identifier.system; the value is the invitation id, so "
        "write-back retries find the response they already created.",
    ),
)

_SETTING_BY_NAME = {s.name: s for s in SETTINGS}


def defaults(instance_path: str) -> dict[str, Any]:
    values = {s.name: s.default for s in SETTINGS}
    values["DATABASE_URL"] = "sqlite:///" + str(Path(instance_path) / "caredesk.db")
    return values


def load(instance_path: str, test_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults, then the environment, then ``test_config``; then checks that it can run."""
    config = defaults(instance_path)
    config.update(_from_environment())
    if test_config:
        config.update(test_config)
    env = str(config["ENV"]).lower()
    if env not in ENVIRONMENTS:
        raise ConfigError(f"CAREDESK_ENV must be one of {', '.join(ENVIRONMENTS)}, not {env!r}")
    config["ENV"] = env
    if not config.get("SECRET_KEY"):
        if env in ("demo", "test"):
            # Only the demo and the tests may make one up; it does not outlive the process.
            config["SECRET_KEY"] = secrets.token_urlsafe(32)
        else:
            raise ConfigError(
                "CAREDESK_SECRET_KEY is not set. Set it to a long random value "
                "(python -c 'import secrets; print(secrets.token_urlsafe(48))'); "
                "CareDesk will not start without it outside demo and test."
            )
    config["TESTING"] = env == "test"
    return config


def _from_environment() -> dict[str, Any]:
    """``CAREDESK_*`` variables, typed like their defaults (bools and ints parsed)."""
    values: dict[str, Any] = {}
    for key, raw in os.environ.items():
        if not key.startswith("CAREDESK_"):
            continue
        name = key.removeprefix("CAREDESK_")
        setting = _SETTING_BY_NAME.get(name)
        values[name] = _coerce(raw, setting.default if setting else None)
    return values


def _coerce(raw: str, like: Any) -> Any:
    if isinstance(like, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(like, int):
        return int(raw)
    return raw


def markdown_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = "(none)" if s.default is None else f"`{s.default}`"
        rows.append(f"| `{s.env}` | {default} | {s.meaning} |")
    return "\n".join(rows)
