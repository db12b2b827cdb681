"""Spend per deployment and day: estimated from tokens, billed from Cost Management, reconciled.

Read-only functions over the store (the dashboard and the budget alerts call them); each takes a
``Connection`` and an inclusive range of UTC days and returns plain rows (frozen dataclasses).
Money is ``Decimal`` throughout, so sums and splits are exact on SQLite and PostgreSQL alike.

Why it is computed this way:

- **Estimated** = token metrics × the ``prices`` table. ``metric_points`` totals of
  ``InputTokens``, ``OutputTokens``, ``cacheReadInputTokens``, ``ephemeral5mInputTokens`` and
  ``ephemeral1hInputTokens`` per deployment and UTC day, each priced at its own rate (input,
  output, cache read, 5-minute and 1-hour cache write). ``InputTokens`` is Anthropic's
  ``input_tokens``, which *excludes* cache reads and writes (they have their own metrics; the
  emulator's metrics module states the same), so nothing is subtracted; should Azure turn out
  to include them, ``INPUT_TOKENS_INCLUDE_CACHE`` flips that. Available minutes after a request,
  long before billing (1–3 days late).
- **Billed**: Claude is Marketplace usage, billed under the *resource group*, one meter per model
  and direction — so the bill says "group G spent X on model M on day D" and nothing finer. X is
  split across G's deployments of M by their priced-token share that day (their estimated cost;
  raw tokens when the model has no price), so a cheap-but-busy Haiku deployment is not charged
  like an Opus one. The last deployment takes the rounding remainder, so the split sums back to
  X exactly. A group-day with billed cost but no tokens in the store becomes one row with
  ``deployment_id=None`` (unattributed) rather than disappearing.
- **Reconciliation**: per deployment and day, estimated, billed and ``gap = billed − estimated``
  (None until the bill arrives), so "today" shows the estimate and older days the truth.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import Connection, func, literal_column, select

from models.tables import Cost, Deployment, MetricPoint, Price, Resource

#: Whether Azure's ``InputTokens`` already counts cache reads/writes (Anthropic's does not).
INPUT_TOKENS_INCLUDE_CACHE = False

#: metric name (lower-cased) → token kind.
TOKEN_METRICS = {
    "inputtokens": "input",
    "outputtokens": "output",
    "cachereadinputtokens": "cache_read",
    "ephemeral5minputtokens": "cache_write_5m",
    "ephemeral1hinputtokens": "cache_write_1h",
}
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write_5m", "cache_write_1h")
#: token kind → ``prices`` column.
PRICE_COLUMNS = {
    "input": "input_per_mtok",
    "output": "output_per_mtok",
    "cache_read": "cache_read_per_mtok",
    "cache_write_5m": "cache_write_5m_per_mtok",
    "cache_write_1h": "cache_write_1h_per_mtok",
}
MILLION = Decimal(1_000_000)
MICRO = Decimal("0.000001")
_DATED = re.compile(r"-\d{8}$")


def normalize_model(name: str) -> str:
    """``Claude-Sonnet-4-5-20250929`` → ``claude-sonnet-4-5``: how deployments and meters meet."""
    return _DATED.sub("", (name or "").strip().lower())


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class EstimatedSpend:
    day: date
    deployment_id: int
    deployment_name: str
    resource_arm_id: str
    subscription_id: str
    resource_group: str
    model_name: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    #: None when the model has no row in ``prices``.
    cost: Decimal | None
    currency: str

    @property
    def tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_write_5m_tokens
            + self.cache_write_1h_tokens
        )


@dataclass(frozen=True)
class GroupBill:
    """What Cost Management billed a resource group for one model on one day."""

    day: date
    subscription_id: str
    resource_group: str
    model_name: str
    cost: Decimal
    currency: str


@dataclass(frozen=True)
class BilledSpend:
    day: date
    #: None: the group's bill for the model could not be attributed (no tokens that day).
    deployment_id: int | None
    deployment_name: str
    resource_arm_id: str
    subscription_id: str
    resource_group: str
    model_name: str
    #: This deployment's share of the group's bill for the model (0..1).
    share: Decimal
    cost: Decimal
    group_cost: Decimal
    currency: str


@dataclass(frozen=True)
class Reconciliation:
    day: date
    deployment_id: int | None
    deployment_name: str
    resource_arm_id: str
    subscription_id: str
    resource_group: str
    model_name: str
    estimated: Decimal | None
    billed: Decimal | None
    #: billed − estimated, when both are known and in the same currency.
    gap: Decimal | None
    currency: str


# --------------------------------------------------------------------------- helpers


def _bounds(first: date, last: date) -> tuple[datetime, datetime]:
    return (
        datetime.combine(first, time(), UTC),
        datetime.combine(last + timedelta(days=1), time(), UTC),
    )


def _utc_day(conn: Connection, column: Any) -> Any:
    """SQL expression: the UTC calendar day of a timestamp column.

    SQLite stores UTC text, so ``date()`` is right; PostgreSQL's ``date(timestamptz)`` would use
    the session time zone, hence ``timezone('UTC', …)`` first (a literal, not a bind parameter,
    so the SELECT and GROUP BY expressions are identical).
    """
    if conn.dialect.name == "postgresql":
        return func.date(func.timezone(literal_column("'UTC'"), column))
    return func.date(column)


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _tokens(value: Any) -> int:
    if value is None:
        return 0
    number = float(value)
    return int(number) if number.is_integer() else round(number)


def _prices(conn: Connection) -> dict[str, Any]:
    return {normalize_model(p.model_name): p for p in conn.execute(select(Price)).all()}


def deployment_facts(conn: Connection, ids: Iterable[int]) -> dict[int, Any]:
    """Name, model and resource facts of these deployments (what a spend row names)."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = conn.execute(
        select(
            Deployment.id,
            Deployment.name,
            Deployment.model_name,
            Resource.arm_id,
            Resource.subscription_id,
            Resource.resource_group,
        )
        .join(Resource, Resource.id == Deployment.resource_id)
        .where(Deployment.id.in_(wanted))
    ).all()
    return {r.id: r for r in rows}


