"""Stored alerts on the Spend and Collector health pages, and the Request lookup page's live
Log Analytics fallback, through ``streamlit.testing.v1.AppTest`` on real stores.

Alerts are produced by the alerts code path itself (``alerts.job.check`` on a seeded store,
real HTTPS receiver and real SMTP server from ``tests/alerts/conftest.py``); the expected rows
are computed here from what was seeded (bills, request counts, thresholds, which channel was
made to fail), never read back from the store. The live lookup runs against the emulator's
Log Analytics with the dashboard's own settings and ``DefaultAzureCredential`` (the emulator's
managed-identity environment), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from alerts.config import load_alert_config
from alerts.forecast import forecast_month
from alerts.job import check
from collector import coarse_rollups
from collector.jobs.base import JobContext
from dashboard import ui
from models.db import upsert
from models.tables import AlertDelivery, AlertEvent, Budget, Request, Watermark
from tests.alerts.conftest import (  # noqa: F401  (fixtures reused here)
    RG,
    SECRETS,
    SLACK,
    SMTP_PASSWORD,
    Clock,
    Mailbox,
    Receiver,
    _fast_backoff,
    certs,
    receiver,
    seed_store,
    smtp,
)
from tests.collector.conftest import collector_ctx  # noqa: F401
from tests.dashboard.seed import utc_now_minute
from tests.emulator.conftest import emulator, faults  # noqa: F401
from tests.incident.conftest import MSG, make_client, resource, spool  # noqa: F401
from tests.incident.test_ingest import logs_cycle, truth
from tests.incident.test_lookup import HOSTILE

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HOOK_PATH = "/hook/ok/TOKEN-dash-778899"
BAD_MAIL_PASSWORD = "wrong-S3CRET-pass-4242"
RAW_TOKEN = "rawTOKEN-998877665544"
ALL_SECRETS = (*SECRETS, "TOKEN-dash-778899", BAD_MAIL_PASSWORD, RAW_TOKEN)


# --------------------------------------------------------------------------- helpers


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """The alert part of a foundry-watch config file (budgets, channels, alerts.rules)."""
    lines: list[str] = []
    for budget in config.get("budgets", []):
        lines.append("[[budgets]]")
        lines += [f"{k} = {_toml(v)}" for k, v in budget.items()]
    for name, channel in config.get("channels", {}).items():
        lines.append(f'[channels."{name}"]')
        lines += [f'"{k}" = {_toml(v)}' for k, v in channel.items()]
    alerts = config.get("alerts", {})
    lines.append("[alerts]")
    lines += [f"{k} = {_toml(v)}" for k, v in alerts.items() if k != "rules"]
    for rule in alerts.get("rules", []):
        lines.append("[[alerts.rules]]")
        lines += [f"{k} = {_toml(v)}" for k, v in rule.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def channels(receiver: Receiver, smtp: Mailbox) -> dict[str, dict[str, Any]]:  # noqa: F811
    """A working webhook, a Slack hook the receiver fails, working and refused e-mail."""
    web = {"ca_file": str(receiver.ca_file), "timeout_s": 5, "attempts": 1}
    receiver.fail[SLACK] = [500] * 50
    return {
        "ok-hook": {"type": "webhook", "url": receiver.url(HOOK_PATH), **web},
        "bad-slack": {"type": "slack", "url": receiver.url(SLACK), **web},
        "mail": smtp.channel(attempts=1),
        "bad-mail": smtp.channel(password=BAD_MAIL_PASSWORD, attempts=1),
    }


def page_text(at) -> str:
    """Everything a user can read on the page (for the no-secret checks)."""
    parts: list[str] = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "code", "title"):
        parts += [str(e.value) for e in at.get(kind)]
    parts += [d.value.to_csv() for d in at.dataframe]
    parts += [t.value.to_csv() for t in at.table]
    return "\n".join(parts)


def frame_with(at, column: str):
    frames = [d.value for d in at.dataframe if column in d.value.columns]
    assert frames, f"no table with a {column!r} column"
    return frames[0]


def texts(at, kind: str) -> str:
    """The page's (not the sidebar's) elements of one kind, joined."""
    return " ".join(str(e.value) for e in at.main.get(kind))


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Pages cache their queries for a minute; each step of a test must read the store."""
    ui.query.clear()
    yield
    ui.query.clear()


