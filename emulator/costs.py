"""Cost Management query endpoint: ``POST {scope}/providers/Microsoft.CostManagement/query``.

Serves subscription and resource-group scopes on the ARM root so that
``azure.mgmt.costmanagement.CostManagementClient(...).query.usage(scope, parameters)`` (5.0,
api-version 2025-03-01) runs unmodified. Wire format from the SDK (``operations/_operations.py``:
``build_query_usage_request``, 200/204 handling; ``models/_models.py``: ``QueryDefinition``,
``QueryResult`` with ``properties.{nextLink, columns, rows}``) and the spec examples
``stable/2025-03-01/examples/SubscriptionQuery.json`` / ``ResourceGroupQueryGrouping.json``.

Modelling choices (each a switch in ``options(state)`` / ``POST /_emulator/costs/options`` where
Azure's behaviour is uncertain):
- Billed from the world's requests at ``world.price``: input, output, 5-minute and 1-hour cache
  writes and cache reads priced separately, per UTC day. 401/429 carry no tokens, so are free.
  Token sums come from ``emulator.metrics.Aggregator`` (the same hourly aggregates the metrics
  endpoint serves), so spend and token metrics agree exactly.
- Claude is Azure Marketplace usage: ``PublisherType`` "Marketplace", ``PublisherName``
  "Anthropic", ``ServiceName`` "SaaS", ``MeterCategory`` "SaaS", ``MeterSubcategory`` the model
  ("Claude Sonnet 4.5"), ``ResourceType`` as the resource id implies, ``ResourceLocation`` "global".
  Rows sit under the **resource group** (Microsoft's "Plan and manage costs" page for partner
  models): ``ResourceId`` is the lower-cased resource-group id by default
  (``marketplace_resource_id="resource_group"``), or a lower-cased Marketplace SaaS resource
  ``.../providers/microsoft.saas/resources/anthropic-claude`` (``"saas"``).
- Meters: one input and one output meter per model, "Claude Sonnet 4.5 Input Tokens" /
  "Claude Sonnet 4.5 Output Tokens" (real names unknown). Cache reads and writes bill under the
  input meter at their own prices by default (``cache_meters="input"``); ``"separate"`` gives
  "... Cache Read Input Tokens", "... 5m Cache Write Input Tokens", "... 1h Cache Write Input
  Tokens" meters instead. ``UsageQuantity`` is in millions of tokens.
- Rows the collector must filter out: each Foundry resource's own meter (``PublisherType`` "Azure",
  ``ServiceName`` "Cognitive Services", "Standard Text Records" at $0.38 per 1,000 requests, under
  the account's id) and Log Analytics ingestion ("Analytics Logs Data Ingestion", 1.5 KiB per
  request at $2.30/GB, under the workspace's id and resource group).
- Lag and revision, deterministic per UTC day (``schedule``): a day first appears 1–3 days after it
  starts, at 02:00–08:00 UTC, at 93–97 % of its final value (per row); the final value replaces it
  2 days (+0–11 h) later. Only days wholly inside the world's window are billed.
  ``billed_truth(world, scope, day, as_of)`` says what the API shows for a day.
- ``type`` ActualCost, AmortizedCost and Usage give the same numbers (pay-as-you-go, no
  reservations). Aggregation columns ``Cost``, ``PreTaxCost``, ``CostUSD``, ``PreTaxCostUSD``,
  ``UsageQuantity`` (function ``Sum``); default ``PreTaxCost`` for Usage, else ``Cost``.
  ``granularity`` Daily adds ``UsageDate`` (yyyymmdd Number), Monthly ``BillingMonth``; ``Currency``
  is always the last column. The order of the other columns is not fixed: ``column_order`` "live"
  (aggregations, date, groupings — as live responses), "spec" (aggregations, groupings, date — as
  the spec examples), "aggregation_last", or "auto" (default: one of the three, chosen by a hash of
  the query so each query is stable but different queries differ). Resource ids and resource-group
  names are lower-cased, as cost data has them.
- Grouping dimensions: Azure's list from its "Invalid dataset grouping" error (without
  ``ConsumedService``, refused since mid-2025), matched case-insensitively; unknown → that error.
  ``dataset.filter`` supports ``and``/``or``/``not``/``dimensions``/``tags`` with operator ``In``.
  ``timeframe``: Custom (``timePeriod`` dates inclusive, at most one year), MonthToDate,
  BillingMonthToDate, TheCurrentMonth, TheLastMonth, TheLastBillingMonth, WeekToDate (Monday).
- Paging: ``properties.nextLink`` is a full URL back to this endpoint with ``$skiptoken`` (the
  query, the offset and the as-of time, so pages are consistent); POST to it (the body is
  ignored). The SDK does not follow it. Page size ``state.cost_page_size`` unless
  ``options.page_size`` is set.
- No rows → 200 with ``rows: []`` (``empty_as_204=True`` answers the spec's bodiless 204 instead).
- Every answer carries ``x-ms-ratelimit-microsoft.costmanagement-qpu-consumed`` (1 QPU per started
  month of data) and ``-qpu-remaining`` (``QueriesPerHour:n,QueriesPerMin:n,QueriesPer10Sec:n``,
  tenant quotas 600/60/12); ``enforce_qpu=True`` turns exhausted quota into real 429s.
- Faults (``faults.take("costs")``): ``throttle`` → 429 ``{"error":{"code":"429","message":"Too
  many requests. Please retry."}}`` with
  ``x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after``, ``-entity-retry-after``,
  ``-tenant-retry-after`` and ``Retry-After``; ``nextlink_break`` → the next request for a next
  page (a ``$skiptoken`` URL) answers 500; other kinds via ``faults.apply_generic``/``finish``.
- Bad bodies → 400 ``{"error":{"code":"BadRequest","message":"Invalid query definition: ..."}}``;
  unknown subscription / resource group → 404 ``SubscriptionNotFound`` / ``ResourceGroupNotFound``.
"""