def price_tokens(tokens: dict[str, int], price: Any) -> Decimal:
    """Cost of token counts at one ``prices`` row (currency per million tokens)."""
    return _priced(tokens, _rates(price))


def _rates(price: Any) -> tuple[Decimal, ...]:
    """A ``prices`` row's rates in ``TOKEN_KINDS`` order."""
    return tuple(Decimal(getattr(price, PRICE_COLUMNS[kind])) for kind in TOKEN_KINDS)


def _priced(tokens: dict[str, int], rates: tuple[Decimal, ...]) -> Decimal:
    total = Decimal(0)
    for kind, rate in zip(TOKEN_KINDS, rates, strict=True):
        total += Decimal(tokens.get(kind, 0)) * rate
    return total / MILLION


# --------------------------------------------------------------------------- estimated


def estimated_spend(
    conn: Connection,
    first: date,
    last: date,
    *,
    input_includes_cache: bool = INPUT_TOKENS_INCLUDE_CACHE,
) -> list[EstimatedSpend]:
    """Token metrics × prices per deployment and UTC day, ``first``..``last`` inclusive."""
    start, end = _bounds(first, last)
    day = _utc_day(conn, MetricPoint.minute)
    metric = func.lower(MetricPoint.metric)
    rows = conn.execute(
        select(
            MetricPoint.deployment_id,
            day.label("day"),
            metric.label("metric"),
            func.sum(MetricPoint.total).label("total"),
        )
        .where(
            MetricPoint.minute >= start,
            MetricPoint.minute < end,
            metric.in_(list(TOKEN_METRICS)),
        )
        .group_by(MetricPoint.deployment_id, day, metric)
    ).all()
    per: dict[tuple[int, date], dict[str, int]] = defaultdict(dict)
    for r in rows:
        kind = TOKEN_METRICS[r.metric]
        counts = per[(r.deployment_id, _as_date(r.day))]
        counts[kind] = counts.get(kind, 0) + _tokens(r.total)
    deps = deployment_facts(conn, (dep_id for dep_id, _d in per))
    return price_token_counts(per, deps, _prices(conn), input_includes_cache=input_includes_cache)