# --------------------------------------------------------------------------- Spend page


def _previous_month_20th() -> datetime:
    first = datetime.now(UTC).date().replace(day=1)
    prev = first - timedelta(days=1)
    return datetime(prev.year, prev.month, 20, 12, 0, tzinfo=UTC)


def test_spend_page_shows_budget_alerts_with_delivery(
    engine,
    open_app,
    receiver: Receiver,  # noqa: F811
    smtp: Mailbox,  # noqa: F811
    tmp_path: Path,
    monkeypatch,
) -> None:
    at_time = _previous_month_20th()
    today = at_time.date()
    store = seed_store(engine)
    daily = Decimal("10")
    bills: dict[date, Decimal] = {}
    for back in range(1, 41):  # 40 billed days up to the day before the check
        day = today - timedelta(days=back)
        store.add_bill(day, "claude-sonnet-4-5", daily, rg=RG)
        store.add_metric(
            "prod-sonnet",
            datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=12),
            "InputTokens",
            1000,
        )
        bills[day] = daily
    with engine.begin() as conn:  # the day rollups the spend estimate reads, as the collector does
        start = datetime.combine(today - timedelta(days=41), datetime.min.time(), UTC)
        coarse_rollups.refresh(conn, start, at_time, parts=("metrics",))
    config = {
        "budgets": [
            {
                "name": "team-all",
                "amount": 200,
                "spend": "billed",
                "thresholds": [50, 80, 100],
                "forecast_thresholds": [100],
                "channels": ["ok-hook", "bad-slack", "mail", "bad-mail"],
            },
            {
                "name": "sonnet",
                "scope": "model",
                "pattern": "claude-sonnet-4-5",
                "amount": 350,
                "spend": "billed",
                "thresholds": [50, 80],
                "forecast_thresholds": [],
                "channels": ["ok-hook"],
            },
            {"name": "opus", "scope": "deployment", "pattern": "prod-opus", "amount": 100},
        ],
        "channels": channels(receiver, smtp),
    }
    path = write_config(tmp_path / "fw.toml", config)
    monkeypatch.setenv("FOUNDRY_WATCH_CONFIG", str(path))
    report = check(engine, load_alert_config(path), Clock(at_time))
    assert not report.errors, report.errors

    # expected, from the seeded bills: billed month to date through the 19th, and the forecast
    month = {d: v for d, v in bills.items() if d.month == today.month and d.year == today.year}
    mtd = sum(month.values())
    assert mtd == 19 * daily
    fc = forecast_month(bills, today, known_through=max(bills), history_start=min(bills))
    team_actual = float(mtd / 200 * 100)  # 95 %: crosses 50 and 80, only 80 is sent
    team_forecast = float(fc.month_end / 200 * 100)
    sonnet_actual = float(mtd / 350 * 100)  # 54.3 %: crosses 50
    sent_all = (
        "bad-mail: failed (1 attempt) · bad-slack: failed (1 attempt) · mail: sent · ok-hook: sent"
    )
    expected = {
        ("team-all", "actual", 50.0): (team_actual, float(mtd), "not sent (superseded"),
        ("team-all", "actual", 80.0): (team_actual, float(mtd), sent_all),
        ("sonnet", "actual", 50.0): (sonnet_actual, float(mtd), "ok-hook: sent"),
    }
    if team_forecast >= 100:
        expected[("team-all", "forecast", 100.0)] = (team_forecast, float(fc.month_end), sent_all)

    at = open_app("spend")
    # "last 24 h" holds none of them: the empty state says how many budgets there are
    assert "No budget alerts fired in this range; budgets configured: 3" in texts(at, "info")
    at.radio(key="fw_range").set_value("Custom").run()
    at.date_input(key="fw_custom").set_value((today - timedelta(days=2), today)).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = frame_with(at, "delivery")
    rows = {(r.budget, r.kind, r.threshold_pct): r for r in shown.itertuples()}
    assert set(rows) == set(expected)
    for key, (value, spend, delivery) in expected.items():
        row = rows[key]
        assert row.value_pct == pytest.approx(value, abs=1e-3), key
        assert row.spend == pytest.approx(spend, rel=1e-9), key
        assert row.delivery.startswith(delivery), key
        assert row.currency == "USD" and row.month == f"{today:%Y-%m}"
        assert row.fired_at.tz_convert(UTC).to_pydatetime() == at_time
    # e-mail and webhook really arrived (the statuses are not just what the store says)
    assert len(receiver.to(HOOK_PATH)) == len([e for e in expected.values() if "ok-hook" in e[2]])
    assert len(smtp.messages) == len([e for e in expected.values() if "mail: sent" in e[2]])
    text = page_text(at)
    for secret in ALL_SECRETS:
        assert secret not in text

    # the sidebar filter keeps the budgets that cover the selection (scope all, prod-opus)
    opus = store.deployments["prod-opus"]
    at.multiselect(key="fw_deps").select(opus).run()
    assert not at.exception
    shown = frame_with(at, "delivery")
    assert set(shown["budget"]) == {"team-all"}
    assert len(shown) == len([k for k in expected if k[0] == "team-all"])


