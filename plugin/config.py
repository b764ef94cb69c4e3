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

from helpdesk.errors import ConfigError

ENVIRONMENTS = ("production", "development", "demo", "test")


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
        "SQLAlchemy URL of the help-desk store. Production requires PostgreSQL "
        "(`postgresql+psycopg://...`) and fails naming this variable without it; elsewhere "
        "the default is the SQLite file `instance/caredesk.db`.",
    ),
    Setting(
        "REDIS_URL",
        None,
        "Redis for RQ jobs, locks and rate limits. Required outside demo/test (start-up "
        "fails naming it); the demo runs an in-process stand-in.",
    ),
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
    # --- the web server: gunicorn.conf.py reads these (`gunicorn wsgi:app`) ---
    Setting(
        "BIND",
        "0.0.0.0:8000",
        "Address gunicorn listens on (`HOST:PORT`, or `unix:PATH`).",
    ),
    Setting(
        "WEB_WORKERS",
        0,
        "gunicorn worker processes; 0: one per CPU core this process may run on. Each "
        "serves `CAREDESK_WEB_THREADS` requests at once: FHIR reads wait on the EHR, so "
        "threads, not processes, carry most of the load, and one Python process keeps at "
        "most one core busy.",
    ),
    Setting("WEB_THREADS", 4, "Threads per gunicorn worker process."),
    Setting(
        "FORWARDED_ALLOW_IPS",
        "127.0.0.1",
        "Addresses of the reverse proxies gunicorn believes about `X-Forwarded-Proto` "
        "(comma-separated, `*` for any). CareDesk itself trusts `X-Forwarded-*` only with "
        "`CAREDESK_PROXY_FIX`.",
    ),
    Setting("LOG_LEVEL", "INFO", "Log level of the `caredesk` loggers."),
    Setting("LOG_FORMAT", "text", "`text` or `json` (one JSON object per line)."),
    Setting(
        "VIEWER_TIMEZONE", "America/Chicago", "Time zone for times when the location has none."
    ),
    # --- jobs: follow-ups, referrals, reminders ---
    Setting("TASK_QUEUE", "default", "RQ queue CareTask jobs are enqueued on."),
    Setting(
        "EHR_CONCURRENCY",
        4,
        "Most jobs of one EHR queued or running at once (RQ rate limit per registration), "
        "so one slow EHR cannot take every worker.",
    ),
    Setting(
        "TASK_LEASE_SECONDS",
        30,
        "A running job's heartbeat (RQ's started-job registry) is renewed every third of "
        "this; when it lapses the sweeper takes the worker for dead and runs the task again.",
    ),
    Setting(
        "TASK_SWEEP_GRACE_SECONDS",
        15,
        "The sweeper leaves rows younger than this alone (their job is being enqueued).",
    ),
    Setting("RETRY_BASE_SECONDS", 10, "First retry delay; doubles per attempt (or Retry-After)."),
    Setting("RETRY_MAX_SECONDS", 1800, "Longest delay between two attempts of a task."),
    Setting(
        "REMINDER_OFFSETS_HOURS",
        "72,24",
        "Comma-separated hours before an appointment at which a reminder is sent.",
    ),
    Setting("REMINDER_SWEEP_SECONDS", 900, "How often the cron sweeps upcoming appointments."),
    Setting("TASK_SWEEP_SECONDS", 60, "How often the cron re-enqueues tasks whose job vanished."),
    Setting("REFERRAL_CHECK_SECONDS", 3600, "How often open referrals are checked in the EHR."),
    Setting("REFERRAL_OVERDUE_DAYS", 30, "A referral with no appointment after this is overdue."),
    Setting("CLINIC_NAME", "CareDesk Community Health", "Name used in patient messages."),
    Setting(
        "OUTBOUND_EMAIL",
        "outbox",
        "`smtp` or `outbox` (the demo outbox page: nothing leaves the machine).",
    ),
    Setting("OUTBOUND_SMS", "outbox", "`twilio` (any Twilio-compatible API) or `outbox`."),
    Setting("SMTP_HOST", "127.0.0.1", "Mail server for `OUTBOUND_EMAIL=smtp`."),
    Setting("SMTP_PORT", 25, "Mail server port."),
    Setting("SMTP_STARTTLS", False, "Use STARTTLS."),
    Setting("SMTP_USERNAME", None, "SMTP login (optional)."),
    Setting("SMTP_PASSWORD", None, "SMTP password (optional)."),
    Setting("SMTP_FROM", "caredesk@localhost", "Sender address of patient emails."),
    Setting("SMS_API_URL", "https://api.twilio.com", "Base URL of the Twilio-compatible API."),
    Setting("SMS_ACCOUNT_SID", None, "Account SID (the Basic-auth user)."),
    Setting("SMS_AUTH_TOKEN", None, "Auth token (the Basic-auth password)."),
    Setting("SMS_FROM", None, "Sender number of patient texts, E.164."),
    # --- patient satisfaction surveys ---
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
        "REPORT_MIN_ANSWERS",
        5,
        "Fewest answers behind a percentage or an NPS on the satisfaction report; a cell "
        'with fewer says "not enough answers" (one answer is not a rate).',
    ),
    Setting(
        "SURVEY_RATE_PER_IP",
        30,
        "Survey page requests allowed per client address per minute (counted in Redis, "
        "shared by every process).",
    ),
    Setting(
        "SURVEY_RATE_PER_TOKEN",
        10,
        "Survey page requests allowed per survey link per minute.",
    ),
    Setting(
        "SURVEY_RATE_PER_EHR",
        600,
        "Survey page requests allowed per EHR registration per minute.",
    ),
    Setting(
        "RATE_LAUNCH_PER_ADDRESS",
        60,
        "`/launch`, `/start` and `/callback` requests allowed per client address per "
        "minute, each route counted apart. Behind a proxy set `CAREDESK_PROXY_FIX`, or "
        "every client shares the proxy's address.",
    ),
    Setting(
        "RATE_LAUNCH_PER_EHR",
        600,
        "`/launch`, `/start` and `/callback` requests allowed per EHR registration per "
        "minute, each route counted apart.",
    ),
    Setting(
        "RATE_SESSION_MISSES_PER_ADDRESS",
        30,
        "Requests naming an unknown launch id (or another browser's) allowed per client "
        "address per minute: guessing launch ids stays slow. A browser's own live session "
        "is neither counted nor refused by it.",
    ),
    Setting(
        "RATE_SESSION_PER_EHR",
        6000,
        "Requests of signed-in sessions allowed per EHR registration per minute.",
    ),
    Setting(
        "MAX_PENDING_LAUNCHES",
        2000,
        "Sign-ins in progress (between `/launch` and `/callback`) kept per EHR; past it, "
        "expired ones are deleted, and a new launch gets 503 if none had expired.",
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
    # --- two-way messaging ---
    Setting(
        "PHONE_REGION",
        "US",
        "Region (ISO 3166 code) for phone numbers written without a country code: every "
        "number is made E.164 with it before a text is sent or a sender is matched.",
    ),
    Setting(
        "CLINIC_PHONE",
        None,
        "The clinic's phone number, given in the answer to HELP.",
    ),
    Setting(
        "CLINIC_HOURS",
        "Mon-Fri 08:00-17:00",
        "Opening hours in `VIEWER_TIMEZONE` (`Mon-Fri 08:00-17:00; Sat 09:00-12:00`): "
        "messages outside them are acknowledged; the HELP answer names them. The "
        "automation rule file's `clinic_hours` wins over this.",
    ),
    Setting(
        "INBOUND_TICKET_WINDOW_DAYS",
        7,
        "A patient's message joins their open ticket whose conversation moved within this "
        "many days; otherwise it opens a new ticket.",
    ),
    Setting(
        "INBOUND_CATEGORY",
        "clinical-question",
        "Category of a ticket a patient's message opens when it answers none of CareDesk's "
        "messages (the shortest SLA: an unread message may be clinical).",
    ),
    Setting(
        "INBOUND_RATE_PER_MINUTE",
        120,
        "Messaging webhook requests allowed per client address per minute (signed or not).",
    ),
    Setting(
        "INBOUND_RATE_PER_EHR",
        600,
        "Messaging webhook requests allowed per EHR registration per minute.",
    ),
    Setting(
        "STAFF_TASK_GROUP",
        "front-desk",
        "Work-list group for what a person must do in the EHR (a confirmation the EHR would "
        "not take) and for escalations of unassigned tickets.",
    ),
    Setting(
        "AUTOMATION_RULES",
        None,
        "Automation rules: a JSON file's path (or the JSON). Default: the rules shipped in "
        "`helpdesk/data/automation-rules.json`. Shown read-only at `/l/<launch>/automation`.",
    ),
    Setting("ESCALATION_SWEEP_SECONDS", 300, "How often overdue tickets are escalated."),
    Setting(
        "OUTREACH_COVERAGE_DAYS",
        30,
        "Insurance outreach messages patients whose coverage ends within this many days "
        "(once per coverage period).",
    ),
    Setting("OUTREACH_SWEEP_SECONDS", 86400, "How often the insurance outreach sweep runs."),
    Setting(
        "IMAP_HOST",
        None,
        "Mailbox server patients' emails are read from (IMAP). Unset: no email intake.",
    ),
    Setting("IMAP_PORT", 993, "IMAP port (993 with TLS, 143 without)."),
    Setting("IMAP_SSL", True, "Connect with TLS (IMAPS); false: plain IMAP (loopback tests only)."),
    Setting("IMAP_USERNAME", None, "IMAP login."),
    Setting("IMAP_PASSWORD", None, "IMAP password."),
    Setting("IMAP_MAILBOX", "INBOX", "Folder the poller reads."),
    Setting(
        "IMAP_REGISTRATION",
        None,
        "Slug of the EHR registration whose patients write to this mailbox. Default: the "
        "only registration (several: required).",
    ),
    Setting("IMAP_POLL_SECONDS", 60, "How often the cron polls the mailbox."),
    Setting("IMAP_BATCH", 50, "Most messages taken per poll."),
    Setting(
        "INSTANCE",
        None,
        "Folder for local state (the default SQLite file, the demo's generated secret and "
        "client files). Default: `instance/` beside the code.",
    ),
    Setting(
        "SURVEY_SWEEP_SECONDS",
        900,
        "How often the cron looks for newly fulfilled visits to invite to the survey.",
    ),
)

