"""Budget evaluation: month-to-date and forecast spend of each budget, and the crossings.

Spend comes from ``collector.spend`` (billed per deployment and day, split from the resource
group's Marketplace bill; estimated from token metrics × prices). Two bases:

- ``billed``: billed rows only. The forecast's last complete day is the last day the bill has
  reached anywhere in the store (billing lags 1–3 days).
- ``billed+estimated``: per resource group, billed for the days its bill has reached, the
  estimate for the later days (up to today, partially). The forecast's last complete day is
  yesterday.

Time zone: cost data is daily by usage date (Cost Management's granularity, UTC). A budget's
month in zone Z covers the usage dates of Z's current calendar month; Z decides when the month
rolls over (the period key, so a new month starts afresh at local midnight), which day is
"today" for the forecast, and the month-end named in messages.

Currency: a budget counts spend in its own currency only. Billed rows are in the billing
currency and shown as billed; estimates are in the prices table's currency and are converted
with the budget's ``fx_rate`` when given, else left out (both noted in the alert's details).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from fnmatch import fnmatch
from typing import Any

from sqlalchemy import Connection, delete, select

from alerts.config import AlertConfig, BudgetConfig
from alerts.events import Candidate, EventState
from alerts.forecast import Forecast, forecast_month, month_bounds, month_label, short_date
from collector.spend import BilledSpend, EstimatedSpend, billed_spend, estimated_spend
from models.db import upsert
from models.tables import AlertEvent, Budget

#: Days of spend read before the month (the forecast's 14-day lookback plus billing lag).
READ_BACK_DAYS = 24


def money(amount: Decimal, currency: str) -> str:
    """``1,234.56 EUR``: the billing currency's code, never a converted or assumed ``$``."""
    return f"{amount:,.2f} {currency}"


def budget_key(budget: BudgetConfig) -> str:
    return f"budget:{budget.name}"


@dataclass(frozen=True)
class SpendData:
    """Estimated and billed spend per deployment and day for a range of usage dates."""

    first: date
    last: date
    estimated: list[EstimatedSpend]
    billed: list[BilledSpend]

    @classmethod
    def load(cls, conn: Connection, first: date, last: date) -> SpendData:
        estimated = estimated_spend(conn, first, last)
        billed = billed_spend(conn, first, last, estimated=estimated)
        return cls(first, last, estimated, billed)

    def history_start(self, basis: str = "billed+estimated") -> date | None:
        """The first day with data of the basis: days before it are unknown, not zero."""
        days = [r.day for r in self.billed]
        if basis != "billed":
            days += [r.day for r in self.estimated]
        return min(days) if days else None

    def billed_through(self) -> date | None:
        return max((r.day for r in self.billed), default=None)

    def group_billed_through(self) -> dict[tuple[str, str], date]:
        out: dict[tuple[str, str], date] = {}
        for r in self.billed:
            key = _group(r)
            if key not in out or r.day > out[key]:
                out[key] = r.day
        return out


def _group(row: EstimatedSpend | BilledSpend) -> tuple[str, str]:
    return (row.subscription_id or "").lower(), (row.resource_group or "").lower()


def _resource_name(arm_id: str) -> str:
    return arm_id.rstrip("/").rsplit("/", 1)[-1] if arm_id else ""


def in_scope(budget: BudgetConfig, row: EstimatedSpend | BilledSpend) -> bool:
    """Whether a spend row belongs to the budget's scope (fnmatch, case-insensitive)."""
    if budget.scope == "all":
        return True
    pattern = budget.pattern.lower()
    resource = _resource_name(row.resource_arm_id).lower()
    candidates: list[str] = {
        "subscription": [row.subscription_id],
        "resource_group": [row.resource_group],
        "resource": [resource, row.resource_arm_id],
        "deployment": [row.deployment_name, f"{resource}/{row.deployment_name}"],
        "model": [row.model_name],
    }[budget.scope]
    return any(value and fnmatch(value.lower(), pattern) for value in candidates)


@dataclass
class BudgetSeries:
    series: dict[date, Decimal]
    known_through: date | None
    notes: list[str] = field(default_factory=list)


