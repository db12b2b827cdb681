"""The month-end forecast against known series (pure, no store)."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from alerts.forecast import forecast_month, month_bounds, short_date


def weekly(first: date, last: date, weekday: str, weekend: str) -> dict[date, Decimal]:
    out = {}
    d = first
    while d <= last:
        out[d] = Decimal(weekend if d.weekday() >= 5 else weekday)
        d += timedelta(days=1)
    return out


def test_weekly_series_is_forecast_exactly() -> None:
    # Nov 2025: starts on a Saturday; 20 weekdays and 10 weekend days.
    series = weekly(date(2025, 10, 20), date(2025, 11, 16), "40", "9.6")
    f = forecast_month(series, date(2025, 11, 17), history_start=date(2025, 10, 20))
    assert f.month_end == Decimal("896.0")  # 20 × 40 + 10 × 9.6
    assert f.month_to_date == Decimal("457.6")  # Nov 1–16
    assert f.month_end_day == date(2025, 11, 30)
    assert f.history_days == 14
    assert f.weekday_rates[0] == Decimal(40) and f.weekday_rates[6] == Decimal("9.6")


def test_weekday_weighting_beats_a_flat_run_rate() -> None:
    """With 7 weekdays and 4 weekend days left, a flat 7-day mean over-forecasts."""
    series = weekly(date(2025, 10, 1), date(2025, 11, 19), "100", "0")
    f = forecast_month(series, date(2025, 11, 20))
    assert f.month_end == Decimal(20 * 100)
    seven_day_mean = sum(series[date(2025, 11, 19) - timedelta(days=i)] for i in range(7)) / 7
    naive = f.month_to_date + seven_day_mean * 11
    assert naive > f.month_end + 80


def test_a_spike_older_than_14_days_fades_out() -> None:
    series = weekly(date(2025, 10, 1), date(2025, 11, 16), "10", "10")
    series[date(2025, 11, 2)] = Decimal(1000)  # 15 days before today: outside the lookback
    f = forecast_month(series, date(2025, 11, 17))
    assert f.month_end == sum(series[date(2025, 11, d)] for d in range(1, 17)) + 14 * 10
    series[date(2025, 11, 10)] = Decimal(1000)  # a Monday inside: Mondays average (10+1000)/2
    f = forecast_month(series, date(2025, 11, 17))
    mondays_left = [17, 24]
    expected = sum(series[date(2025, 11, d)] for d in range(1, 17)) + 12 * 10
    expected += len(mondays_left) * Decimal(505)
    assert f.month_end == expected


def test_today_spend_so_far_is_kept_when_above_its_rate() -> None:
    series = weekly(date(2025, 10, 1), date(2025, 11, 16), "10", "10")
    series[date(2025, 11, 17)] = Decimal(50)  # today, partial, already above the Monday rate
    f = forecast_month(series, date(2025, 11, 17))
    assert f.month_end == Decimal(16 * 10 + 50 + 13 * 10)
    assert f.month_to_date == Decimal(16 * 10 + 50)


def test_billing_lag_forecasts_the_unbilled_days() -> None:
    """Billed basis: the bill reached Nov 14 only, so 15–16 are forecast too."""
    series = weekly(date(2025, 10, 1), date(2025, 11, 14), "40", "9.6")
    f = forecast_month(series, date(2025, 11, 17), known_through=date(2025, 11, 14))
    assert f.known_through == date(2025, 11, 14)
    assert f.month_end == Decimal("896.0")


def test_too_little_history_gives_no_forecast() -> None:
    series = weekly(date(2025, 11, 12), date(2025, 11, 16), "40", "10")
    f = forecast_month(series, date(2025, 11, 17), history_start=date(2025, 11, 12))
    assert f.month_end is None and f.history_days == 5
    f = forecast_month(series, date(2025, 11, 19), history_start=date(2025, 11, 12))
    assert f.month_end is not None and f.history_days == 7  # 12–18, 17–18 count as zero


def test_lookback_crosses_the_month_start() -> None:
    """On the 2nd the forecast still has 14 days of history (from the previous month)."""
    series = weekly(date(2025, 11, 1), date(2025, 12, 1), "30", "30")
    f = forecast_month(series, date(2025, 12, 2))
    assert f.month_to_date == Decimal(30) and f.month_end == Decimal(31 * 30)


def test_dates() -> None:
    assert month_bounds(date(2024, 2, 10)) == (date(2024, 2, 1), date(2024, 2, 29))
    assert short_date(date(2025, 11, 30)) == "30 Nov"