from __future__ import annotations

import base64
import calendar
import dataclasses
import hashlib
import json
import math
import re
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from emulator import auth, errors
from emulator import faults as faults_mod
from emulator.metrics import Aggregator

AUDIENCE = "https://management.azure.com"
API_VERSIONS = frozenset(
    {
        "2025-03-01",
        "2024-08-01",
        "2023-11-01",
        "2023-09-01",
        "2023-08-01",
        "2023-07-01-preview",
        "2023-04-01-preview",
        "2023-03-01",
        "2022-10-01",
        "2021-10-01",
        "2019-11-01",
    }
)
CURRENCY = "USD"
SAAS_RESOURCE = "microsoft.saas/resources/anthropic-claude"
MAX_PERIOD = timedelta(days=366)
QPU_QUOTAS = (("QueriesPerHour", 3600, 600), ("QueriesPerMin", 60, 60), ("QueriesPer10Sec", 10, 12))
FAULT_KINDS = ("throttle", "error", "slow", "timeout", "malformed", "truncated")
THROTTLE_BODY = {"error": {"code": "429", "message": "Too many requests. Please retry."}}

# Non-Claude synthetic meters.
CONTENT_SAFETY_PER_1K = 0.38
LOG_BYTES_PER_REQUEST = 1536
LOG_INGESTION_PER_GB = 2.30

# Azure's valid grouping dimensions, from its "Invalid dataset grouping" error message.
GROUPABLE = (
    "ResourceGroup",
    "ResourceGroupName",
    "ResourceLocation",
    "ResourceType",
    "ResourceId",
    "MeterId",
    "BillingMonth",
    "MeterCategory",
    "MeterSubcategory",
    "Meter",
    "AccountName",
    "DepartmentName",
    "SubscriptionId",
    "SubscriptionName",
    "ServiceName",
    "ServiceTier",
    "EnrollmentAccountName",
    "BillingAccountId",
    "ResourceGuid",
    "BillingPeriod",
    "InvoiceNumber",
    "ChargeType",
    "PublisherType",
    "ReservationId",
    "ReservationName",
    "Frequency",
    "PartNumber",
    "CostAllocationRuleName",
    "MarkupRuleName",
    "PricingModel",
    "BenefitId",
    "BenefitName",
)
_GROUPABLE = {g.lower(): g for g in GROUPABLE}
_FILTERABLE = {**_GROUPABLE, "publishername": "PublisherName"}
AGGREGATION_COLUMNS = ("Cost", "PreTaxCost", "CostUSD", "PreTaxCostUSD", "UsageQuantity")
_AGG_COLUMNS = {a.lower(): a for a in AGGREGATION_COLUMNS}
TYPES = ("ActualCost", "AmortizedCost", "Usage")
TIMEFRAMES = (
    "MonthToDate",
    "BillingMonthToDate",
    "TheLastMonth",
    "TheLastBillingMonth",
    "WeekToDate",
    "Custom",
    "TheCurrentMonth",
)
COLUMN_ORDERS = ("live", "spec", "aggregation_last")


class QueryError(Exception):
    """A request ARM would refuse; ``status``/``code`` in the ARM error shape."""

    def __init__(self, message: str, *, status: int = 400, code: str = "BadRequest") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# --------------------------------------------------------------------------- options / runtime


@dataclass
class CostOptions:
    """Switches for what Azure does not document; flip via ``options(state)`` or the admin route."""

    marketplace_resource_id: str = "resource_group"  # or "saas"
    cache_meters: str = "input"  # or "separate"
    column_order: str = "auto"  # or one of COLUMN_ORDERS
    empty_as_204: bool = False
    enforce_qpu: bool = False
    page_size: int | None = None  # None: state.cost_page_size


@dataclass
class _Runtime:
    options: CostOptions = field(default_factory=CostOptions)
    qpu: deque[tuple[float, int]] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)


_FALLBACK: dict[int, _Runtime] = {}


def _runtime(state: Any) -> _Runtime:
    rt = getattr(state, "_costs_runtime", None) or _FALLBACK.get(id(state))
    if rt is None:
        rt = _Runtime()
        try:
            state._costs_runtime = rt
        except (AttributeError, TypeError):
            _FALLBACK[id(state)] = rt
    return rt