_SETTING_BY_NAME = {s.name: s for s in SETTINGS}


MIN_SECRET_BYTES = 32


def defaults(instance_path: str) -> dict[str, Any]:
    return {s.name: s.default for s in SETTINGS}


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
    elif env == "production" and len(str(config["SECRET_KEY"]).encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"CAREDESK_SECRET_KEY is too short ({len(str(config['SECRET_KEY']).encode())} "
            f"bytes); production needs at least {MIN_SECRET_BYTES} random bytes "
            "(python -c 'import secrets; print(secrets.token_urlsafe(48))')."
        )
    if not config.get("DATABASE_URL"):
        if env == "production":
            raise ConfigError(
                "CAREDESK_DATABASE_URL is not set. Production keeps the help-desk store in "
                "PostgreSQL (postgresql+psycopg://user:password@host/caredesk)."
            )
        config["DATABASE_URL"] = "sqlite:///" + str(Path(instance_path) / "caredesk.db")
    elif env == "production" and str(config["DATABASE_URL"]).startswith("sqlite"):
        raise ConfigError(
            "CAREDESK_DATABASE_URL names SQLite, which production does not run on (one file, "
            "one writer at a time): use PostgreSQL (postgresql+psycopg://...)."
        )
    config["TESTING"] = env == "test"
    # Flask's FLASK_DEBUG would turn on the interactive debugger; CareDesk never reads it
    # (the app's own settings come from CAREDESK_* only) and production pins it off.
    config["DEBUG"] = False if env == "production" else bool(config.get("DEBUG", False))
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


def env_setting(name: str) -> Any:
    """One setting read from the environment, typed like its default, for the processes
    that start before the app does (``gunicorn.conf.py``)."""
    setting = _SETTING_BY_NAME[name]
    raw = os.environ.get(setting.env)
    return setting.default if raw is None else _coerce(raw, setting.default)


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