def test_spend_empty_states_explain(world, engine, open_app) -> None:
    at = open_app("spend")
    assert "No budget alerts fired in this range; budgets configured: 1" in texts(at, "info")
    with engine.begin() as conn:
        conn.execute(delete(Budget))
    ui.query.clear()
    at = open_app("spend")
    assert "No budgets configured — see README Alerts" in texts(at, "info")


# --------------------------------------------------------------------------- health page


def test_health_page_shows_operational_alerts_and_failed_deliveries(
    engine,
    open_app,
    receiver: Receiver,  # noqa: F811
    smtp: Mailbox,  # noqa: F811
    tmp_path: Path,
    monkeypatch,
) -> None:
    now = utc_now_minute()
    c1, c2 = now - timedelta(minutes=30), now
    store = seed_store(engine)
    # at c1 (window [c1-12m, c1-2m)): prod-opus 20 % 5xx; prod-sonnet has no traffic yet
    store.add_requests("prod-opus", c1 - timedelta(minutes=12), 10, {"200": 8, "500": 2})
    # at c2: prod-opus clean again, prod-sonnet 10 % throttled
    store.add_requests("prod-opus", c2 - timedelta(minutes=12), 10, {"200": 10})
    store.add_requests("prod-sonnet", c2 - timedelta(minutes=12), 10, {"200": 9, "429": 1})
    scope = "/subscriptions/00000000-0000-0000-0000-0000000a1e27"
    with engine.begin() as conn:
        upsert(
            conn,
            Watermark,
            [
                {
                    "source": "metrics",
                    "scope": scope,
                    "high_water": c1 - timedelta(minutes=90),
                    "updated_at": c1,
                }
            ],
        )
    rules = [
        {
            "name": "errors",
            "kind": "error_rate",
            "deployments": "prod-opus",
            "threshold": 10,
            "channels": ["ok-hook"],
        },
        {
            "name": "throttle",
            "kind": "rate_429",
            "deployments": "prod-sonnet",
            "threshold": 5,
            "channels": ["ok-hook", "bad-slack"],
        },
        {
            "name": "stale",
            "kind": "staleness",
            "source": "metrics",
            "max_lag": "20m",
            "channels": ["bad-mail"],
        },
    ]
    path = write_config(
        tmp_path / "fw.toml", {"channels": channels(receiver, smtp), "alerts": {"rules": rules}}
    )
    monkeypatch.setenv("FOUNDRY_WATCH_CONFIG", str(path))
    config = load_alert_config(path)
    for clock in (c1, c2):
        report = check(engine, config, Clock(clock))
        assert "rules" not in report.errors, report.errors
    # a failure stored unscrubbed (an older writer): the page must still mask the token
    with engine.begin() as conn:
        upsert(
            conn,
            AlertEvent,
            [
                {
                    "rule": "budget:legacy",
                    "period": f"{now:%Y-%m}",
                    "threshold": "80",
                    "kind": "actual",
                    "fired_at": now - timedelta(hours=1),
                    "value": 81.0,
                    "message": "Budget legacy: 81 % of the monthly budget spent",
                    "details": {},
                }
            ],
        )
        event_id = conn.execute(
            select(AlertEvent.id).where(AlertEvent.rule == "budget:legacy")
        ).scalar_one()
        upsert(
            conn,
            AlertDelivery,
            [
                {
                    "alert_event_id": event_id,
                    "channel": "old-teams",
                    "status": "failed",
                    "attempts": 12,
                    "last_error": f"old-teams: 404 from https://hooks.example.com/x/{RAW_TOKEN}"
                    "?sig=abc12345678\nTraceback (most recent call last): ...",
                    "delivered_at": None,
                }
            ],
        )

    at = open_app("health")
    ops = frame_with(at, "resolved_at")
    by_rule = {r.rule: r for r in ops.itertuples()}
    assert set(by_rule) == {"errors", "throttle", "stale"}
    errors, throttle, stale = by_rule["errors"], by_rule["throttle"], by_rule["stale"]
    assert (errors.state, errors.subject, errors.check) == (
        "resolved",
        "res-b/prod-opus",
        "error rate",
    )
    assert errors.value == pytest.approx(100 * 2 / 10) and errors.resolved_value == 0.0
    assert errors.fired_at.tz_convert(UTC).to_pydatetime() == c1
    assert errors.resolved_at.tz_convert(UTC).to_pydatetime() == c2
    assert errors.delivery == "ok-hook: sent | resolve: ok-hook: sent"
    assert (throttle.state, throttle.subject, throttle.threshold) == (
        "open",
        "res-a/prod-sonnet",
        "5 %",
    )
    assert throttle.value == pytest.approx(100 * 1 / 10) and throttle.unit == "%"
    assert throttle.delivery == "bad-slack: failed (1 attempt) · ok-hook: sent"
    assert (stale.state, stale.unit, stale.threshold) == ("open", "s", "20 min")
    assert stale.value == pytest.approx(90 * 60)
    assert stale.delivery == "bad-mail: failed (2 attempts)"  # retried by the second check
    assert list(ops["state"][:2]) == ["open", "open"]  # open ones first
    assert "2 open operational alert(s); 1 resolved." in texts(at, "error")

    failed = frame_with(at, "channel").set_index("channel")
    assert sorted(failed.index) == ["bad-mail", "bad-slack", "old-teams"]
    assert (
        failed.loc["bad-mail", "attempts"] == 2
        and "login refused" in failed.loc["bad-mail", "error"]
    )
    assert "500" in failed.loc["bad-slack", "error"]
    assert failed.loc["bad-slack", "alert"] == "rule throttle on res-a/prod-sonnet: firing 5 %"
    old = failed.loc["old-teams", "error"]
    assert old == "old-teams: 404 from https://hooks.example.com/****"
    assert "3 alert delivery(ies) did not reach their channel" in texts(at, "warning")
    text = page_text(at)
    for secret in ALL_SECRETS:
        assert secret not in text
    assert "Traceback" not in text and SLACK not in text and HOOK_PATH not in text