def options(state: Any) -> CostOptions:
    """The cost switches of one emulator state (created on first use)."""
    return _runtime(state).options


# --------------------------------------------------------------------------- billing model


def _digest(*parts: object) -> bytes:
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).digest()


def _unit(*parts: object) -> float:
    """A stable uniform number in [0, 1) for the parts."""
    return int.from_bytes(_digest(*parts)[:7], "big") / float(1 << 56)


@dataclass(frozen=True)
class Schedule:
    """When a day's cost first shows up (preliminary) and when it is final."""

    day: date
    first_report_at: datetime
    final_at: datetime

    def state(self, as_of: datetime) -> str:
        if as_of < self.first_report_at:
            return "pending"
        return "preliminary" if as_of < self.final_at else "final"


def schedule(world: Any, day: date) -> Schedule:
    """Deterministic lag and revision times of one UTC day's cost data."""
    h = _digest(world.seed, "cost-lag", day.isoformat())
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    first = start + timedelta(days=1 + h[0] % 3, hours=2 + h[1] % 7, minutes=h[2] % 60)
    return Schedule(day, first, first + timedelta(days=2, hours=h[3] % 12))


def preliminary_fraction(world: Any, day: date, subscription: str, rg: str, meter: str) -> float:
    """Share of a row's final cost shown while the day is preliminary (0.93–0.97)."""
    return 0.93 + 0.04 * _unit(world.seed, "cost-rev", day, subscription.lower(), rg.lower(), meter)


def model_display(model_name: str) -> str:
    """``claude-sonnet-4-5`` → ``Claude Sonnet 4.5``."""
    words: list[str] = []
    version: list[str] = []
    for part in model_name.split("-"):
        (version if part.isdigit() else words).append(part)
    name = " ".join(w.capitalize() for w in words)
    return f"{name} {'.'.join(version)}" if version else name


@dataclass(frozen=True)
class CostRow:
    """One (day, resource, meter) line of cost data at its final value."""

    day: date
    subscription_id: str
    resource_group: str
    resource_id: str
    resource_type: str
    resource_location: str
    meter: str
    meter_category: str
    meter_subcategory: str
    service_name: str
    publisher_type: str
    publisher_name: str
    cost: float
    quantity: float
    kind: str  # "claude" | "foundry" | "log_analytics"
    model: str | None = None

    def dimension(self, name: str) -> str:
        """Value of a grouping/filter dimension (canonical name)."""
        match name:
            case "ResourceGroup" | "ResourceGroupName":
                return self.resource_group.lower()
            case "ResourceId":
                return self.resource_id.lower()
            case "ResourceType":
                return self.resource_type
            case "ResourceLocation":
                return self.resource_location
            case "Meter":
                return self.meter
            case "MeterId":
                return str(uuid.UUID(bytes=_digest("meter", self.meter)))
            case "MeterCategory":
                return self.meter_category
            case "MeterSubcategory":
                return self.meter_subcategory
            case "ServiceName":
                return self.service_name
            case "ServiceTier":
                return self.meter_subcategory
            case "PublisherType":
                return self.publisher_type
            case "PublisherName":
                return self.publisher_name
            case "SubscriptionId":
                return self.subscription_id
            case "SubscriptionName":
                return f"Contoso {self.subscription_id[:8]}"
            case "ChargeType":
                return "Usage"
            case "PricingModel":
                return "OnDemand"
            case "Frequency":
                return "UsageBased"
            case "BillingMonth":
                return f"{self.day:%Y-%m}-01T00:00:00"
            case "BillingPeriod":
                return f"{self.day:%Y%m}"
        return ""


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def billable_days(world: Any, as_of: datetime | None = None) -> tuple[date, date] | None:
    """First and last day wholly inside the world's window (before ``as_of``), or None."""
    now = as_of or world.now()
    first = world.start.date() + timedelta(days=1)
    last = now.date() - timedelta(days=1)
    return (first, last) if first <= last else None


def day_totals(world: Any, day: date) -> dict[str, dict[str, float]]:
    """Per deployment (``"{resource arm id lower}/{name}"``): requests and tokens of one UTC day."""
    start, end = _day_bounds(day)
    agg = Aggregator(world)
    cache = agg.cache
    settled = end <= world.now() - timedelta(minutes=10)
    with cache.lock:
        hit = cache.days.get(day) if settled else None
        generation = cache.generation
    if hit is not None:
        return hit
    out: dict[str, dict[str, float]] = {}
    for dep in world.deployments:
        if dep.created_at >= end or (dep.deleted_at is not None and dep.deleted_at <= start):
            continue
        acc: dict[str, float] = {}
        for h in range(24):
            for k, v in agg.hour_totals(dep, start + timedelta(hours=h)).items():
                acc[k] = acc.get(k, 0) + v
        out[f"{dep.resource.arm_id.lower()}/{dep.name}"] = acc
    if settled:
        cache.keep(cache.days, day, out, generation)
    return out


