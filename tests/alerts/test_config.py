"""The alert config: defaults, durations, references, one-line errors."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from alerts.config import check_interval_s, load_alert_config, parse_duration
from models.settings import ConfigError
from tests.alerts.conftest import load_proposed


def test_defaults() -> None:
    cfg = load_alert_config({"budgets": [{"name": "all", "amount": "250.5"}]})
    [b] = cfg.budgets
    assert b.amount == Decimal("250.5") and b.currency == "USD"
    assert b.thresholds == [50, 80, 100] and b.forecast_thresholds == [100]
    assert (b.scope, b.pattern, b.spend, b.timezone) == ("all", "*", "billed+estimated", "UTC")
    assert b.refire_after_drop is False
    assert cfg.alerts.sending_timeout == timedelta(minutes=10)
    assert cfg.alerts.resend_interrupted is True
    assert load_alert_config(None).budgets == []


def test_durations() -> None:
    assert parse_duration("10m") == timedelta(minutes=10)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2d") == timedelta(days=2)
    assert parse_duration(45) == timedelta(seconds=45)
    assert parse_duration("90") == timedelta(seconds=90)
    with pytest.raises(ValueError):
        parse_duration("10 minutes please")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"budgets": [{"name": "a", "amount": 0}]}, "budgets[0].amount: Input should be greater"),
        ({"budgets": [{"name": "a", "amount": 1, "timezone": "Mars/Base"}]}, "unknown time zone"),
        ({"budgets": [{"name": "a", "amount": 1, "colour": "red"}]}, "colour: unknown setting"),
        ({"budgets": [{"name": "a", "amount": 1, "channels": ["x"]}]}, "unknown channel 'x'"),
        (
            {"budgets": [{"name": "a", "amount": 1}, {"name": "a", "amount": 2}]},
            "two budgets named 'a'",
        ),
        ({"alerts": {"rules": [{"name": "r", "kind": "rate_429"}]}}, "needs threshold (in %)"),
        ({"alerts": {"rules": [{"name": "r", "kind": "staleness"}]}}, "needs max_lag"),
        ({"alerts": {"rules": [{"name": "a:b", "kind": "staleness"}]}}, "name: String should"),
        ({"channels": {"x": {"type": "pager"}}}, "channels.x"),
    ],
)
def test_errors_are_one_line(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_alert_config(raw)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_from_a_toml_file_and_settings(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'retention_days = 30\n[alerts]\ninterval = "2m"\n'
        '[[budgets]]\nname = "x"\namount = 5\ncurrency = "eur"\nthresholds = [90, 10, 90]\n'
    )
    from_file = load_alert_config(path)
    from_settings = load_alert_config(load_proposed(path))
    assert from_file == from_settings
    assert from_file.budgets[0].currency == "EUR"
    assert from_file.budgets[0].thresholds == [10, 90]
    assert check_interval_s(load_proposed(path)) == 120
    with pytest.raises(ConfigError, match="not found"):
        load_alert_config(tmp_path / "missing.toml")
