"""Channels for real: an HTTPS receiver (generic JSON, Slack, Teams) and an SMTP server with
STARTTLS and login, asserting on what arrived; retries, failures and per-channel bookkeeping."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select

from alerts.config import load_alert_config
from alerts.job import check
from models.tables import AlertDelivery
from tests.alerts.conftest import (
    HEADER_SECRET,
    HOOK,
    SLACK,
    SMTP_USER,
    TEAMS,
    Clock,
    Mailbox,
    Receiver,
    Store,
    webhook_channels,
)

NOW = datetime(2025, 11, 17, 9, tzinfo=UTC)
DASH = "https://dash.example.com"


def seed_forecast(store: Store) -> None:
    """Weekdays 40, weekends 9.6 USD: forecast 896 of an 800 budget (112 %) on 17 Nov."""
    d = date(2025, 10, 20)
    while d <= date(2025, 11, 16):
        store.add_bill(d, "claude-sonnet-4-5", "9.6" if d.weekday() >= 5 else "40")
        d += timedelta(days=1)


def forecast_config(channels: dict[str, Any], names: list[str], **alerts: Any) -> Any:
    return load_alert_config(
        {
            "budgets": [
                {
                    "name": "team",
                    "amount": 800,
                    "spend": "billed",
                    "thresholds": [80],
                    "forecast_thresholds": [100],
                    "channels": names,
                }
            ],
            "channels": channels,
            "alerts": {"dashboard_url": DASH, **alerts},
        }
    )


def deliveries(store: Store) -> dict[str, tuple[str, int, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(
                AlertDelivery.channel,
                AlertDelivery.status,
                AlertDelivery.attempts,
                AlertDelivery.last_error,
            )
        ).all()
    return {r.channel: (r.status, r.attempts, r.last_error) for r in rows}


def test_every_channel_receives_the_alert(store: Store, receiver: Receiver, smtp: Mailbox) -> None:
    seed_forecast(store)
    channels = {**webhook_channels(receiver), "mail": smtp.channel()}
    cfg = forecast_config(channels, ["hook", "slack", "teams", "mail"])
    report = check(store.engine, cfg, Clock(NOW))
    assert [d.status for d in report.deliveries] == ["sent"] * 4
    assert deliveries(store) == {c: ("sent", 1, "") for c in channels}
    title = "Budget team: forecast to reach 112 % by 30 Nov"

    [hook] = receiver.to(HOOK)
    assert hook.headers["Authorization"] == HEADER_SECRET
    body = hook.body
    assert body["id"] == "budget:team|2025-11|100|forecast"
    assert (body["kind"], body["value"], body["title"]) == ("forecast", 112.0, title)
    assert body["facts"]["Forecast by 30 Nov"] == "896.00 USD (112 %)"
    assert body["facts"]["Month to date"] == "457.60 USD (57 %)"
    assert body["facts"]["Budget"] == "800.00 USD / month"
    assert body["link"] == f"{DASH}/spend"

    [slack] = receiver.to(SLACK)
    blocks = slack.body["blocks"]
    assert title in slack.body["text"]
    assert blocks[0] == {"type": "header", "text": {"type": "plain_text", "text": title}}
    fields = [f["text"] for b in blocks if b["type"] == "section" for f in b.get("fields", [])]
    assert "*Forecast by 30 Nov*\n896.00 USD (112 %)" in fields
    [button] = next(b for b in blocks if b["type"] == "actions")["elements"]
    assert button["url"] == f"{DASH}/spend"

    [teams] = receiver.to(TEAMS)
    [attachment] = teams.body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    assert card["body"][0]["text"] == title
    facts = next(b for b in card["body"] if b["type"] == "FactSet")["facts"]
    assert {"title": "Budget", "value": "800.00 USD / month"} in facts
    assert card["actions"] == [
        {"type": "Action.OpenUrl", "title": "Open the dashboard", "url": f"{DASH}/spend"}
    ]

    [mail] = smtp.messages
    assert smtp.logins == [SMTP_USER] and smtp.tls == [True]  # STARTTLS, then login
    assert smtp.envelopes[0]["to"] == ["finops@example.com", "lead@example.com"]
    assert mail["Subject"] == f"[foundry-watch] {title}"
    assert mail["Message-ID"] == f"<alert-{report.created[0]}.mail@foundry-watch.local>"
    plain = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    for text in (plain, html):
        assert "forecast to reach 112 % by 30 Nov" in text
        assert "896.00 USD" in text and "457.60 USD" in text and "800.00 USD / month" in text
    assert f"Open the dashboard: {DASH}/spend" in plain
    assert f"<a href='{DASH}/spend'>Open the dashboard</a>" in html

    check(store.engine, cfg, Clock(NOW + timedelta(minutes=5)))
    assert len(receiver.requests) == 3 and len(smtp.messages) == 1, "nothing is sent twice"


def test_a_failing_channel_is_retried_next_check_without_resending_others(
    store: Store, receiver: Receiver, smtp: Mailbox
) -> None:
    seed_forecast(store)
    channels = {**webhook_channels(receiver), "mail": smtp.channel()}
    cfg = forecast_config(channels, ["hook", "slack", "teams", "mail"])
    receiver.fail[TEAMS] = [500, 502, 503]  # all three tries of this check fail
    check(store.engine, cfg, Clock(NOW))
    state = deliveries(store)
    assert state["teams"][:2] == ("failed", 1)
    assert "HTTP 503" in state["teams"][2] and "after 3 tries" in state["teams"][2]
    assert {state[c][0] for c in ("hook", "slack", "mail")} == {"sent"}

    check(store.engine, cfg, Clock(NOW + timedelta(minutes=5)))
    assert deliveries(store)["teams"] == ("sent", 2, "")
    assert [len(receiver.to(p)) for p in (HOOK, SLACK, TEAMS)] == [1, 1, 1]
    assert len(smtp.messages) == 1


def test_transient_error_is_retried_with_backoff_within_the_check(
    store: Store, receiver: Receiver
) -> None:
    seed_forecast(store)
    cfg = forecast_config(webhook_channels(receiver), ["slack"])
    receiver.fail[SLACK] = [429, 503]
    check(store.engine, cfg, Clock(NOW))
    assert [s for p, s in receiver.hits if p == SLACK] == [429, 503, 200]
    assert deliveries(store)["slack"] == ("sent", 1, "")


def test_permanent_error_waits_for_the_next_check_and_gives_up_at_the_cap(
    store: Store, receiver: Receiver
) -> None:
    seed_forecast(store)
    cfg = forecast_config(webhook_channels(receiver), ["hook"], max_attempts=2)
    receiver.fail[HOOK] = [404] * 10
    clock = Clock(NOW)
    for _ in range(4):
        check(store.engine, cfg, clock)
        clock.advance(minutes=5)
    assert [s for p, s in receiver.hits if p == HOOK] == [404, 404], "one try per check, 2 checks"
    status, attempts, error = deliveries(store)["hook"]
    assert (status, attempts) == ("failed", 2) and "HTTP 404" in error


def test_smtp_login_refused_is_recorded(store: Store, smtp: Mailbox) -> None:
    seed_forecast(store)
    cfg = forecast_config({"mail": smtp.channel(password="wrong-password")}, ["mail"])
    report = check(store.engine, cfg, Clock(NOW))
    status, _attempts, error = deliveries(store)["mail"]
    assert status == "failed" and "login refused (535)" in error
    assert report.phases["delivery"].status == "partial"
    assert smtp.messages == []


def test_operational_alert_and_resolve_reach_the_channel(store: Store, receiver: Receiver) -> None:
    t0 = datetime(2025, 11, 20, 10, tzinfo=UTC)
    cfg = load_alert_config(
        {
            "channels": webhook_channels(receiver),
            "alerts": {
                "dashboard_url": DASH,
                "default_channels": ["slack"],
                "rules": [
                    {"name": "throttling", "kind": "rate_429", "threshold": 5, "delay": "0s",
                     "min_requests": 50}
                ],
            },
        }
    )  # fmt: skip
    store.add_requests("prod-sonnet", t0, 10, {"200": 90, "429": 10})
    check(store.engine, cfg, Clock(t0 + timedelta(minutes=10)))
    store.add_requests("prod-sonnet", t0 + timedelta(minutes=10), 10, {"200": 100})
    check(store.engine, cfg, Clock(t0 + timedelta(minutes=20)))
    firing, resolved = (r.body for r in receiver.to(SLACK))
    assert firing["text"].startswith("429 rate 10.0 % on prod-sonnet (res-a) over 10 min")
    assert resolved["text"].startswith("Resolved: 429 rate on prod-sonnet (res-a) back to 0.0 %")
    assert ":white_check_mark:" in resolved["blocks"][1]["text"]["text"]
    button = next(b for b in firing["blocks"] if b["type"] == "actions")["elements"][0]
    assert button["url"] == f"{DASH}/errors"
