"""SMS over a Twilio-compatible HTTP API.

``POST {base}/2010-04-01/Accounts/{sid}/Messages.json`` with form fields To, From, Body and
HTTP Basic auth (account SID, auth token); the answer's ``sid`` is the message id. Several
providers copy this interface, so the base URL is configurable.
"""

from __future__ import annotations

import requests

from jobs.outbound import Message, OutboundError, TemporaryOutboundError
from smart_launch._http import parse_retry_after

TEMPORARY = frozenset({408, 429, 500, 502, 503, 504})


class TwilioAdapter:
    name = "twilio"

    def __init__(
        self,
        base_url: str,
        account_sid: str,
        auth_token: str,
        sender: str,
        *,
        session: requests.Session | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self.auth = (account_sid, auth_token)
        self.sender = sender
        # requests.post without a session opens and closes its own connection: an SMS per
        # job is rare enough that pooling is not worth an unclosed session per worker.
        self.session = session
        self.timeout = timeout

    def send(self, message: Message) -> str | None:
        to, sender = message.to, self.sender
        if message.channel == "whatsapp":
            # Twilio addresses WhatsApp as "whatsapp:+E164" on both ends.
            to, sender = f"whatsapp:{to}", f"whatsapp:{sender}"
        form = {"To": to, "From": sender, "Body": message.body}
        try:
            post = self.session.post if self.session is not None else requests.post
            resp = post(self.url, data=form, auth=self.auth, timeout=self.timeout)
        except requests.RequestException as exc:
            raise TemporaryOutboundError(f"SMS provider unreachable: {type(exc).__name__}") from exc
        with resp:
            try:
                body = resp.json()
            except ValueError:
                body = {}
        if resp.status_code in TEMPORARY:
            raise TemporaryOutboundError(
                f"SMS provider answered {resp.status_code}",
                retry_after=parse_retry_after(resp.headers.get("Retry-After")),
            )
        if resp.status_code >= 400:
            detail = body.get("message") if isinstance(body, dict) else None
            raise OutboundError(f"SMS provider refused the message: {detail or resp.status_code}")
        sid = body.get("sid") if isinstance(body, dict) else None
        return str(sid) if sid else None