def day_rows(world: Any, day: date, *, opts: CostOptions | None = None) -> list[CostRow]:
    """All cost rows of one UTC day at their final values (no lag applied)."""
    opts = opts or CostOptions()
    totals = day_totals(world, day)
    deps = {f"{d.resource.arm_id.lower()}/{d.name}": d for d in world.deployments}
    # (subscription, resource group, model) -> token sums
    claude: dict[tuple[str, str, str], dict[str, float]] = {}
    per_resource: dict[str, float] = {}
    per_workspace: dict[str, float] = {}
    for key, t in totals.items():
        dep = deps[key]
        res = dep.resource
        k = (res.subscription_id, res.resource_group, dep.model_name)
        acc = claude.setdefault(k, {})
        for name, value in t.items():
            acc[name] = acc.get(name, 0) + value
        per_resource[res.arm_id] = per_resource.get(res.arm_id, 0) + t["requests"]
        ws = res.workspace.arm_id
        per_workspace[ws] = per_workspace.get(ws, 0) + t["requests"]

    rows: list[CostRow] = []
    for (sub, rg, model), t in sorted(claude.items()):
        price = world.price(model)
        display = model_display(model)
        if opts.marketplace_resource_id == "saas":
            rid = f"/subscriptions/{sub}/resourcegroups/{rg}/providers/{SAAS_RESOURCE}"
            rtype = "microsoft.saas/resources"
        else:
            rid = f"/subscriptions/{sub}/resourcegroups/{rg}"
            rtype = "microsoft.resources/resourcegroups"
        parts: list[tuple[str, float, float]] = []  # meter, cost, tokens
        cache_parts = [
            ("Cache Read Input Tokens", "cache_read"),
            ("5m Cache Write Input Tokens", "cache_write_5m"),
            ("1h Cache Write Input Tokens", "cache_write_1h"),
        ]
        input_cost = t["input"] * price["input"]
        input_tokens = t["input"]
        if opts.cache_meters == "separate":
            for label, kind in cache_parts:
                parts.append((f"{display} {label}", t[kind] * price[kind] / 1e6, t[kind]))
        else:
            for _label, kind in cache_parts:
                input_cost += t[kind] * price[kind]
                input_tokens += t[kind]
        parts.insert(0, (f"{display} Input Tokens", input_cost / 1e6, input_tokens))
        parts.insert(
            1, (f"{display} Output Tokens", t["output"] * price["output"] / 1e6, t["output"])
        )
        for meter, cost, tokens in parts:
            if cost <= 0:
                continue
            rows.append(
                CostRow(
                    day=day,
                    subscription_id=sub,
                    resource_group=rg,
                    resource_id=rid,
                    resource_type=rtype,
                    resource_location="global",
                    meter=meter,
                    meter_category="SaaS",
                    meter_subcategory=display,
                    service_name="SaaS",
                    publisher_type="Marketplace",
                    publisher_name="Anthropic",
                    cost=cost,
                    quantity=tokens / 1e6,
                    kind="claude",
                    model=model,
                )
            )
    for res in world.resources:
        n = per_resource.get(res.arm_id, 0)
        if n:
            rows.append(
                CostRow(
                    day=day,
                    subscription_id=res.subscription_id,
                    resource_group=res.resource_group,
                    resource_id=res.arm_id,
                    resource_type="microsoft.cognitiveservices/accounts",
                    resource_location=res.location,
                    meter="Standard Text Records",
                    meter_category="Cognitive Services",
                    meter_subcategory="Content Safety",
                    service_name="Cognitive Services",
                    publisher_type="Azure",
                    publisher_name="Microsoft",
                    cost=n / 1000 * CONTENT_SAFETY_PER_1K,
                    quantity=n / 1000,
                    kind="foundry",
                )
            )
    for ws in world.workspaces:
        n = per_workspace.get(ws.arm_id, 0)
        if n:
            gb = n * LOG_BYTES_PER_REQUEST / 1e9
            rows.append(
                CostRow(
                    day=day,
                    subscription_id=ws.subscription_id,
                    resource_group=ws.resource_group,
                    resource_id=ws.arm_id,
                    resource_type="microsoft.operationalinsights/workspaces",
                    resource_location=ws.location,
                    meter="Analytics Logs Data Ingestion",
                    meter_category="Log Analytics",
                    meter_subcategory="",
                    service_name="Log Analytics",
                    publisher_type="Azure",
                    publisher_name="Microsoft",
                    cost=gb * LOG_INGESTION_PER_GB,
                    quantity=gb,
                    kind="log_analytics",
                )
            )
    return rows


def reported_rows(
    world: Any, day: date, as_of: datetime, *, opts: CostOptions | None = None
) -> list[CostRow]:
    """The rows the API shows for ``day`` at ``as_of``: none, preliminary or final."""
    sched = schedule(world, day)
    st = sched.state(as_of)
    if st == "pending":
        return []
    rows = day_rows(world, day, opts=opts)
    if st == "final":
        return rows
    out = []
    for r in rows:
        f = preliminary_fraction(world, day, r.subscription_id, r.resource_group, r.meter)
        out.append(dataclasses.replace(r, cost=r.cost * f, quantity=r.quantity * f))
    return out


