"""Notification channels: what each one receives, and sending it.

Formats (all rendered from the stored ``alert_events`` row, so a retry sends what the first
attempt would have sent):

- ``webhook``: generic JSON (``id`` = the alert's stable key, usable by a receiver to drop a
  duplicate, ``event_id``, ``rule``, ``kind``, ``period``, ``threshold``, ``value``, ``title``,
  ``message``, ``facts``, ``link``, ``fired_at``);
- ``slack``: an incoming-webhook message with ``text`` (notification fallback) and Block Kit
  ``blocks`` (header, message, fields, a dashboard button);
- ``teams``: a message with one Adaptive Card (1.4) attachment, the format Teams workflow
  webhooks (and the older connectors) accept;
- ``email``: SMTP with STARTTLS (or implicit TLS), optional login, ``multipart/alternative``
  plain text + HTML, a deterministic ``Message-ID`` per alert and channel.

Sending: a timeout per call, and ``attempts`` tries with exponential backoff (tenacity) on
transient failures (connection errors, timeouts, HTTP 429/5xx, SMTP 4xx). A permanent failure
(HTTP 4xx, SMTP 5xx, authentication) is not retried within the check. Every error message is
scrubbed of the channel's secrets before it is raised.
"""

from __future__ import annotations

import html
import re
import smtplib
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from alerts.config import Channel, EmailChannel, WebhookChannel
from alerts.secrets import install_log_filter, scrub

#: Backoff between tries: BACKOFF_S, 2×, 4×… capped at BACKOFF_MAX_S.
BACKOFF_S = 0.5
BACKOFF_MAX_S = 8.0
MAIL_DOMAIN = "foundry-watch.local"
RESOLVED_KINDS = {"resolved"}


class DeliveryError(Exception):
    """A channel did not take the message; the text is one line without secrets."""


class _Transient(Exception):
    """Worth another try within this check."""


@dataclass(frozen=True)
class AlertView:
    """What a notification shows, independent of the channel."""

    title: str
    message: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    link: str = ""
    kind: str = "firing"
    rule: str = ""
    period: str = ""
    threshold: str = ""
    value: float | None = None
    event_id: int | None = None
    fired_at: datetime | None = None
    test: bool = False

    @property
    def key(self) -> str:
        """Stable identity of the alert: the unique key of ``alert_events``."""
        if self.test:
            return "test"
        return f"{self.rule}|{self.period}|{self.threshold}|{self.kind}"

    @property
    def good(self) -> bool:
        return self.kind in RESOLVED_KINDS or self.test

    @classmethod
    def of_event(cls, event: Any) -> AlertView:
        details = event.details or {}
        return cls(
            title=details.get("title") or event.message,
            message=event.message,
            facts=[(str(k), str(v)) for k, v in details.get("facts", [])],
            link=details.get("link", ""),
            kind=event.kind,
            rule=event.rule,
            period=event.period,
            threshold=event.threshold,
            value=event.value,
            event_id=event.id,
            fired_at=event.fired_at,
        )

    @classmethod
    def test_message(cls, channel: str, dashboard_url: str = "") -> AlertView:
        return cls(
            title="foundry-watch test message",
            message=f"This is a test of the alert channel '{channel}'. It works.",
            facts=[("Channel", channel), ("Sent at", f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")],
            link=dashboard_url,
            kind="test",
            test=True,
            fired_at=datetime.now(UTC),
        )


# --------------------------------------------------------------------------- formats


def json_payload(view: AlertView) -> dict[str, Any]:
    return {
        "source": "foundry-watch",
        "version": 1,
        "id": view.key,
        "event_id": view.event_id,
        "rule": view.rule,
        "kind": view.kind,
        "period": view.period,
        "threshold": view.threshold,
        "value": view.value,
        "title": view.title,
        "message": view.message,
        "facts": dict(view.facts),
        "link": view.link or None,
        "fired_at": view.fired_at.isoformat() if view.fired_at else None,
        "test": view.test,
    }


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(view: AlertView) -> dict[str, Any]:
    icon = ":white_check_mark:" if view.good else ":warning:"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": view.title[:150]}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": f"{icon} {_slack_escape(view.message)}"},
        },
    ]
    if view.facts:
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{_slack_escape(k)}*\n{_slack_escape(v)}"}
                    for k, v in view.facts[:10]
                ],
            }
        )
    if view.link:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open the dashboard"},
                        "url": view.link,
                    }
                ],
            }
        )
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _slack_escape(_footer(view))}]}
    )
    return {"text": view.message, "blocks": blocks}


def teams_payload(view: AlertView) -> dict[str, Any]:
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": view.title,
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
                "color": "Good" if view.good else "Attention",
            },
            {"type": "TextBlock", "text": view.message, "wrap": True},
        ],
    }
    if view.facts:
        card["body"].append(
            {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in view.facts]}
        )
    card["body"].append(
        {
            "type": "TextBlock",
            "text": _footer(view),
            "isSubtle": True,
            "size": "Small",
            "wrap": True,
        }
    )
    if view.link:
        card["actions"] = [
            {"type": "Action.OpenUrl", "title": "Open the dashboard", "url": view.link}
        ]
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def _footer(view: AlertView) -> str:
    if view.test:
        return "foundry-watch · test"
    return f"foundry-watch · {view.rule} · {view.period} · {view.threshold} · {view.kind}"


