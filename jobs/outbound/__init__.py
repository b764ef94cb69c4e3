"""Outbound messages to patients: templates per language and the adapters that send them.

Adapters: SMTP email (``smtp``), a Twilio-compatible HTTP SMS API (``twilio``) and the
demo's ``outbox`` (stored, shown on /jobs/outbox). Which one serves a channel is set by
``CAREDESK_OUTBOUND_EMAIL`` / ``CAREDESK_OUTBOUND_SMS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound

from helpdesk.tasks import masked_address

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates" / "messages"
LANGUAGES = ("en", "es")


class OutboundError(Exception):
    """The message was refused (bad number, rejected sender): retrying will not help."""


class TemporaryOutboundError(OutboundError):
    """The mail server or SMS provider is down or throttling: try again later."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoReachableChannel(OutboundError):
    """The patient has no channel that fits (none on file, or restricted)."""


class OptedOut(NoReachableChannel):
    """The patient replied STOP on the only channel(s) that fit: nothing is sent."""


@dataclass(frozen=True)
class Message:
    channel: str  # sms | whatsapp | email
    to: str
    subject: str | None
    body: str
    template: str
    language: str
    # Email threading (In-Reply-To, References) for a reply in a conversation.
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class OutboundResult:
    channel: str
    adapter: str
    template: str
    language: str
    message_id: int | None  # OutboundMessage row
    provider_id: str | None
    to_masked: str
    already_sent: bool = False


class Adapter(Protocol):
    name: str

    def send(self, message: Message) -> str | None:
        """Send; return the provider's message id. Raise (Temporary)OutboundError."""


# Message templates are Jinja: missing parameters fail loudly (a bug at the call site);
# plain text, so nothing is HTML-escaped (an SMS shows "&amp;" literally).
_TEMPLATES = Environment(
    loader=FileSystemLoader(TEMPLATE_DIR),
    undefined=StrictUndefined,
    autoescape=False,  # noqa: S701 - plain-text SMS and email bodies, never HTML
    keep_trailing_newline=False,
)


def render(template: str, language: str, params: dict[str, Any]) -> tuple[str | None, str]:
    """(subject, body) of ``<template>.<language>.txt`` (English when the language has
    none); a first line ``Subject: ...`` is the email subject. A missing parameter raises
    (``jinja2.UndefinedError``): a bug at the call site, never a half-filled message."""
    name = f"{template}.{language}.txt"
    if not (TEMPLATE_DIR / name).is_file():
        name = f"{template}.en.txt"
    try:
        text = _TEMPLATES.get_template(name).render(**params)
    except TemplateNotFound:
        raise OutboundError(f"no message template {template!r}") from None
    subject = None
    if text.startswith("Subject:"):
        first, _, text = text.partition("\n")
        subject = first.removeprefix("Subject:").strip()
    return subject, text.strip() + "\n"


def languages_of(template: str) -> tuple[str, ...]:
    found = tuple(lang for lang in LANGUAGES if (TEMPLATE_DIR / f"{template}.{lang}.txt").is_file())
    return found or ("en",)


def mask(address: str) -> str:
    """Enough to tell two addresses apart on a staff screen, not enough to use: the one
    masking every staff screen shows (``···0104``; the ticket page said ``***04`` beside a
    sidebar that said ``···0104`` for the same number)."""
    return masked_address(address)