@dataclass(frozen=True)
class BilledDay:
    """Ground truth for tests: a scope's Claude Marketplace spend of one day."""

    day: date
    state: str  # "pending" | "preliminary" | "final" | "out_of_window"
    final: float  # the full price of the day's Claude usage in the scope
    reported: float  # what the query API shows at as_of (0.0 while pending)
    first_report_at: datetime
    final_at: datetime
    by_meter: dict[str, float]  # final cost per meter


def _in_scope(row: CostRow, subscription: str, rg: str | None) -> bool:
    if row.subscription_id.lower() != subscription.lower():
        return False
    return rg is None or row.resource_group.lower() == rg.lower()


def parse_scope(scope: str) -> tuple[str, str | None]:
    """``/subscriptions/{s}[/resourceGroups/{rg}]`` → (s, rg)."""
    m = re.fullmatch(r"/?subscriptions/([^/]+)(?:/resourcegroups/([^/]+))?/?", scope, re.I)
    if not m:
        raise ValueError(f"unsupported scope {scope!r}")
    return m.group(1), m.group(2)


def billed_truth(
    world: Any, scope: str, day: date, as_of: datetime, *, cache_meters: str = "input"
) -> BilledDay:
    """What Cost Management bills (final) and shows (reported) for Claude in ``scope``, ``day``."""
    sub, rg = parse_scope(scope)
    opts = CostOptions(cache_meters=cache_meters)
    sched = schedule(world, day)
    window = billable_days(world, as_of)
    in_window = window is not None and window[0] <= day <= window[1]
    rows = [
        r for r in day_rows(world, day, opts=opts) if r.kind == "claude" and _in_scope(r, sub, rg)
    ]
    final = sum(r.cost for r in rows)
    by_meter: dict[str, float] = {}
    for r in rows:
        by_meter[r.meter] = by_meter.get(r.meter, 0.0) + r.cost
    st = sched.state(as_of) if in_window else "out_of_window"
    if st == "final":
        reported = final
    elif st == "preliminary":
        reported = sum(
            r.cost * preliminary_fraction(world, day, r.subscription_id, r.resource_group, r.meter)
            for r in rows
        )
    else:
        reported = 0.0
    return BilledDay(day, st, final, reported, sched.first_report_at, sched.final_at, by_meter)


# --------------------------------------------------------------------------- query definition


@dataclass
class Definition:
    """A validated ``QueryDefinition``."""

    type: str
    first_day: date
    last_day: date
    granularity: str  # "Daily" | "Monthly" | "None"
    aggregations: list[str]  # column names, in order
    groupings: list[str]  # canonical dimension names, in order
    filter: dict[str, Any] | None
    raw: dict[str, Any]


def _bad(message: str) -> QueryError:
    return QueryError(f"Invalid query definition: {message}")