def budget_series(budget: BudgetConfig, data: SpendData) -> BudgetSeries:
    """Daily spend of the budget's scope in its currency, per its spend basis."""
    series: dict[date, Decimal] = defaultdict(lambda: Decimal(0))
    skipped: dict[str, Decimal] = defaultdict(lambda: Decimal(0))
    unpriced: set[str] = set()
    through = data.group_billed_through()
    for b in data.billed:
        if not in_scope(budget, b):
            continue
        if b.currency.upper() != budget.currency:
            skipped[f"billed {b.currency}"] += b.cost
            continue
        series[b.day] += b.cost
    if budget.spend == "billed+estimated":
        for e in data.estimated:
            if not in_scope(budget, e):
                continue
            if e.day <= through.get(_group(e), date.min):
                continue  # billed already
            if e.cost is None:
                unpriced.add(e.model_name)
                continue
            cost = e.cost
            if e.currency.upper() != budget.currency:
                if budget.fx_rate is None:
                    skipped[f"estimated {e.currency}"] += cost
                    continue
                cost = cost * budget.fx_rate
            series[e.day] += cost
    notes = [
        f"left out {money(amount, label.split()[1])} of {label.split()[0]} spend in another "
        f"currency than {budget.currency}" + (" (set fx_rate)" if "estimated" in label else "")
        for label, amount in sorted(skipped.items())
    ]
    if unpriced:
        notes.append(f"no price for {', '.join(sorted(unpriced))}: not estimated")
    known = data.billed_through() if budget.spend == "billed" else None
    return BudgetSeries(dict(series), known, notes)


@dataclass(frozen=True)
class BudgetStatus:
    budget: BudgetConfig
    period: str
    today: date
    forecast: Forecast
    notes: list[str]

    @property
    def actual_pct(self) -> float:
        return float(self.forecast.month_to_date / self.budget.amount * 100)

    @property
    def forecast_pct(self) -> float | None:
        if self.forecast.month_end is None:
            return None
        return float(self.forecast.month_end / self.budget.amount * 100)


def local_today(budget: BudgetConfig, now: datetime) -> date:
    return now.astimezone(budget.zone).date()


def spend_range(budgets: list[BudgetConfig], now: datetime) -> tuple[date, date]:
    """Usage dates to read so every budget's month and forecast lookback are covered."""
    todays = [local_today(b, now) for b in budgets] or [now.date()]
    first = min(month_bounds(t)[0] for t in todays)
    first = min(first, min(todays) - timedelta(days=READ_BACK_DAYS))
    return first, max(month_bounds(t)[1] for t in todays)


def evaluate_budget(budget: BudgetConfig, data: SpendData, now: datetime) -> BudgetStatus:
    today = local_today(budget, now)
    found = budget_series(budget, data)
    forecast = forecast_month(
        found.series,
        today,
        known_through=found.known_through,
        history_start=data.history_start(budget.spend),
    )
    return BudgetStatus(budget, f"{today:%Y-%m}", today, forecast, found.notes)


def _threshold_key(value: float) -> str:
    return f"{value:g}"


def _details(status: BudgetStatus, kind: str, threshold: float, link: str) -> dict[str, Any]:
    b, f = status.budget, status.forecast
    facts = [
        ["Month to date", f"{money(f.month_to_date, b.currency)} ({status.actual_pct:.0f} %)"],
    ]
    if f.month_end is not None:
        facts.append(
            [
                f"Forecast by {short_date(f.month_end_day)}",
                f"{money(f.month_end, b.currency)} ({status.forecast_pct:.0f} %)",
            ]
        )
    facts += [
        ["Budget", f"{money(b.amount, b.currency)} / month"],
        ["Threshold", f"{threshold:g} % ({kind})"],
        ["Month", f"{month_label(status.today)} ({b.timezone})"],
        ["Scope", b.scope_text()],
        ["Spend basis", b.spend.replace("+", " + ")],
    ]
    return {
        "type": "budget",
        "budget": b.name,
        "title": _title(status, kind),
        "facts": facts,
        "link": link,
        "currency": b.currency,
        "amount": str(b.amount),
        "month_to_date": str(f.month_to_date),
        "forecast": None if f.month_end is None else str(f.month_end),
        "month_end": f.month_end_day.isoformat(),
        "timezone": b.timezone,
        "notes": status.notes,
    }


def _title(status: BudgetStatus, kind: str) -> str:
    b = status.budget
    if kind == "forecast":
        return (
            f"Budget {b.name}: forecast to reach {status.forecast_pct:.0f} % "
            f"by {short_date(status.forecast.month_end_day)}"
        )
    return f"Budget {b.name}: {status.actual_pct:.0f} % of the monthly budget spent"


def _message(status: BudgetStatus, kind: str, threshold: float) -> str:
    b, f = status.budget, status.forecast
    budget_text = money(b.amount, b.currency)
    if kind == "forecast":
        assert f.month_end is not None
        return (
            f"{_title(status, kind)} ({money(f.month_end, b.currency)} of {budget_text}; "
            f"{money(f.month_to_date, b.currency)} spent so far; threshold {threshold:g} %)"
        )
    return (
        f"{_title(status, kind)}: {money(f.month_to_date, b.currency)} of {budget_text} in "
        f"{month_label(status.today)} (threshold {threshold:g} %)"
    )


