"""CSRF protection for the sidebar's forms and the JSON API.

The browser cookie (``caredesk_browser``) is ambient: the browser sends it with any
request to CareDesk, including one a hostile page makes. So every state-changing request
must also carry a token that only a page CareDesk rendered can know: the launch id and
the browser binding signed under ``SECRET_KEY`` (itsdangerous). It needs no server-side
storage, is different for every launch and every browser, and dies with the launch.

Forms send it as the field ``csrf_token``; scripts send the header ``X-CSRF-Token`` (the
sidebar page puts the token in ``<meta name="csrf-token">``).
"""

from __future__ import annotations

import hashlib

from flask import Flask, current_app, request
from itsdangerous import Signer

from helpdesk.errors import AppError
from helpdesk.models import LaunchSession

HEADER = "X-CSRF-Token"
FORM_FIELD = "csrf_token"
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


class CsrfFailed(AppError, status=403, code="csrf_failed"):
    """The form or header token is missing or not this launch's."""


def _signer() -> Signer:
    secret = str(current_app.config["SECRET_KEY"])
    return Signer(secret, salt="caredesk-csrf", digest_method=hashlib.sha256)


def _bound_to(launch: LaunchSession) -> str:
    return f"{launch.id}:{launch.browser_hash or ''}"


def csrf_token(launch: LaunchSession) -> str:
    """This launch's token in this browser: the pair signed with the secret key
    (itsdangerous), so it needs no server-side storage and dies with the launch."""
    return _signer().get_signature(_bound_to(launch)).decode("ascii")


def check_csrf(launch: LaunchSession) -> None:
    """Refuse a state-changing request without this launch's token (403 ``csrf_failed``)."""
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(HEADER) or ""
    if not sent and request.mimetype in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        sent = request.form.get(FORM_FIELD, "")
    if not sent or not _signer().verify_signature(
        _bound_to(launch), sent.encode("ascii", "replace")
    ):
        raise CsrfFailed(
            "This request did not come from a CareDesk page (missing or wrong CSRF token). "
            "Reload the sidebar and try again."
        )


def init_app(app: Flask) -> None:
    """Makes ``csrf_token(launch)`` a Jinja global. (Registering ``plugin.ticket_pages``
    does this too, so templates work whichever is set up.)"""
    app.add_template_global(csrf_token, "csrf_token")
