"""Budget alerts on SQLite and PostgreSQL: crossings, once per month, revisions, months, zones,
currencies, forecast messages, the spend bases."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from alerts.config import load_alert_config
from alerts.job import check
from collector.spend import estimated_spend
from models.tables import AlertDelivery, AlertEvent, Budget
from tests.alerts.conftest import Clock, Store


def config(**budget: Any) -> Any:
    base = {
        "name": "team",
        "amount": 1000,
        "spend": "billed",
        "forecast_thresholds": [],
    }
    return load_alert_config({"budgets": [{**base, **budget}]})


def events(store: Store, rule: str = "budget:team") -> list[tuple[str, str, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(AlertEvent.period, AlertEvent.threshold, AlertEvent.kind)
            .where(AlertEvent.rule == rule)
            .order_by(AlertEvent.id)
        ).all()
    return [tuple(r) for r in rows]


def daily_bills(store: Store, first: date, last: date, amount: str, **kw: Any) -> None:
    d = first
    while d <= last:
        store.add_bill(d, "claude-sonnet-4-5", amount, **kw)
        d += timedelta(days=1)


def test_thresholds_fire_once_and_revisions_do_not_refire(store: Store) -> None:
    cfg = config()
    clock = Clock(datetime(2025, 11, 20, 12, tzinfo=UTC))
    daily_bills(store, date(2025, 11, 1), date(2025, 11, 19), "30")  # 570 = 57 %
    report = check(store.engine, cfg, clock)
    assert events(store) == [("2025-11", "50", "actual")]
    assert report.budgets[0].actual_pct == 57.0
    assert "57 %" in report.new[0].message
    check(store.engine, cfg, clock)
    assert len(events(store)) == 1, "a second check fires nothing new"

    store.add_bill(date(2025, 11, 20), "claude-sonnet-4-5", "250")  # 820 = 82 %
    check(store.engine, cfg, clock)
    assert events(store)[-1] == ("2025-11", "80", "actual")

    store.add_bill(date(2025, 11, 20), "claude-sonnet-4-5", "100")  # revised down: 67 %
    check(store.engine, cfg, clock)
    store.add_bill(date(2025, 11, 20), "claude-sonnet-4-5", "250")  # and up again: 82 %
    check(store.engine, cfg, clock)
    assert events(store) == [("2025-11", "50", "actual"), ("2025-11", "80", "actual")]

    # the dashboard reads the budget from the store
    with store.engine.connect() as conn:
        row = conn.execute(select(Budget)).one()
    assert (row.name, row.amount, row.spend_basis) == ("team", Decimal(1000), "billed")


def test_refire_after_drop_when_configured(store: Store) -> None:
    cfg = config(refire_after_drop=True, thresholds=[80])
    clock = Clock(datetime(2025, 11, 20, 12, tzinfo=UTC))
    daily_bills(store, date(2025, 11, 1), date(2025, 11, 19), "30")
    store.add_bill(date(2025, 11, 20), "claude-sonnet-4-5", "250")
    check(store.engine, cfg, clock)
    store.add_bill(date(2025, 11, 20), "claude-sonnet-4-5", "100")
    check(store.engine, cfg, clock)
    check(store.engine, cfg, clock)  # still below: one marker only
    store.add_bill(date(2025, 11, 20), "claude-sonnet-4-5", "250")
    check(store.engine, cfg, clock)
    check(store.engine, cfg, clock)
    assert events(store) == [
        ("2025-11", "80", "actual"),
        ("2025-11", "80", "actual-cleared"),
        ("2025-11#2", "80", "actual"),
    ]


def test_a_new_month_starts_afresh(store: Store) -> None:
    cfg = config(thresholds=[50])
    daily_bills(store, date(2025, 11, 1), date(2025, 11, 30), "30")  # 900
    check(store.engine, cfg, Clock(datetime(2025, 11, 30, 23, 59, tzinfo=UTC)))
    assert events(store) == [("2025-11", "50", "actual")]
    store.add_bill(date(2025, 12, 1), "claude-sonnet-4-5", "100")  # 10 % of December
    check(store.engine, cfg, Clock(datetime(2025, 12, 1, 0, 5, tzinfo=UTC)))
    assert len(events(store)) == 1
    store.add_bill(date(2025, 12, 2), "claude-sonnet-4-5", "450")  # 55 %
    check(store.engine, cfg, Clock(datetime(2025, 12, 2, 12, tzinfo=UTC)))
    assert events(store) == [("2025-11", "50", "actual"), ("2025-12", "50", "actual")]


def test_budget_month_in_a_non_utc_time_zone(store: Store) -> None:
    """At 2025-11-30 12:00 UTC it is already December in Auckland, still November in UTC
    and Los Angeles: each budget alerts in its own month."""
    cfg = load_alert_config(
        {
            "budgets": [
                {"name": tz.split("/")[-1], "amount": 1000, "thresholds": [50],
                 "forecast_thresholds": [], "spend": "billed", "timezone": tz}
                for tz in ("UTC", "Pacific/Auckland", "America/Los_Angeles")
            ]
        }
    )  # fmt: skip
    daily_bills(store, date(2025, 11, 1), date(2025, 11, 29), "30")  # 870 in November
    now = Clock(datetime(2025, 11, 30, 12, tzinfo=UTC))
    report = check(store.engine, cfg, now)
    by_name = {s.budget.name: s for s in report.budgets}
    assert by_name["Auckland"].period == "2025-12"
    assert by_name["Auckland"].forecast.month_to_date == 0
    assert by_name["UTC"].period == by_name["Los_Angeles"].period == "2025-11"
    assert events(store, "budget:UTC") == [("2025-11", "50", "actual")]
    assert events(store, "budget:Los_Angeles") == [("2025-11", "50", "actual")]
    assert events(store, "budget:Auckland") == []
    # 2025-12-01 05:00 UTC: December in UTC, still 30 Nov 21:00 in Los Angeles
    report = check(store.engine, cfg, Clock(datetime(2025, 12, 1, 5, tzinfo=UTC)))
    by_name = {s.budget.name: s for s in report.budgets}
    assert by_name["UTC"].period == "2025-12" and by_name["Los_Angeles"].period == "2025-11"
    assert by_name["Los_Angeles"].today == date(2025, 11, 30)


def test_currency_other_than_usd_is_shown_as_billed(store: Store) -> None:
    cfg = load_alert_config(
        {
            "budgets": [
                {"name": "eu", "amount": "1000", "currency": "EUR", "thresholds": [50],
                 "forecast_thresholds": [], "spend": "billed"},
                {"name": "us", "amount": "1000", "currency": "USD", "thresholds": [50],
                 "forecast_thresholds": [], "spend": "billed"},
            ]
        }
    )  # fmt: skip
    daily_bills(store, date(2025, 11, 1), date(2025, 11, 19), "32.5", currency="EUR")  # 617.50
    report = check(store.engine, cfg, Clock(datetime(2025, 11, 20, tzinfo=UTC)))
    [alert] = report.new
    assert alert.rule == "budget:eu"
    assert "617.50 EUR of 1,000.00 EUR" in alert.message
    assert "USD" not in alert.message and "$" not in alert.message
    assert ["Month to date", "617.50 EUR (62 %)"] in alert.details["facts"]
    us = next(s for s in report.budgets if s.budget.name == "us")
    assert us.forecast.month_to_date == 0
    assert any("617.50 EUR" in note and "another currency" in note for note in us.notes)


def test_forecast_alert_says_so(store: Store) -> None:
    """Weekdays 40, weekends 9.6 → month-end 896 of 800 = 112 %, forecast on 17 Nov."""
    cfg = config(amount=800, thresholds=[80], forecast_thresholds=[100])
    d = date(2025, 10, 20)
    while d <= date(2025, 11, 16):
        store.add_bill(d, "claude-sonnet-4-5", "9.6" if d.weekday() >= 5 else "40")
        d += timedelta(days=1)
    report = check(store.engine, cfg, Clock(datetime(2025, 11, 17, 9, tzinfo=UTC)))
    assert events(store) == [("2025-11", "100", "forecast")]
    [alert] = report.new
    assert "forecast to reach 112 % by 30 Nov" in alert.message
    assert alert.value == 112.0
    assert "896.00 USD of 800.00 USD" in alert.message
    assert report.budgets[0].forecast.month_end == Decimal("896.0")
    # once the actual spend crosses 100 %, no second forecast alert; the actual one fires
    store.add_bill(date(2025, 11, 17), "claude-sonnet-4-5", "400")
    check(store.engine, cfg, Clock(datetime(2025, 11, 18, 9, tzinfo=UTC)))
    assert events(store) == [("2025-11", "100", "forecast"), ("2025-11", "80", "actual")]


def _tokens(store: Store, dep: str, day: date, inp: int, out: int) -> None:
    minute = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    store.add_metric(dep, minute, "InputTokens", inp)
    store.add_metric(dep, minute, "OutputTokens", out)


def test_billed_plus_estimated_fills_the_days_billing_has_not_reached(store: Store) -> None:
    for day in range(1, 21):
        _tokens(store, "prod-sonnet", date(2025, 11, day), 1_000_000, 100_000)  # 4.50 USD/day
    daily_bills(store, date(2025, 11, 1), date(2025, 11, 18), "5")  # billed through the 18th
    now = Clock(datetime(2025, 11, 20, 18, tzinfo=UTC))
    both = config(spend="billed+estimated", thresholds=[100])
    billed = config(spend="billed", thresholds=[100])
    [s_both] = check(store.engine, both, now).budgets
    [s_billed] = check(store.engine, billed, now).budgets
    assert s_billed.forecast.month_to_date == Decimal(18 * 5)
    assert s_both.forecast.month_to_date == Decimal(18 * 5) + 2 * Decimal("4.5")
    with store.engine.connect() as conn:
        est = estimated_spend(conn, date(2025, 11, 19), date(2025, 11, 19))
    assert est[0].cost == Decimal("4.5")


def test_deployment_pattern_scope(store: Store) -> None:
    """A group's bill for a model is split across its deployments by token share; a
    deployment-pattern budget counts only its share."""
    day = date(2025, 11, 3)
    _tokens(store, "prod-sonnet", day, 1_000_000, 0)  # 3 USD estimated
    _tokens(store, "dev-haiku", day, 1_000_000, 0)  # 1 USD estimated
    store.add_bill(day, "claude-sonnet-4-5", "30")
    store.add_bill(day, "claude-haiku-4-5", "10")
    cfg = load_alert_config(
        {
            "budgets": [
                {"name": "prod", "scope": "deployment", "pattern": "PROD-*", "amount": 100,
                 "spend": "billed", "forecast_thresholds": []},
                {"name": "res-a", "scope": "resource", "pattern": "res-a", "amount": 100,
                 "spend": "billed", "forecast_thresholds": []},
                {"name": "haiku", "scope": "model", "pattern": "*haiku*", "amount": 100,
                 "spend": "billed", "forecast_thresholds": []},
            ]
        }
    )  # fmt: skip
    report = check(store.engine, cfg, Clock(datetime(2025, 11, 4, tzinfo=UTC)))
    spent = {s.budget.name: s.forecast.month_to_date for s in report.budgets}
    assert spent == {"prod": Decimal(30), "res-a": Decimal(40), "haiku": Decimal(10)}


def test_thresholds_crossed_together_send_only_the_highest(store: Store) -> None:
    cfg = load_alert_config(
        {
            "budgets": [{"name": "team", "amount": 1000, "spend": "billed",
                         "forecast_thresholds": [], "channels": ["c"]}],
            "channels": {"c": {"type": "webhook", "url": "https://example.invalid/h"}},
        }
    )  # fmt: skip
    daily_bills(store, date(2025, 11, 1), date(2025, 11, 19), "50")  # 950 = 95 %
    report = check(store.engine, cfg, Clock(datetime(2025, 11, 20, tzinfo=UTC)), send=False)
    assert [(c.threshold, c.channels) for c in report.new] == [("50", []), ("80", ["c"])]
    assert report.new[0].message.endswith("(sent as the 80 % alert)")
    with store.engine.connect() as conn:
        assert conn.execute(select(AlertDelivery.channel)).all() == [("c",)]


def test_no_channels_means_no_deliveries(store: Store) -> None:
    daily_bills(store, date(2025, 11, 1), date(2025, 11, 19), "60")
    check(store.engine, config(thresholds=[50]), Clock(datetime(2025, 11, 20, tzinfo=UTC)))
    with store.engine.connect() as conn:
        assert conn.execute(select(AlertDelivery)).all() == []