def price_token_counts(
    per: dict[tuple[int, date], dict[str, int]],
    deps: dict[int, Any],
    prices: dict[str, Any],
    *,
    input_includes_cache: bool = INPUT_TOKENS_INCLUDE_CACHE,
) -> list[EstimatedSpend]:
    """Token counts per (deployment, day) → priced rows; shared with the dashboard, which
    sums the same counts from day rollups, so both price them identically."""
    out: list[EstimatedSpend] = []
    # Per model name: its price and rates, looked up and converted once (a month of 50
    # deployments prices ~1,500 rows; normalising and converting per row was most of it).
    priced: dict[str, tuple[Any, tuple[Decimal, ...] | None]] = {}
    for (dep_id, d), counts in sorted(per.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        dep = deps.get(dep_id)
        if dep is None:
            continue
        if input_includes_cache:
            cache = counts.get("cache_read", 0)
            cache += counts.get("cache_write_5m", 0) + counts.get("cache_write_1h", 0)
            counts["input"] = max(0, counts.get("input", 0) - cache)
        found = priced.get(dep.model_name)
        if found is None:
            price = prices.get(normalize_model(dep.model_name))
            found = priced[dep.model_name] = (price, None if price is None else _rates(price))
        price, rates = found
        out.append(
            EstimatedSpend(
                day=d,
                deployment_id=dep_id,
                deployment_name=dep.name,
                resource_arm_id=dep.arm_id,
                subscription_id=dep.subscription_id,
                resource_group=dep.resource_group,
                model_name=dep.model_name,
                input_tokens=counts.get("input", 0),
                output_tokens=counts.get("output", 0),
                cache_read_tokens=counts.get("cache_read", 0),
                cache_write_5m_tokens=counts.get("cache_write_5m", 0),
                cache_write_1h_tokens=counts.get("cache_write_1h", 0),
                cost=None if rates is None else _priced(counts, rates),
                currency=price.currency if price is not None else "",
            )
        )
    return out


# --------------------------------------------------------------------------- billed


def _subscription_of(*ids: str) -> str:
    for text in ids:
        m = re.search(r"/subscriptions/([^/]+)", text or "", re.IGNORECASE)
        if m:
            return m.group(1).lower()
    return ""


def group_bills(
    conn: Connection, first: date, last: date, *, cost_type: str = "ActualCost"
) -> list[GroupBill]:
    """Claude Marketplace cost per (subscription, resource group, model, day).

    Rows whose meter named a model (``costs.model_name``) are summed in Python (exact
    Decimals). If overlapping scopes were collected (a subscription and one of its groups),
    the same spend is present twice: the broadest scope (shortest id) is used.
    """
    rows = conn.execute(
        select(
            Cost.scope,
            Cost.resource_arm_id,
            Cost.day,
            Cost.resource_group,
            Cost.model_name,
            Cost.currency,
            Cost.cost,
        ).where(
            Cost.cost_type == cost_type,
            Cost.model_name != "",
            Cost.day >= first,
            Cost.day <= last,
        )
    ).all()
    sums: dict[tuple, dict[str, Decimal]] = defaultdict(dict)
    # The same few ids, groups and meters' models repeat on every day: parse each once.
    subs: dict[tuple[str, str], str] = {}
    groups: dict[str | None, str] = {}
    models: dict[str, str] = {}
    for scope, arm_id, day, group, model, currency, cost in rows:
        sub = subs.get((arm_id, scope))
        if sub is None:
            sub = subs[(arm_id, scope)] = _subscription_of(arm_id, scope)
        rg = groups.get(group)
        if rg is None:
            rg = groups[group] = (group or "").lower()
        name = models.get(model)
        if name is None:
            name = models[model] = normalize_model(model)
        by_scope = sums[(_as_date(day), sub, rg, name, currency)]
        by_scope[scope] = by_scope.get(scope, Decimal(0)) + Decimal(cost)
    out = []
    for (d, sub, rg, model, currency), by_scope in sorted(sums.items()):
        scope = min(by_scope, key=lambda s: (len(s), s))
        out.append(GroupBill(d, sub, rg, model, by_scope[scope], currency))
    return out


def _weight(row: EstimatedSpend) -> Decimal:
    return row.cost if row.cost is not None else Decimal(row.tokens)


def split_bill(bill: GroupBill, members: list[EstimatedSpend]) -> list[BilledSpend]:
    """One group's bill for a model split across its deployments by priced-token share."""
    weights = [(m, _weight(m)) for m in members]
    weights = [(m, w) for m, w in weights if w > 0]
    total = sum((w for _m, w in weights), Decimal(0))
    if not weights or total <= 0:
        return [
            BilledSpend(
                day=bill.day,
                deployment_id=None,
                deployment_name="",
                resource_arm_id="",
                subscription_id=bill.subscription_id,
                resource_group=bill.resource_group,
                model_name=bill.model_name,
                share=Decimal(1),
                cost=bill.cost,
                group_cost=bill.cost,
                currency=bill.currency,
            )
        ]
    # Largest weight last: it absorbs the rounding remainder, so the parts sum to the bill.
    weights.sort(key=lambda mw: (mw[1], -mw[0].deployment_id))
    out: list[BilledSpend] = []
    assigned = Decimal(0)
    for i, (m, w) in enumerate(weights):
        share = w / total
        if i == len(weights) - 1:
            cost = bill.cost - assigned
        else:
            cost = (bill.cost * share).quantize(MICRO, rounding=ROUND_HALF_EVEN)
            assigned += cost
        out.append(
            BilledSpend(
                day=bill.day,
                deployment_id=m.deployment_id,
                deployment_name=m.deployment_name,
                resource_arm_id=m.resource_arm_id,
                subscription_id=bill.subscription_id,
                resource_group=bill.resource_group,
                model_name=m.model_name,
                share=share,
                cost=cost,
                group_cost=bill.cost,
                currency=bill.currency,
            )
        )
    return out


def billed_spend(
    conn: Connection,
    first: date,
    last: date,
    *,
    cost_type: str = "ActualCost",
    estimated: list[EstimatedSpend] | None = None,
) -> list[BilledSpend]:
    """Billed cost per deployment and day: each group's model bill split by token share."""
    if estimated is None:
        estimated = estimated_spend(conn, first, last)
    members: dict[tuple, list[EstimatedSpend]] = defaultdict(list)
    for e in estimated:
        key = (
            e.day,
            e.subscription_id.lower(),
            e.resource_group.lower(),
            normalize_model(e.model_name),
        )
        members[key].append(e)
    out: list[BilledSpend] = []
    for bill in group_bills(conn, first, last, cost_type=cost_type):
        key = (bill.day, bill.subscription_id, bill.resource_group, bill.model_name)
        out.extend(split_bill(bill, members.get(key, [])))
    return out


# --------------------------------------------------------------------------- reconciliation


def reconcile(
    conn: Connection, first: date, last: date, *, cost_type: str = "ActualCost"
) -> list[Reconciliation]:
    """Estimated vs billed per deployment and day (unattributed bills as deployment None)."""
    estimated = estimated_spend(conn, first, last)
    billed = billed_spend(conn, first, last, cost_type=cost_type, estimated=estimated)
    # Attributed rows meet on (day, deployment); an unattributed bill keeps its own row.
    est_by: dict[tuple, EstimatedSpend] = {(e.day, e.deployment_id): e for e in estimated}
    bill_by: dict[tuple, list[BilledSpend]] = defaultdict(list)
    for b in billed:
        if b.deployment_id is not None:
            bill_by[(b.day, b.deployment_id)].append(b)
        else:
            bill_by[(b.day, None, b.subscription_id, b.resource_group, b.model_name)].append(b)
    out: list[Reconciliation] = []
    for key in set(est_by) | set(bill_by):
        e = est_by.get(key)
        bs = bill_by.get(key, [])
        billed_cost = sum((b.cost for b in bs), Decimal(0)) if bs else None
        currency = bs[0].currency if bs else (e.currency if e else "")
        est_cost = e.cost if e is not None else None
        same_currency = e is None or not bs or not e.currency or e.currency == currency
        gap = (
            billed_cost - est_cost
            if billed_cost is not None and est_cost is not None and same_currency
            else None
        )
        ref: Any = e if e is not None else bs[0]
        out.append(
            Reconciliation(
                day=key[0],
                deployment_id=ref.deployment_id,
                deployment_name=ref.deployment_name,
                resource_arm_id=ref.resource_arm_id,
                subscription_id=ref.subscription_id,
                resource_group=ref.resource_group,
                model_name=ref.model_name,
                estimated=est_cost,
                billed=billed_cost,
                gap=gap,
                currency=currency,
            )
        )
    out.sort(key=lambda r: (r.day, r.deployment_id is None, r.deployment_id or 0, r.model_name))
    return out