def budget_candidates(
    status: BudgetStatus, state: EventState, channels: list[str], link: str
) -> list[Candidate]:
    """New alerts (and re-arm markers) for one budget, given what already fired this month.

    Per (threshold, kind) the month's first crossing fires (period ``YYYY-MM``); thresholds
    crossed in the same check are all recorded but only the highest is sent. Once fired it
    stays fired for the month, whatever later revisions do, unless ``refire_after_drop``: then
    a drop below stores a ``<kind>-cleared`` marker and the next crossing is a new episode
    (period ``YYYY-MM#2``, ``#3``…), each again at most once.
    """
    b = status.budget
    rule = budget_key(b)
    out: list[Candidate] = []
    checks: list[tuple[str, float, bool | None]] = []
    for t in b.thresholds:
        checks.append(("actual", t, status.actual_pct >= t))
    fpct = status.forecast_pct
    for t in b.forecast_thresholds:
        if fpct is None:
            crossed: bool | None = None  # no forecast: neither crossed nor cleared
        elif fpct >= t:
            # once the actual spend crossed, the actual alert says it: no forecast alert
            crossed = True if status.actual_pct < t else None
        else:
            crossed = False
        checks.append(("forecast", t, crossed))
    highest: dict[str, int] = {}
    for kind, t, crossed in checks:
        threshold = _threshold_key(t)
        period = state.budget_period(status.period, threshold, kind)
        fired = state.exists(period, threshold, kind)
        if crossed and not fired:
            out.append(
                Candidate(
                    rule=rule,
                    period=period,
                    threshold=threshold,
                    kind=kind,
                    value=round(status.actual_pct if kind == "actual" else fpct or 0.0, 3),
                    message=_message(status, kind, t),
                    details=_details(status, kind, t, link),
                    channels=channels,
                )
            )
            highest[kind] = len(out) - 1
        elif crossed is False and fired and b.refire_after_drop:
            cleared = f"{kind}-cleared"
            if not state.exists(period, threshold, cleared):
                pct = status.actual_pct if kind == "actual" else fpct or 0.0
                out.append(
                    Candidate(
                        rule=rule,
                        period=period,
                        threshold=threshold,
                        kind=cleared,
                        value=round(pct, 3),
                        message=(
                            f"Budget {b.name}: {kind} back to {pct:.0f} % (below {t:g} %); "
                            "the threshold re-arms"
                        ),
                        details={"type": "budget", "budget": b.name, "link": link},
                        channels=[],
                    )
                )
    # Thresholds crossed in the same check (a jump, a late bill, the first check): each is
    # recorded, so none fires later, but only the highest one is sent.
    for i, c in enumerate(out):
        if c.kind in highest and i != highest[c.kind]:
            top = out[highest[c.kind]]
            c.channels = []
            c.details["superseded_by"] = top.threshold
            c.message += f" (sent as the {top.threshold} % alert)"
    return out


def check_budgets(
    conn: Connection, config: AlertConfig, now: datetime
) -> tuple[list[BudgetStatus], list[Candidate]]:
    """Evaluate every budget (reads only); the caller records the candidates."""
    if not config.budgets:
        return [], []
    first, last = spend_range(config.budgets, now)
    data = SpendData.load(conn, first, last)
    link = f"{config.alerts.dashboard_url}/spend" if config.alerts.dashboard_url else ""
    statuses: list[BudgetStatus] = []
    candidates: list[Candidate] = []
    for budget in config.budgets:
        status = evaluate_budget(budget, data, now)
        statuses.append(status)
        state = EventState.load(conn, budget_key(budget), prefix=status.period)
        candidates += budget_candidates(status, state, config.channels_for(budget), link)
    return statuses, candidates


def sync_budget_table(conn: Connection, config: AlertConfig) -> int:
    """Mirror the configured budgets into ``budgets`` (the dashboard reads them there)."""
    names = [b.name for b in config.budgets]
    conn.execute(delete(Budget).where(Budget.name.not_in(names)) if names else delete(Budget))
    if not names:
        return 0
    return upsert(
        conn,
        Budget,
        [
            {
                "name": b.name,
                "scope_kind": b.scope,
                "scope_pattern": b.pattern,
                "amount": b.amount,
                "currency": b.currency,
                "thresholds": {"percent": b.thresholds, "forecast": b.forecast_thresholds},
                "spend_basis": b.spend,
                "timezone": b.timezone,
                "channels": {"names": config.channels_for(b)},
            }
            for b in config.budgets
        ],
        key=["name"],
    )


def fired_this_month(conn: Connection, budget: BudgetConfig, period: str) -> list[Any]:
    """The month's alert events of a budget (for ``alerts list``)."""
    return list(
        conn.execute(
            select(AlertEvent)
            .where(AlertEvent.rule == budget_key(budget), AlertEvent.period.like(f"{period}%"))
            .order_by(AlertEvent.id)
        ).all()
    )