def test_health_empty_state_explains(world, open_app) -> None:
    at = open_app("health")
    info = texts(at, "info")
    assert "No operational alerts fired or open in this range" in info
    assert "operational rules configured: 0" in info
    assert "the alerts job has not run in this store yet" in info
    assert "No failed alert deliveries in this range." in texts(at, "success")


# --------------------------------------------------------------------------- live lookup


def _call(client) -> str:
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=40, messages=MSG
    )
    raw.parse()
    return raw.headers["apim-request-id"]


def _stored(ctx: JobContext) -> int:
    with ctx.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Request)).scalar_one()


def test_live_lookup_finds_a_request_the_store_lacks(
    collector_ctx: JobContext,  # noqa: F811
    emulator,  # noqa: F811
    make_client,  # noqa: F811
    spool: Path,  # noqa: F811
    resource: str,  # noqa: F811
    open_app,
) -> None:
    apim = _call(make_client(spool))
    t = truth(emulator, apim)
    at = open_app("lookup")
    assert at.number_input(key="fw_lookup_days").value == 30  # the retention window
    at.number_input(key="fw_lookup_days").set_value(1)  # like the CLI tests' --window-days 1
    at.text_input(key="fw_lookup").input(apim).run()
    assert not at.exception, [e.value for e in at.exception]
    bundle = at.code[0].value
    assert f"apim-request-id: {apim}" in bundle and "status: 200" in bundle
    assert f"resource: {resource}" in bundle
    assert "Found in Log Analytics (live), not in the store yet" in texts(at, "caption")
    fields = dict(zip(at.table[0].value["field"], at.table[0].value["value"], strict=True))
    assert fields["apim-request-id"] == apim and fields["status"] == "200"
    assert fields["duration"] == ui.ms(t.duration_ms)
    assert fields["tokens in / out"] == "– / –"  # Azure's request logs carry no token counts
    assert fields["region"] == t.deployment.resource.location
    assert fields["source"] == "logs"
    assert _stored(collector_ctx) == 0  # the page wrote nothing

    # once collected, the store answers; the checkbox asks Log Analytics again as well
    logs_cycle(collector_ctx)
    assert _stored(collector_ctx) >= 1
    ui.query.clear()
    at.text_input(key="fw_lookup").input(apim.upper()).run()
    assert texts(at, "caption") == "Found in store"  # no live search this time
    at.checkbox(key="fw_lookup_live").check().run()
    assert not at.exception
    assert "Found in store, Log Analytics (live)" in texts(at, "caption")
    assert f"apim-request-id: {apim}" in at.code[0].value