def email_message(view: AlertView, channel: EmailChannel, channel_name: str) -> EmailMessage:
    msg = EmailMessage()
    prefix = "[foundry-watch]" if not view.good else "[foundry-watch] ✓"
    msg["Subject"] = f"{prefix} {view.title}"
    msg["From"] = channel.sender
    msg["To"] = ", ".join(channel.to)
    msg["Date"] = formatdate(localtime=False)
    if view.event_id is not None:
        # the same alert to the same channel always has the same id: a re-send after a crash
        # is recognisable as the duplicate it is
        tag = re.sub(r"[^A-Za-z0-9.-]", "-", channel_name)
        msg["Message-ID"] = f"<alert-{view.event_id}.{tag}@{MAIL_DOMAIN}>"
    else:
        msg["Message-ID"] = make_msgid(domain=MAIL_DOMAIN)
    msg["X-Foundry-Watch-Alert"] = view.key
    lines = [view.title, "", view.message, ""]
    lines += [f"{k}: {v}" for k, v in view.facts]
    if view.link:
        lines += ["", f"Open the dashboard: {view.link}"]
    lines += ["", "-- ", _footer(view)]
    msg.set_content("\n".join(lines))
    rows = "".join(
        f"<tr><th align='left' style='padding:2px 12px 2px 0'>{html.escape(k)}</th>"
        f"<td style='padding:2px 0'>{html.escape(v)}</td></tr>"
        for k, v in view.facts
    )
    link = (
        f"<p><a href='{html.escape(view.link, quote=True)}'>Open the dashboard</a></p>"
        if view.link
        else ""
    )
    colour = "#2e7d32" if view.good else "#c62828"
    msg.add_alternative(
        "<!doctype html><html><body style='font-family:sans-serif'>"
        f"<h2 style='color:{colour}'>{html.escape(view.title)}</h2>"
        f"<p>{html.escape(view.message)}</p>"
        f"<table>{rows}</table>{link}"
        f"<p style='color:#777;font-size:small'>{html.escape(_footer(view))}</p>"
        "</body></html>",
        subtype="html",
    )
    return msg


# --------------------------------------------------------------------------- sending

FORMATS = {"webhook": json_payload, "slack": slack_payload, "teams": teams_payload}


def _retrying(attempts: int) -> Retrying:
    return Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=BACKOFF_S, max=BACKOFF_MAX_S),
        retry=retry_if_exception_type(_Transient),
        reraise=True,
    )


def send_webhook(channel: WebhookChannel, payload: dict[str, Any]) -> None:
    url = channel.url.get_secret_value()
    headers = {k: v.get_secret_value() for k, v in channel.headers.items()}
    verify: Any = (
        ssl.create_default_context(cafile=str(channel.ca_file)) if channel.ca_file else True
    )
    with httpx.Client(timeout=channel.timeout_s, verify=verify, follow_redirects=False) as client:

        def once() -> None:
            try:
                response = client.post(url, json=payload, headers=headers)
            except httpx.TimeoutException as exc:
                raise _Transient(
                    f"timed out after {channel.timeout_s:g} s ({type(exc).__name__})"
                ) from None
            except httpx.TransportError as exc:
                raise _Transient(f"{type(exc).__name__}: {exc}") from None
            code = response.status_code
            if code < 300:
                return
            body = " ".join(response.text.split())[:200]
            text = f"HTTP {code}" + (f": {body}" if body else "")
            if code == 429 or code >= 500:
                raise _Transient(text)
            raise DeliveryError(text)

        try:
            _retrying(channel.attempts)(once)
        except _Transient as exc:
            raise DeliveryError(f"{exc} (after {channel.attempts} tries)") from None


def send_email(channel: EmailChannel, message: EmailMessage) -> None:
    context = ssl.create_default_context(cafile=str(channel.ca_file) if channel.ca_file else None)

    def once() -> None:
        try:
            if channel.security == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    channel.host, channel.port, timeout=channel.timeout_s, context=context
                )
            else:
                smtp = smtplib.SMTP(channel.host, channel.port, timeout=channel.timeout_s)
            with smtp:
                smtp.ehlo()
                if channel.security == "starttls":
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if channel.username:
                    password = channel.password.get_secret_value() if channel.password else ""
                    smtp.login(channel.username, password)
                smtp.send_message(message)
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"the server does not support it: {exc}") from None
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"login refused ({exc.smtp_code})") from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(f"recipients refused: {', '.join(exc.recipients)}") from None
        except smtplib.SMTPResponseException as exc:
            text = f"SMTP {exc.smtp_code}: {_decode(exc.smtp_error)}"
            if 400 <= exc.smtp_code < 500:
                raise _Transient(text) from None
            raise DeliveryError(text) from None
        except ssl.SSLError as exc:
            raise DeliveryError(f"TLS failed: {exc.reason or exc}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None

    try:
        _retrying(channel.attempts)(once)
    except _Transient as exc:
        raise DeliveryError(f"{exc} (after {channel.attempts} tries)") from None


def _decode(value: bytes | str) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return " ".join(text.split())[:200]


def send(name: str, channel: Channel, view: AlertView) -> None:
    """Deliver ``view`` to one channel or raise ``DeliveryError`` (scrubbed, one line)."""
    install_log_filter()
    try:
        if isinstance(channel, EmailChannel):
            send_email(channel, email_message(view, channel, name))
        else:
            send_webhook(channel, FORMATS[channel.type](view))
    except DeliveryError as exc:
        raise DeliveryError(scrub(f"{name}: {exc}")) from None
    except Exception as exc:  # anything unexpected still leaves as one scrubbed line
        raise DeliveryError(scrub(f"{name}: {type(exc).__name__}: {exc}")) from None
