"""Email over SMTP (stdlib smtplib), STARTTLS and login when configured."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.utils import make_msgid

from jobs.outbound import Message, OutboundError, TemporaryOutboundError


class SmtpAdapter:
    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.starttls, self.username, self.password = starttls, username, password
        self.timeout = timeout

    def send(self, message: Message) -> str | None:
        email = EmailMessage()
        email["From"] = self.sender
        email["To"] = message.to
        email["Subject"] = message.subject or "CareDesk"
        msg_id = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        email["Message-ID"] = msg_id
        for name, value in message.headers:
            email[name] = value
        email.set_content(message.body)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(email)
        except smtplib.SMTPRecipientsRefused as exc:
            raise OutboundError("the mail server refused the recipient address") from exc
        except smtplib.SMTPResponseException as exc:
            # 4xx replies are the server asking us to come back later; 5xx are final.
            if 400 <= exc.smtp_code < 500:
                raise TemporaryOutboundError(f"mail server: {exc.smtp_code}") from exc
            raise OutboundError(f"mail server refused the message: {exc.smtp_code}") from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise TemporaryOutboundError(f"mail server unreachable: {type(exc).__name__}") from exc
        return msg_id