def _parse_date(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise _bad(f"'{what}' must be a date-time string.")
    try:
        ts = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise _bad(f"Invalid '{what}' value '{value}'.") from exc
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _month_start(d: date) -> date:
    return d.replace(day=1)


def _check_filter(f: Any, depth: int = 0) -> None:
    if not isinstance(f, dict) or depth > 10:
        raise _bad("Invalid dataset filter.")
    keys = [k for k in ("and", "or", "not", "dimensions", "tags") if f.get(k) is not None]
    if len(keys) != 1:
        raise _bad("A filter must have exactly one of 'and', 'or', 'not', 'dimensions', 'tags'.")
    key = keys[0]
    if key in ("and", "or"):
        if not isinstance(f[key], list) or len(f[key]) < 2:
            raise _bad(f"Filter '{key}' requires at least two expressions.")
        for sub in f[key]:
            _check_filter(sub, depth + 1)
    elif key == "not":
        _check_filter(f["not"], depth + 1)
    else:
        expr = f[key]
        if not isinstance(expr, dict) or not isinstance(expr.get("name"), str):
            raise _bad(f"Invalid dataset filter '{key}' expression.")
        if str(expr.get("operator", "")).lower() != "in":
            raise _bad(f"Invalid operator '{expr.get('operator')}'; valid values: 'In'.")
        if not isinstance(expr.get("values"), list) or not expr["values"]:
            raise _bad("A filter expression requires a non-empty 'values' array.")
        if key == "dimensions" and expr["name"].lower() not in _FILTERABLE:
            raise _bad(
                f"Invalid dataset filter dimension: '{expr['name']}'; valid values: "
                + ",".join(f"'{g}'" for g in GROUPABLE)
                + "."
            )


def parse_definition(body: Any, today: date) -> Definition:
    """Validate a QueryDefinition the way the Cost Management service does."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    qtype = body.get("type")
    match = {t.lower(): t for t in TYPES}.get(str(qtype).lower()) if qtype else None
    if match is None:
        raise _bad(f"Invalid type '{qtype}'; valid values: " + ", ".join(TYPES) + ".")
    timeframe = body.get("timeframe")
    tf = {t.lower(): t for t in TIMEFRAMES}.get(str(timeframe).lower()) if timeframe else None
    if tf is None:
        raise _bad(f"Invalid timeframe '{timeframe}'; valid values: " + ", ".join(TIMEFRAMES) + ".")
    if tf == "Custom":
        period = body.get("timePeriod")
        if not isinstance(period, dict) or "from" not in period or "to" not in period:
            raise _bad("timePeriod with 'from' and 'to' is required when timeframe is Custom.")
        start = _parse_date(period["from"], "from").astimezone(UTC)
        end = _parse_date(period["to"], "to").astimezone(UTC)
        if end < start:
            raise _bad("The 'from' date must be before the 'to' date.")
        if end - start > MAX_PERIOD:
            raise _bad("The time period for pulling the data cannot exceed 1 year(s).")
        first, last = start.date(), end.date()
    elif tf in ("MonthToDate", "BillingMonthToDate"):
        first, last = _month_start(today), today
    elif tf == "TheCurrentMonth":
        first = _month_start(today)
        last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
    elif tf in ("TheLastMonth", "TheLastBillingMonth"):
        last = _month_start(today) - timedelta(days=1)
        first = _month_start(last)
    else:  # WeekToDate
        first, last = today - timedelta(days=today.weekday()), today

    dataset = body.get("dataset") or {}
    if not isinstance(dataset, dict):
        raise _bad("'dataset' must be an object.")
    granularity = dataset.get("granularity") or "None"
    gran = {"daily": "Daily", "monthly": "Monthly", "none": "None"}.get(str(granularity).lower())
    if gran is None:
        raise _bad(f"Invalid granularity '{granularity}'; valid values: 'Daily','Monthly'.")

    aggregations: list[str] = []
    agg = dataset.get("aggregation")
    if agg is None:
        aggregations = ["PreTaxCost" if match == "Usage" else "Cost"]
    else:
        if not isinstance(agg, dict) or not agg:
            raise _bad("'aggregation' must be a non-empty object.")
        for alias, spec in agg.items():
            if not isinstance(spec, dict) or "name" not in spec:
                raise _bad(f"Aggregation '{alias}' requires 'name' and 'function'.")
            col = _AGG_COLUMNS.get(str(spec["name"]).lower())
            if col is None:
                raise _bad(
                    f"Invalid aggregation column name '{spec['name']}'; valid values: "
                    + ",".join(f"'{a}'" for a in AGGREGATION_COLUMNS)
                    + "."
                )
            if str(spec.get("function", "")).lower() != "sum":
                raise _bad(f"Invalid aggregation function '{spec.get('function')}'; valid: 'Sum'.")
            if col not in aggregations:
                aggregations.append(col)

    groupings: list[str] = []
    for g in dataset.get("grouping") or []:
        if not isinstance(g, dict) or "name" not in g:
            raise _bad("Each grouping requires 'type' and 'name'.")
        gtype = str(g.get("type", "Dimension")).lower()
        if gtype == "tagkey":
            raise _bad(f"Invalid dataset grouping: tag '{g['name']}' is not available.")
        canon = _GROUPABLE.get(str(g["name"]).lower())
        if gtype != "dimension" or canon is None:
            raise _bad(
                f"Invalid dataset grouping: '{g['name']}'; valid values: "
                + ",".join(f"'{x}'" for x in GROUPABLE)
                + ",''."
            )
        if canon not in groupings:
            groupings.append(canon)

    flt = dataset.get("filter")
    if flt is not None:
        _check_filter(flt)
    return Definition(match, first, last, gran, aggregations, groupings, flt, body)


def _matches(row: CostRow, f: dict[str, Any]) -> bool:
    if f.get("and") is not None:
        return all(_matches(row, x) for x in f["and"])
    if f.get("or") is not None:
        return any(_matches(row, x) for x in f["or"])
    if f.get("not") is not None:
        return not _matches(row, f["not"])
    if f.get("tags") is not None:
        return False  # the synthetic rows carry no tags
    expr = f["dimensions"]
    value = row.dimension(_FILTERABLE[expr["name"].lower()]).lower()
    return value in {str(v).lower() for v in expr["values"]}


def _column_order(defn: Definition, opts: CostOptions) -> str:
    if opts.column_order in COLUMN_ORDERS:
        return opts.column_order
    h = _digest(json.dumps(defn.raw, sort_keys=True, default=str))
    return COLUMN_ORDERS[h[0] % len(COLUMN_ORDERS)]


def run_query(
    world: Any,
    subscription: str,
    rg: str | None,
    defn: Definition,
    as_of: datetime,
    opts: CostOptions,
) -> tuple[list[dict[str, str]], list[list[Any]]]:
    """Columns and all rows (unpaged) of a query at ``as_of``."""
    window = billable_days(world, as_of)
    groups: dict[tuple, list[float]] = {}
    if window is not None:
        day = max(defn.first_day, window[0])
        last = min(defn.last_day, window[1])
        while day <= last:
            for row in reported_rows(world, day, as_of, opts=opts):
                if not _in_scope(row, subscription, rg):
                    continue
                if defn.filter is not None and not _matches(row, defn.filter):
                    continue
                if defn.granularity == "Daily":
                    date_key: tuple = (int(f"{day:%Y%m%d}"),)
                elif defn.granularity == "Monthly":
                    date_key = (f"{day:%Y-%m}-01T00:00:00",)
                else:
                    date_key = ()
                key = date_key + tuple(row.dimension(g) for g in defn.groupings)
                acc = groups.setdefault(key, [0.0] * len(defn.aggregations))
                for i, a in enumerate(defn.aggregations):
                    acc[i] += row.quantity if a == "UsageQuantity" else row.cost
            day += timedelta(days=1)

    agg_cols = [{"name": a, "type": "Number"} for a in defn.aggregations]
    date_cols = []
    if defn.granularity == "Daily":
        date_cols = [{"name": "UsageDate", "type": "Number"}]
    elif defn.granularity == "Monthly":
        date_cols = [{"name": "BillingMonth", "type": "Datetime"}]
    group_cols = [{"name": g, "type": "String"} for g in defn.groupings]
    order = _column_order(defn, opts)
    nd = len(date_cols)
    rows: list[list[Any]] = []
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        dvals, gvals, avals = list(key[:nd]), list(key[nd:]), groups[key]
        if order == "live":
            rows.append([*avals, *dvals, *gvals, CURRENCY])
        elif order == "spec":
            rows.append([*avals, *gvals, *dvals, CURRENCY])
        else:
            rows.append([*dvals, *gvals, *avals, CURRENCY])
    if order == "live":
        columns = agg_cols + date_cols + group_cols
    elif order == "spec":
        columns = agg_cols + group_cols + date_cols
    else:
        columns = date_cols + group_cols + agg_cols
    return [*columns, {"name": "Currency", "type": "String"}], rows


def qpu_cost(defn: Definition) -> int:
    """1 QPU per started month of data queried (documented current model)."""
    days = (defn.last_day - defn.first_day).days + 1
    return max(1, math.ceil(days / 31))


# --------------------------------------------------------------------------- paging tokens


def _encode_token(payload: dict[str, Any]) -> str:
    raw = zlib.compress(json.dumps(payload, separators=(",", ":")).encode())
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(zlib.decompress(raw))
    except (ValueError, zlib.error) as exc:
        raise QueryError("The $skiptoken is invalid or has expired.") from exc
    if not isinstance(payload, dict) or not {"d", "o", "a"} <= payload.keys():
        raise QueryError("The $skiptoken is invalid or has expired.")
    return payload


# --------------------------------------------------------------------------- HTTP


def _qpu_headers(rt: _Runtime, consumed: int) -> dict[str, str]:
    now = time.monotonic()
    with rt.lock:
        if consumed:
            rt.qpu.append((now, consumed))
        while rt.qpu and rt.qpu[0][0] < now - 3600:
            rt.qpu.popleft()
        remaining = []
        for name, window, quota in QPU_QUOTAS:
            used = sum(q for t, q in rt.qpu if t >= now - window)
            remaining.append(f"{name}:{max(0, quota - used)}")
    return {
        "x-ms-ratelimit-microsoft.costmanagement-qpu-consumed": str(consumed),
        "x-ms-ratelimit-microsoft.costmanagement-qpu-remaining": ",".join(remaining),
    }


def _quota_exhausted(rt: _Runtime, cost: int) -> int | None:
    """Seconds until ``cost`` QPU fit in every window, or None if they fit now."""
    now = time.monotonic()
    wait = 0.0
    with rt.lock:
        for _name, window, quota in QPU_QUOTAS:
            inside = [(t, q) for t, q in rt.qpu if t >= now - window]
            used = sum(q for _t, q in inside)
            if used + cost > quota:
                freed = 0
                for t, q in inside:
                    freed += q
                    if used - freed + cost <= quota:
                        wait = max(wait, t + window - now)
                        break
    return math.ceil(wait) if wait > 0 else None


def _arm_error(status: int, code: str, message: str, headers: dict[str, str]) -> Response:
    rid = str(uuid.uuid4())
    return errors.arm_error(status, code, f"{message}\r\n\r\n (Request ID: {rid})", headers)


def throttled(retry_after_s: int, rt: _Runtime) -> Response:
    """429 with every Cost Management retry-after header the docs and clients mention."""
    wait = str(max(0, retry_after_s))
    headers = {
        "x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after": wait,
        "x-ms-ratelimit-microsoft.costmanagement-entity-retry-after": wait,
        "x-ms-ratelimit-microsoft.costmanagement-tenant-retry-after": wait,
        "Retry-After": wait,
        **_qpu_headers(rt, 0),
    }
    err = THROTTLE_BODY["error"]
    return errors.arm_error(429, err["code"], err["message"], headers)


def _known_scope(world: Any, subscription: str, rg: str | None) -> None:
    if subscription.lower() not in {s.lower() for s in world.subscriptions}:
        raise QueryError(
            f"The subscription '{subscription}' could not be found.",
            status=404,
            code="SubscriptionNotFound",
        )
    if rg is None:
        return
    groups: Iterable[tuple[str, str]] = [
        (r.subscription_id.lower(), r.resource_group.lower()) for r in world.resources
    ] + [(w.subscription_id.lower(), w.resource_group.lower()) for w in world.workspaces]
    if (subscription.lower(), rg.lower()) not in set(groups):
        raise QueryError(
            f"Resource group '{rg}' could not be found.", status=404, code="ResourceGroupNotFound"
        )


async def query(request: Request) -> Response:
    """``POST {scope}/providers/Microsoft.CostManagement/query`` (first page and ``nextLink``)."""
    state = request.app.state.emulator
    rt = _runtime(state)
    opts = rt.options
    denied = auth.check_bearer(request, AUDIENCE, api="arm")
    if denied is not None:
        return denied
    token_text = request.query_params.get("$skiptoken") or request.query_params.get("skiptoken")
    path = request.url.path
    kinds = FAULT_KINDS + (("nextlink_break",) if token_text else ())
    rule = state.faults.take(faults_mod.endpoint_for_path(path), path=path, kinds=kinds)
    if rule is not None:
        if rule.kind == "throttle":
            wait = rule.retry_after_s if rule.retry_after_s is not None else 1
            return throttled(math.ceil(wait), rt)
        generic = await faults_mod.apply_generic(rule, api="costs")
        if generic is not None:
            return generic

    world = state.world
    subscription = request.path_params["sub"]
    rg = request.path_params.get("rg")
    try:
        api_version = request.query_params.get("api-version")
        if not api_version:
            raise QueryError(
                "The api-version query parameter (?api-version=) is required for all requests.",
                code="MissingApiVersionParameter",
            )
        if api_version not in API_VERSIONS:
            raise QueryError(
                f"The api-version '{api_version}' is invalid. The supported versions are '"
                + "','".join(sorted(API_VERSIONS, reverse=True))
                + "'.",
                code="InvalidApiVersionParameter",
            )
        _known_scope(world, subscription, rg)
        if token_text:
            payload = _decode_token(token_text)
            as_of = datetime.fromisoformat(payload["a"])
            offset = int(payload["o"])
            body = payload["d"]
        else:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError as exc:
                raise _bad("The request body is not valid JSON.") from exc
            as_of = world.now()
            offset = 0
        defn = parse_definition(body, as_of.date())
    except QueryError as exc:
        return _arm_error(exc.status, exc.code, str(exc), _qpu_headers(rt, 0))

    cost = qpu_cost(defn)
    if opts.enforce_qpu:
        wait = _quota_exhausted(rt, cost)
        if wait is not None:
            return throttled(wait, rt)
    columns, rows = await run_in_threadpool(run_query, world, subscription, rg, defn, as_of, opts)
    headers = {"x-ms-request-id": str(uuid.uuid4()), **_qpu_headers(rt, cost)}
    if not rows and opts.empty_as_204:
        return faults_mod.finish(rule, Response(status_code=204, headers=headers))
    page_size = opts.page_size or getattr(state, "cost_page_size", 1000) or 1000
    page = rows[offset : offset + page_size]
    next_link = None
    if offset + page_size < len(rows):
        token = _encode_token(
            {
                "d": defn.raw,
                "o": offset + page_size,
                "a": as_of.isoformat(),
            }
        )
        base = str(request.base_url).rstrip("/")
        next_link = f"{base}{request.url.path}?api-version={api_version}&$skiptoken={token}"
    scope = f"subscriptions/{subscription}" + (f"/resourceGroups/{rg}" if rg else "")
    name = str(uuid.uuid4())
    result = {
        "id": f"{scope}/providers/Microsoft.CostManagement/query/{name}",
        "name": name,
        "type": "Microsoft.CostManagement/query",
        "location": None,
        "sku": None,
        "eTag": None,
        "properties": {"nextLink": next_link, "columns": columns, "rows": page},
    }
    return faults_mod.finish(rule, JSONResponse(result, headers=headers))


async def admin_options(request: Request) -> Response:
    """``GET|POST /_emulator/costs/options``: read or change ``CostOptions``."""
    opts = options(request.app.state.emulator)
    if request.method == "POST":
        body = await request.json()
        for key, value in body.items():
            if hasattr(opts, key):
                setattr(opts, key, value)
    return JSONResponse(dict(opts.__dict__))


class _CaseInsensitiveRoute(Route):
    """ARM paths are case-insensitive (``resourcegroups``, ``microsoft.costmanagement``)."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.path_regex = re.compile(self.path_regex.pattern, re.IGNORECASE)


def routes() -> list[BaseRoute]:
    """Routes mounted by ``emulator.app.build_app``."""
    return [
        _CaseInsensitiveRoute(
            "/subscriptions/{sub}/providers/Microsoft.CostManagement/query",
            query,
            methods=["POST"],
        ),
        _CaseInsensitiveRoute(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CostManagement/query",
            query,
            methods=["POST"],
        ),
        Route("/_emulator/costs/options", admin_options, methods=["GET", "POST"]),
    ]