def test_live_lookup_refuses_hostile_ids_and_reports_azure_errors(
    collector_ctx: JobContext,  # noqa: F811
    faults,  # noqa: F811
    open_app,
) -> None:
    tripwire = faults.add(kind="error", endpoint="logs", status=500, count=None)
    at = open_app("lookup")
    at.number_input(key="fw_lookup_days").set_value(1)
    for hostile in HOSTILE:
        at.text_input(key="fw_lookup").input(hostile).run()
        assert not at.exception, hostile
        if not hostile.strip():
            assert not at.error and not at.code
            continue
        (error,) = at.error
        assert "is not a request id" in error.value and "\n" not in error.value, hostile
        assert not at.code and not at.table
    assert tripwire.fired == 0  # no hostile id reached Log Analytics
    faults.clear()

    faults.add(kind="error", endpoint="logs", status=403, count=None)
    unknown = str(uuid.uuid4())
    at.text_input(key="fw_lookup").input(unknown).run()
    assert not at.exception
    errors = [e.value for e in at.error]  # one line per workspace the store knows
    assert errors and all("403 forbidden" in e and "\n" not in e for e in errors), errors
    assert errors[0].startswith("live search on workspace")
    warning = texts(at, "warning")
    assert "No request with this apim-request-id in the store" in warning
    assert "Log Analytics could not be searched" in warning
    assert "Traceback" not in page_text(at)


def test_live_lookup_without_a_credential_is_one_line(
    collector_ctx: JobContext,  # noqa: F811
    open_app,
    monkeypatch,
) -> None:
    monkeypatch.delenv("IDENTITY_ENDPOINT")
    monkeypatch.delenv("IDENTITY_HEADER")
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9")  # no IMDS
    at = open_app("lookup")
    at.number_input(key="fw_lookup_days").set_value(1)
    at.text_input(key="fw_lookup").input(str(uuid.uuid4())).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors and all("\n" not in e and "credential" in e.lower() for e in errors), errors
    assert "Traceback" not in page_text(at)
