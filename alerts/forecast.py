"""Month-end forecast of a budget: a day-of-week-weighted run rate over the last 14 days.

Claude spend has a weekly shape (weekdays busy, weekends quiet), so a plain average of the last
few days over-forecasts on a Monday after a quiet weekend and under-forecasts on a Friday. The
method, on a daily spend series ``s(d)``:

1. ``known`` is the last *complete* day: yesterday, or for the ``billed`` basis the last day the
   bill has reached (never today: today is still filling up).
2. The lookback is the 14 days ending at ``known`` (fewer if the store is younger; at least
   ``MIN_HISTORY_DAYS`` = 7, so every weekday has a sample, else there is no forecast). Days
   without spend in it count as zero.
3. The rate of weekday ``w`` is the mean of ``s(d)`` over the lookback days falling on ``w``
   (two samples each with 14 days of history).
4. forecast = the spend of the month's days up to ``known``
   + for every later day of the month (today included): ``max(spend already recorded for that
   day, rate of its weekday)``.

So a series that repeats weekly is forecast exactly, a spike two weeks ago fades out, and what
was already spent today is never forecast away. Money stays ``Decimal`` (sums are exact).
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

LOOKBACK_DAYS = 14
MIN_HISTORY_DAYS = 7
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def month_bounds(day: date) -> tuple[date, date]:
    """First and last day of ``day``'s month."""
    last = calendar.monthrange(day.year, day.month)[1]
    return day.replace(day=1), day.replace(day=last)


def short_date(day: date) -> str:
    """``30 Nov``: locale-independent, the form forecast messages use."""
    return f"{day.day} {MONTHS[day.month - 1]}"


def month_label(day: date) -> str:
    return f"{MONTHS[day.month - 1]} {day.year}"


@dataclass(frozen=True)
class Forecast:
    month_to_date: Decimal
    #: None: not enough history (fewer than MIN_HISTORY_DAYS complete days).
    month_end: Decimal | None
    month_end_day: date
    known_through: date
    history_days: int
    weekday_rates: dict[int, Decimal]


def weekday_rates(
    series: Mapping[date, Decimal], known: date, history_start: date | None
) -> tuple[dict[int, Decimal], int]:
    """Mean spend per weekday (0 = Monday) over the lookback ending at ``known``."""
    first = known - timedelta(days=LOOKBACK_DAYS - 1)
    if history_start is not None:
        first = max(first, history_start)
    days = [first + timedelta(days=i) for i in range((known - first).days + 1)]
    sums: dict[int, Decimal] = {}
    counts: dict[int, int] = {}
    for d in days:
        w = d.weekday()
        sums[w] = sums.get(w, Decimal(0)) + series.get(d, Decimal(0))
        counts[w] = counts.get(w, 0) + 1
    return {w: sums[w] / counts[w] for w in sums}, len(days)


def forecast_month(
    series: Mapping[date, Decimal],
    today: date,
    *,
    known_through: date | None = None,
    history_start: date | None = None,
) -> Forecast:
    """Month-to-date and forecast month-end of ``today``'s month (see the module docstring).

    ``series``: spend per day (days absent = zero). ``known_through``: the last complete day
    (default yesterday; capped at yesterday). ``history_start``: the first day the store has
    data for; days before it are unknown, not zero.
    """
    first, last = month_bounds(today)
    yesterday = today - timedelta(days=1)
    known = min(known_through or yesterday, yesterday)
    mtd = sum((v for d, v in series.items() if first <= d <= last), Decimal(0))
    rates, n = weekday_rates(series, known, history_start)
    if history_start is not None and history_start > known:
        n = 0
    if n < MIN_HISTORY_DAYS:
        return Forecast(mtd, None, last, known, max(n, 0), {})
    total = sum((v for d, v in series.items() if first <= d <= min(known, last)), Decimal(0))
    day = max(first, known + timedelta(days=1))
    while day <= last:
        total += max(series.get(day, Decimal(0)), rates[day.weekday()])
        day += timedelta(days=1)
    return Forecast(mtd, total, last, known, n, rates)
