"""Channel secrets (webhook tokens, header values, SMTP passwords) never reach logs, stored
errors, reports or printed config — on success and on every kind of failure."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select

from alerts.config import load_alert_config
from alerts.job import check
from alerts.secrets import mask_url, scrub
from models.settings import ConfigError
from models.tables import AlertDelivery, AlertEvent
from tests.alerts.conftest import (
    HEADER_SECRET,
    HOOK,
    SECRETS,
    SLACK,
    SMTP_PASSWORD,
    SMTP_USER,
    TEAMS,
    Clock,
    Mailbox,
    Receiver,
    Store,
    assert_no_secret,
    webhook_channels,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_secret_in_logs_errors_or_store(
    store: Store,
    receiver: Receiver,
    smtp: Mailbox,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)  # everything, httpx/httpcore request lines included
    monkeypatch.setattr(logging.getLogger("mail.log"), "level", logging.WARNING)  # test server
    channels = webhook_channels(receiver, attempts=2)
    # slack: nobody listens on that port (connection refused, URL with token in the error)
    channels["slack"]["url"] = (
        f"https://127.0.0.1:{_closed_port()}/services/T0001/B0001/slackTOKEN987654"
    )
    channels["mail"] = smtp.channel(password=SMTP_PASSWORD + "-wrong")
    channels["mail_ok"] = smtp.channel()
    receiver.fail[HOOK] = [500, 500]  # the server echoes the path (token) in its error body
    cfg = load_alert_config(
        {
            "budgets": [
                {"name": "team", "amount": 100, "thresholds": [50], "spend": "billed",
                 "forecast_thresholds": [], "channels": list(channels)}
            ],
            "channels": channels,
        }
    )  # fmt: skip
    store.add_bill(date(2025, 11, 3), "claude-sonnet-4-5", "60")
    report = check(store.engine, cfg, Clock(datetime(2025, 11, 4, tzinfo=UTC)))
    status = {d.channel: d.status for d in report.deliveries}
    assert status == {
        "hook": "failed",
        "slack": "failed",
        "teams": "sent",
        "mail": "failed",
        "mail_ok": "sent",
    }
    assert smtp.logins == [SMTP_USER]
    with store.engine.connect() as conn:
        errors = [r.last_error for r in conn.execute(select(AlertDelivery.last_error)).all()]
        stored = [str(tuple(r)) for r in conn.execute(select(AlertEvent)).all()]
    assert any("HTTP 500" in e for e in errors)
    assert any("ConnectError" in e for e in errors)
    assert any("login refused (535)" in e for e in errors)
    # httpx logged its request lines, with the (secret) URL scrubbed
    assert 'HTTP Request: POST **** "HTTP/1.0 200 OK"' in caplog.text
    outcome_text = " ".join(str(o) for o in report.outcomes())
    delivery_text = " ".join(str(d) for d in report.deliveries)
    assert_no_secret(caplog.text, *errors, *stored, outcome_text, delivery_text)


def test_config_errors_and_reprs_do_not_echo_secrets() -> None:
    with pytest.raises(ConfigError) as info:
        load_alert_config(
            {"channels": {"x": {"type": "email", "host": "h", "from": "a@b", "to": ["c@d"],
                                "password": SMTP_PASSWORD, "username": "u",
                                "security": "none"}}}
        )  # fmt: skip
    assert "never in clear text" in str(info.value)
    assert_no_secret(str(info.value))
    cfg = load_alert_config(
        {"channels": {"s": {"type": "slack", "url": "https://hooks.slack.com/services/slackTOKEN987654"}}}
    )  # fmt: skip
    assert_no_secret(repr(cfg), str(cfg), cfg.channels["s"].describe())
    assert cfg.channels["s"].describe() == "slack https://hooks.slack.com/****"


def test_scrub_and_mask() -> None:
    assert mask_url("https://user:pw@example.com:8443/a/b?sig=1") == "https://example.com:8443/****"
    assert mask_url("https://example.com") == "https://example.com"
    text = "failed POST https://prod.westus.logic.azure.com:443/workflows/1/triggers?sig=abc"
    assert scrub(text) == "failed POST https://prod.westus.logic.azure.com:443/****"
    # loading a config registers its secrets: then they are scrubbed wherever they appear
    load_alert_config(
        {
            "channels": {
                "h": {"type": "webhook", "url": f"https://example.com{HOOK}",
                      "headers": {"Authorization": HEADER_SECRET}},
                "s": {"type": "slack", "url": f"https://example.com{SLACK}"},
                "t": {"type": "teams", "url": f"https://example.com{TEAMS}"},
                "m": {"type": "email", "host": "h", "from": "a@b", "to": "c@d",
                      "username": "u", "password": SMTP_PASSWORD},
            }
        }
    )  # fmt: skip
    for secret in SECRETS:
        assert secret not in scrub(f"error near {secret}: bad")
