"""Costs: Cost Management ``query.usage`` per scope, daily, → ``costs`` (DESIGN §4, issue 5).

Why the choices below:

- **Query.** ``ActualCost``, ``timeframe: Custom`` over whole UTC days, granularity ``Daily``,
  aggregation ``totalCost = Sum(Cost)``. Rows are grouped by ``ResourceId``,
  ``ResourceGroupName``, ``Meter``, ``MeterSubcategory``, ``MeterCategory``, ``ServiceName``,
  ``PublisherType`` and ``ChargeType``: Claude is Azure Marketplace usage whose rows sit under the
  *resource group* (not the Foundry account), so the group + the meter (which names the model)
  is what maps billed spend to deployments, and PublisherType/ServiceName tell Marketplace SaaS
  rows from the account's own meters. The REST reference says "up to 2 group by clauses" but the
  live service takes more (azure-sdk-for-python#12973: 15 via REST; the portal and common cost
  tools send 8+). So: ask for the full set; if the service answers 400 about the grouping, fall
  back to the documented two, ``ResourceId`` + ``Meter`` (resource group from the id, model from
  the meter; publisher/service/charge type then stay ''), and remember that per ARM endpoint.
- **Columns by name.** Column order is not fixed: values are read through ``columns[].name``
  (case-insensitive). ``UsageDate`` is a yyyymmdd number (tolerated: string, ISO date-time);
  the cost column is ``Cost`` (tolerated: ``PreTaxCost``, ``CostUSD``, ``PreTaxCostUSD``);
  ``Currency`` is its own column. Resource ids and group names are lower-cased (cost data
  lower-cases them; ARM does not), so joins are case-insensitive by construction.
- **Paging.** The SDK returns ``properties.nextLink`` but does not follow it; the same body is
  POSTed to the link through the client's own pipeline (``send_request``: same credential,
  retries, call counter). A page that fails fails the slice: nothing is written.
- **Window and revisions.** First run/backfill: from now − ``retention_days``, in calendar-month
  slices (Cost Management bills 1 QPU per month of data; a month-aligned query touches one
  month). Later cycles re-pull the last ``REPULL_DAYS`` days (from the older of the watermark's
  day and today) and *replace* what the store holds for (scope, cost type, those days) — delete
  then upsert in the slice's transaction — so revised values are right and rows that vanished
  upstream vanish here. ``REPULL_DAYS`` is 7, not 3: Marketplace usage shows up 1–3 days late
  and is revised up to ~2.5 days after that (the emulator's model: final ≤ 5 d 19 h after the
  day starts); 3 days would freeze preliminary values. A 7-day query costs the same QPU as 3.
- **Quota guard.** Cost Management allows a few queries per scope per day (tenant QPU quotas,
  data refreshed ~4 h). A scope whose last pull reached "today" is not queried again until
  ``settings.costs_interval_s`` after the watermark's ``updated_at`` — so repeated
  ``collect --once`` never exceeds it. An interrupted backfill (watermark behind its
  ``updated_at`` day) resumes at once. Throttling: every call (first page and nextLink pages)
  goes through the shared retry policy, which retries these read-only POSTs on 429 and waits
  ``x-ms-ratelimit-microsoft.costmanagement-*-retry-after`` (Cost Management may send no
  ``Retry-After``). Exhausted → failed run, watermark unmoved.
- **Model from meter.** See :func:`model_from_meter`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from sqlalchemy import Connection, delete, select

from collector.azure import AzureClients
from collector.jobs.base import (
    JobContext,
    ScopeOutcome,
    Written,
    coverage_start,
    resource_group_of,
    run_scope,
)
from models.db import upsert
from models.tables import Cost, Watermark

log = logging.getLogger("foundry_watch.collector.costs")

SOURCE = "costs"
DEFAULT_COST_TYPE = "ActualCost"
#: Days re-pulled (and replaced) every cycle: Marketplace lag plus revisions (module docstring).
REPULL_DAYS = 7
#: Groupings asked for; ``MINIMAL_GROUPING`` is the documented two-clause fallback.
FULL_GROUPING = (
    "ResourceId",
    "ResourceGroupName",
    "Meter",
    "MeterSubcategory",
    "MeterCategory",
    "ServiceName",
    "PublisherType",
    "ChargeType",
)
MINIMAL_GROUPING = ("ResourceId", "Meter")
#: Cost column names, preferred first (``Cost`` for ActualCost/AmortizedCost, ``PreTaxCost`` for
#: the legacy ``Usage`` type and the spec examples).
COST_COLUMNS = ("cost", "pretaxcost", "costusd", "pretaxcostusd", "totalcost")
#: A pull whose watermark is this close to its ``updated_at`` reached "now" (it was current).
CURRENT_SLACK = timedelta(hours=1)
#: Arm endpoints whose Cost Management refused the full grouping (process-wide memory).
_MINIMAL_ENDPOINTS: set[str] = set()

MICRO = Decimal("0.000001")


class CostPayloadError(Exception):
    """A Cost Management answer that cannot be read as complete (malformed columns/rows)."""


# --------------------------------------------------------------------------- scopes and windows


def cost_scopes(settings: Any) -> list[str]:
    """``/subscriptions/{id}`` per configured subscription, plus any explicit cost scopes."""
    scopes = [f"/subscriptions/{s}" for s in settings.subscriptions]
    scopes += [
        "/" + s.strip("/") for s in getattr(settings, "cost_scopes", None) or [] if s.strip("/")
    ]
    seen: dict[str, str] = {}
    for s in scopes:
        seen.setdefault(s.lower(), s)
    return list(seen.values())


def cost_types(settings: Any) -> list[str]:
    return list(getattr(settings, "cost_types", None) or [DEFAULT_COST_TYPE])


def watermark_scope(scope: str, cost_type: str) -> str:
    return scope if cost_type == DEFAULT_COST_TYPE else f"{scope}#{cost_type}"


@dataclass(frozen=True)
class Slice:
    """Whole UTC days ``first``..``last`` (inclusive) queried and replaced together."""

    first: date
    last: date

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time(), UTC)

    @property
    def end(self) -> datetime:
        """Midnight after ``last``: the slice covers ``[start, end)``."""
        return datetime.combine(self.last + timedelta(days=1), time(), UTC)


def month_slices(first: date, last: date) -> list[Slice]:
    """``first``..``last`` cut at calendar-month boundaries, oldest first."""
    out: list[Slice] = []
    day = first
    while day <= last:
        next_month = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
        end = min(last, next_month - timedelta(days=1))
        out.append(Slice(day, end))
        day = end + timedelta(days=1)
    return out


@dataclass(frozen=True)
class ScopeState:
    high_water: datetime
    updated_at: datetime


def read_state(conn: Connection, wm_scope: str) -> ScopeState | None:
    row = conn.execute(
        select(Watermark.high_water, Watermark.updated_at).where(
            Watermark.source == SOURCE, Watermark.scope == wm_scope
        )
    ).one_or_none()
    return None if row is None else ScopeState(row.high_water, row.updated_at)


def is_current(state: ScopeState) -> bool:
    """The last pull reached the day it ran (not an interrupted backfill slice)."""
    return state.high_water >= state.updated_at - CURRENT_SLACK


def next_allowed(state: ScopeState | None, interval_s: int) -> datetime | None:
    """When the quota guard lets this scope be queried again (None: now)."""
    if state is None or not is_current(state):
        return None
    return state.updated_at + timedelta(seconds=interval_s)


def plan_window(
    state: ScopeState | None, now: datetime, oldest: date, repull_days: int = REPULL_DAYS
) -> tuple[date, date]:
    """Days to pull, oldest first: ``(first, today)``.

    No watermark: from ``oldest``. After a current pull: its day minus the re-pull days (and
    never less than the last ``repull_days`` days). Resuming an interrupted backfill (the
    watermark is a slice end): from that day, since the slices before it are complete — plus
    the re-pull days if they reach further back.
    """
    today = now.astimezone(UTC).date()
    repull_from = today - timedelta(days=repull_days - 1)
    if state is None:
        first = oldest
    else:
        mark = min(state.high_water.astimezone(UTC).date(), today)
        if is_current(state):
            mark -= timedelta(days=repull_days - 1)
        first = min(mark, repull_from)
    return max(first, oldest), today


# --------------------------------------------------------------------------- meter → model

_FAMILIES = "opus|sonnet|haiku"
#: "Claude Sonnet 4.5 Input Tokens", "claude-opus-4-1", "Sonnet 4.5", "Claude Haiku 4.5 - Output"
_NEW_STYLE = re.compile(
    rf"(?:claude[\s_\-]*)?\b({_FAMILIES})[\s_\-]*(\d{{1,2}})(?!\d)(?:[\s_.\-]+(\d{{1,2}})(?!\d))?",
    re.IGNORECASE,
)
#: "Claude 3.5 Sonnet", "claude-3-7-sonnet" (the older naming order)
_OLD_STYLE = re.compile(
    rf"claude[\s_\-]*(\d{{1,2}})(?!\d)(?:[\s_.\-]+(\d{{1,2}})(?!\d))?[\s_\-]*({_FAMILIES})\b",
    re.IGNORECASE,
)
_CLAUDE_LIKE = re.compile(r"claude|anthropic|\b(opus|sonnet|haiku)\b", re.IGNORECASE)


def model_from_meter(meter: str, subcategory: str = "") -> str:
    """The Anthropic model id a Marketplace meter bills, or '' when it names none.

    Meter names are not documented; Microsoft describes one input and one output meter per
    partner model. The mapping is tolerant: the family word (Opus/Sonnet/Haiku) followed by a
    version ("Sonnet 4.5", "sonnet-4-5", "Opus 4") gives ``claude-{family}-{major}[-{minor}]``
    (Anthropic's ids: claude-sonnet-4-5, claude-opus-4-1); "Claude 3.5 Sonnet" gives
    ``claude-3-5-sonnet``. A dated suffix (``-20250929``) is ignored. The meter is tried first,
    then the meter subcategory. A Claude-like meter without a recognisable version keeps ''
    (its cost is stored, but not attributed to a model).
    """
    for text in (meter, subcategory):
        if not text:
            continue
        m = _NEW_STYLE.search(text)
        if m:
            family, major, minor = m.group(1).lower(), m.group(2), m.group(3)
            return f"claude-{family}-{major}" + (f"-{minor}" if minor else "")
        m = _OLD_STYLE.search(text)
        if m:
            major, minor, family = m.group(1), m.group(2), m.group(3).lower()
            return f"claude-{major}" + (f"-{minor}" if minor else "") + f"-{family}"
    return ""


def is_claude_like(meter: str, subcategory: str = "") -> bool:
    return bool(_CLAUDE_LIKE.search(meter) or _CLAUDE_LIKE.search(subcategory))


# --------------------------------------------------------------------------- parsing


def parse_usage_date(value: Any) -> date:
    """``UsageDate``: a yyyymmdd number (20251101 / 20251101.0 / "20251101") or an ISO date."""
    if isinstance(value, bool) or value is None:
        raise CostPayloadError(f"bad UsageDate {value!r}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not value.is_integer():
            raise CostPayloadError(f"bad UsageDate {value!r}")
        text = str(int(value))
    else:
        text = str(value).strip()
    try:
        if len(text) == 8 and text.isdigit():
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError as exc:
        raise CostPayloadError(f"bad UsageDate {value!r}") from exc


def to_decimal(value: Any) -> Decimal:
    """A cost value as a Decimal rounded to the store's 6 places (half-even, deterministic)."""
    if value is None or value == "":
        return Decimal(0)
    if isinstance(value, bool):
        raise CostPayloadError(f"bad cost {value!r}")
    try:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except InvalidOperation as exc:
        raise CostPayloadError(f"bad cost {value!r}") from exc
    if not number.is_finite():
        raise CostPayloadError(f"bad cost {value!r}")
    return number.quantize(MICRO, rounding=ROUND_HALF_EVEN)


@dataclass
class CostLine:
    """One row of a query answer, by meaning rather than by position."""

    day: date
    cost: Decimal
    currency: str
    resource_id: str
    resource_group: str
    meter: str
    meter_subcategory: str
    meter_category: str
    service_name: str
    publisher_type: str
    charge_type: str


def _text(row: Sequence[Any], index: int | None) -> str:
    if index is None or index >= len(row) or row[index] is None:
        return ""
    return str(row[index]).strip()


def parse_rows(columns: Sequence[Any], rows: Sequence[Any]) -> Iterator[CostLine]:
    """Read one page's rows through its column names (order is not fixed)."""
    names: dict[str, int] = {}
    for i, col in enumerate(columns):
        name = col.get("name") if isinstance(col, Mapping) else getattr(col, "name", None)
        if not isinstance(name, str):
            raise CostPayloadError("a column without a name")
        names.setdefault(name.lower(), i)
    cost_i = next((names[c] for c in COST_COLUMNS if c in names), None)
    date_i = names.get("usagedate")
    if cost_i is None or date_i is None:
        raise CostPayloadError(
            "the answer lacks a cost or UsageDate column (columns: "
            + ", ".join(sorted(names))
            + ")"
        )
    idx = {k: names.get(k) for k in ("resourceid", "resourcegroupname", "resourcegroup")}
    idx |= {
        k: names.get(k)
        for k in (
            "meter",
            "metersubcategory",
            "metercategory",
            "servicename",
            "publishertype",
            "chargetype",
            "currency",
            "billingcurrency",
        )
    }
    for row in rows:
        if not isinstance(row, (list, tuple)) or len(row) < len(columns):
            raise CostPayloadError("a row that does not match the columns")
        resource_id = _text(row, idx["resourceid"]).lower()
        group = _text(row, idx["resourcegroupname"]) or _text(row, idx["resourcegroup"])
        yield CostLine(
            day=parse_usage_date(row[date_i]),
            cost=to_decimal(row[cost_i]),
            currency=_text(row, idx["currency"]) or _text(row, idx["billingcurrency"]),
            resource_id=resource_id,
            resource_group=(group or resource_group_of(resource_id)).lower(),
            meter=_text(row, idx["meter"]),
            meter_subcategory=_text(row, idx["metersubcategory"]),
            meter_category=_text(row, idx["metercategory"]),
            service_name=_text(row, idx["servicename"]),
            publisher_type=_text(row, idx["publishertype"]),
            charge_type=_text(row, idx["chargetype"]),
        )


@dataclass
class Fetched:
    """One slice, ready to store: rows summed per natural key, and what to report."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    #: answer rows dated outside the slice (ignored)
    outside: int = 0
    #: Claude-like meters no model could be read from (stored with model_name '')
    unmapped: set[str] = field(default_factory=set)
    grouping: tuple[str, ...] = FULL_GROUPING
    fetched_at: datetime | None = None


def store_rows(
    lines: Iterable[CostLine], scope: str, cost_type: str, sl: Slice, fetched_at: datetime
) -> Fetched:
    """Rows for ``costs``, summed per natural key.

    Several answer rows can share the store's key (e.g. one meter under two subcategories);
    they are summed, never overwritten.
    """
    by_key: dict[tuple, dict[str, Any]] = {}
    outside = 0
    unmapped: set[str] = set()
    for line in lines:
        if not sl.first <= line.day <= sl.last:
            outside += 1
            continue
        key = (
            line.day,
            line.resource_group,
            line.resource_id,
            line.meter,
            line.publisher_type,
            line.charge_type,
        )
        row = by_key.get(key)
        if row is not None:
            row["cost"] += line.cost
            continue
        model = model_from_meter(line.meter, line.meter_subcategory)
        if not model and is_claude_like(line.meter, line.meter_subcategory):
            unmapped.add(line.meter)
        by_key[key] = {
            "scope": scope,
            "cost_type": cost_type,
            "day": line.day,
            "resource_group": line.resource_group,
            "resource_arm_id": line.resource_id,
            "meter": line.meter,
            "meter_category": line.meter_category,
            "service_name": line.service_name,
            "publisher_type": line.publisher_type,
            "charge_type": line.charge_type,
            "model_name": model,
            "cost": line.cost,
            "currency": line.currency[:8],
            "fetched_at": fetched_at,
        }
    return Fetched(list(by_key.values()), outside, unmapped, fetched_at=fetched_at)


# --------------------------------------------------------------------------- fetching


def query_body(cost_type: str, sl: Slice, grouping: Sequence[str]) -> dict[str, Any]:
    """The QueryDefinition wire body (also POSTed to ``nextLink``)."""
    from azure.mgmt.costmanagement import models

    definition = models.QueryDefinition(
        type=cost_type,
        timeframe="Custom",
        time_period=models.QueryTimePeriod(
            from_property=sl.start, to=sl.end - timedelta(seconds=1)
        ),
        dataset=models.QueryDataset(
            granularity="Daily",
            aggregation={"totalCost": models.QueryAggregation(name="Cost", function="Sum")},
            grouping=[models.QueryGrouping(type="Dimension", name=g) for g in grouping],
        ),
    )
    return definition.as_dict()


def _page_parts(payload: Any) -> tuple[list[Any], list[Any], str | None]:
    if payload is None:  # 204: no content, no rows
        return [], [], None
    if not isinstance(payload, Mapping):
        raise CostPayloadError("the answer is not a JSON object")
    props = payload.get("properties", payload)
    if not isinstance(props, Mapping):
        raise CostPayloadError("the answer has no properties object")
    columns = props.get("columns") or []
    rows = props.get("rows") or []
    link = props.get("nextLink") or props.get("next_link")
    if not isinstance(columns, list) or not isinstance(rows, list):
        raise CostPayloadError("columns/rows are not arrays")
    if rows and not columns:
        raise CostPayloadError("rows without columns")
    if link is not None and not isinstance(link, str):
        raise CostPayloadError("nextLink is not a string")
    return columns, rows, link or None


def _grouping_refused(exc: HttpResponseError) -> bool:
    text = f"{getattr(exc, 'message', '')} {exc}".lower()
    return exc.status_code == 400 and "group" in text


def fetch_pages(
    clients: AzureClients, scope: str, body: dict[str, Any]
) -> Iterator[tuple[list[Any], list[Any]]]:
    """(columns, rows) of every page: the first via ``query.usage``, the rest via nextLink."""
    client = clients.costs()
    result = client.query.usage(scope.lstrip("/"), body)
    payload = None if result is None else result.as_dict()
    columns, rows, link = _page_parts(payload)
    yield columns, rows
    seen: set[str] = set()
    while link:
        if link in seen:
            raise CostPayloadError("nextLink repeats a page already read")
        seen.add(link)
        request = HttpRequest("POST", link, json=body)
        response = client.send_request(request)
        response.raise_for_status()
        if response.status_code == 204 or not response.content:
            break
        try:
            payload = response.json()
        except ValueError as exc:
            raise CostPayloadError("a nextLink page is not valid JSON") from exc
        columns, rows, link = _page_parts(payload)
        yield columns, rows


def fetch_slice(
    ctx: JobContext, clients: AzureClients, scope: str, cost_type: str, sl: Slice
) -> Fetched:
    """Every page of one slice, parsed; raises on anything incomplete (nothing is written)."""
    endpoint = ctx.settings.arm_endpoint.lower()
    grouping = MINIMAL_GROUPING if endpoint in _MINIMAL_ENDPOINTS else FULL_GROUPING
    fetched_at = ctx.clock()
    try:
        lines = _collect_lines(clients, scope, query_body(cost_type, sl, grouping))
    except HttpResponseError as exc:
        if grouping == MINIMAL_GROUPING or not _grouping_refused(exc):
            raise
        log.warning(
            "costs on %s: the service refused %d groupings; falling back to %s",
            scope,
            len(grouping),
            "+".join(MINIMAL_GROUPING),
        )
        _MINIMAL_ENDPOINTS.add(endpoint)
        grouping = MINIMAL_GROUPING
        lines = _collect_lines(clients, scope, query_body(cost_type, sl, grouping))
    fetched = store_rows(lines, scope, cost_type, sl, fetched_at)
    fetched.grouping = tuple(grouping)
    return fetched


def _collect_lines(clients: AzureClients, scope: str, body: dict[str, Any]) -> list[CostLine]:
    lines: list[CostLine] = []
    for columns, rows in fetch_pages(clients, scope, body):
        lines.extend(parse_rows(columns, rows))
    return lines


# --------------------------------------------------------------------------- writing


def replace_slice(
    conn: Connection,
    scope: str,
    cost_type: str,
    sl: Slice,
    rows: list[dict[str, Any]],
) -> int:
    """Replace the stored rows of (scope, cost type, slice days) with ``rows``."""
    conn.execute(
        delete(Cost).where(
            Cost.scope == scope,
            Cost.cost_type == cost_type,
            Cost.day >= sl.first,
            Cost.day <= sl.last,
        )
    )
    return upsert(conn, Cost, rows) if rows else 0


def write_watermark(
    conn: Connection, wm_scope: str, high_water: datetime, updated_at: datetime
) -> None:
    """Like ``runs.set_watermark`` but stamped with the job clock: the quota guard compares
    ``updated_at`` with ``ctx.clock()``, so both must come from the same clock."""
    upsert(
        conn,
        Watermark,
        [
            {
                "source": SOURCE,
                "scope": wm_scope,
                "high_water": high_water,
                "updated_at": updated_at,
            }
        ],
    )


# --------------------------------------------------------------------------- running


def _collect_scope(
    ctx: JobContext,
    scope: str,
    cost_type: str,
    oldest: date,
    on_slice: Callable[[int], None] | None = None,
    plan: list[Slice] | None = None,
    fill_back: bool = False,
) -> list[ScopeOutcome]:
    """Pull ``plan`` (or this cycle's window) slice by slice; stop at the first failure.

    ``fill_back``: the slices lie before the collected stretch (newest first); the watermark
    stays where it is (their run records say how far back the stretch now reaches).
    """
    wm_scope = watermark_scope(scope, cost_type)
    if plan is None:
        plan = plan_scope(ctx, scope, cost_type, oldest)
    outcomes: list[ScopeOutcome] = []
    for i, sl in enumerate(plan):
        if ctx.stopping():  # between slices only: the one before committed whole
            break

        def fetch(clients: AzureClients, sl: Slice = sl) -> Fetched:
            return fetch_slice(ctx, clients, scope, cost_type, sl)

        def write(conn: Connection, fetched: object, sl: Slice = sl) -> Written:
            assert isinstance(fetched, Fetched)
            written = replace_slice(conn, scope, cost_type, sl, fetched.rows)
            now = ctx.clock()
            fetched_at = fetched.fetched_at or now
            if not fill_back:
                write_watermark(conn, wm_scope, min(sl.end, fetched_at), now)
            return Written(
                written, "ok", _notes(scope, sl, fetched), (sl.start, min(sl.end, fetched_at))
            )

        outcome = run_scope(ctx, SOURCE, wm_scope, fetch, write, (sl.start, sl.end))
        outcomes.append(outcome)
        if on_slice:
            on_slice(i + 1)
        if outcome.status == "failed":
            break
    return outcomes


def _notes(scope: str, sl: Slice, fetched: Fetched) -> str:
    """What an operator should know about a stored slice (the run stays ok)."""
    notes = []
    if fetched.outside:
        notes.append(f"ignored {fetched.outside} row(s) dated outside {sl.first}..{sl.last}")
    if fetched.grouping == MINIMAL_GROUPING:
        notes.append(
            f"grouped by {'+'.join(MINIMAL_GROUPING)} only "
            "(publisher/service/charge type unavailable)"
        )
    if fetched.unmapped:
        names = ", ".join(repr(m) for m in sorted(fetched.unmapped)[:3])
        notes.append(f"meter(s) naming no known model, cost kept unattributed: {names}")
    return f"costs on {scope}: " + "; ".join(notes) if notes else ""


def plan_scope(ctx: JobContext, scope: str, cost_type: str, oldest: date) -> list[Slice]:
    """This cycle's slices for one scope: [] while the quota guard holds it back."""
    now = ctx.clock()
    with ctx.engine.connect() as conn:
        state = read_state(conn, watermark_scope(scope, cost_type))
    allowed = next_allowed(state, ctx.settings.costs_interval_s)
    if allowed is not None and now < allowed:
        return []
    first, last = plan_window(state, now, oldest, _repull_days(ctx))
    return month_slices(first, last) if first <= last else []


def _repull_days(ctx: JobContext) -> int:
    return int(getattr(ctx.settings, "costs_repull_days", None) or REPULL_DAYS)


def _merge(job_scope: str, outcomes: list[ScopeOutcome]) -> ScopeOutcome:
    """One outcome per scope: rows and calls summed, the last slice's status and errors."""
    errors = [o.error for o in outcomes if o.error]
    status = outcomes[-1].status
    if status == "ok" and any(o.status == "partial" for o in outcomes):
        status = "partial"
    return ScopeOutcome(
        SOURCE,
        job_scope,
        status,
        sum(o.rows for o in outcomes),
        sum(o.api_calls for o in outcomes),
        "; ".join(errors),
    )


def _skipped(ctx: JobContext, scope: str, cost_type: str) -> ScopeOutcome:
    with ctx.engine.connect() as conn:
        state = read_state(conn, watermark_scope(scope, cost_type))
    allowed = next_allowed(state, ctx.settings.costs_interval_s)
    when = allowed.strftime("%Y-%m-%d %H:%M UTC") if allowed else "now"
    return ScopeOutcome(
        SOURCE,
        watermark_scope(scope, cost_type),
        "skipped",
        0,
        0,
        f"costs on {scope}: queried recently; Cost Management quota allows the next query "
        f"after {when}",
    )


def _oldest_day(ctx: JobContext, start: datetime | None = None) -> date:
    now = ctx.clock()
    begin = start if start is not None else now - timedelta(days=ctx.settings.retention_days)
    return begin.astimezone(UTC).date()


def run(ctx: JobContext) -> list[ScopeOutcome]:
    """One cycle: each scope's window (first run: the retention window), if the quota allows."""
    oldest = _oldest_day(ctx)
    outcomes: list[ScopeOutcome] = []
    for scope in cost_scopes(ctx.settings):
        for cost_type in cost_types(ctx.settings):
            if ctx.stopping():
                return outcomes
            done = _collect_scope(ctx, scope, cost_type, oldest)
            if done:
                outcomes.append(_merge(watermark_scope(scope, cost_type), done))
            elif not ctx.stopping():
                outcomes.append(_skipped(ctx, scope, cost_type))
    return outcomes


def backfill(
    ctx: JobContext, start: datetime, progress: Callable[[int, int], None] | None = None
) -> list[ScopeOutcome]:
    """Fill from ``start`` to today in month slices; resumable from the watermarks.

    A scope with a watermark continues from it (the re-pull overlap included); a scope whose
    last pull is current and within the quota interval is left alone.
    """
    oldest = _oldest_day(ctx, start)
    plans = [
        (scope, cost_type, plan_scope(ctx, scope, cost_type, oldest))
        for scope in cost_scopes(ctx.settings)
        for cost_type in cost_types(ctx.settings)
    ]
    backs = {
        (scope, cost_type): plan_fill_back(ctx, scope, cost_type, oldest)
        for scope, cost_type, _plan in plans
    }
    total = sum(len(p) for _s, _c, p in plans) + sum(len(b) for b in backs.values()) or 1
    done = 0
    if progress:
        progress(0, total)
    outcomes: list[ScopeOutcome] = []
    for scope, cost_type, plan in plans:
        if ctx.stopping():
            return outcomes
        if not plan:
            outcomes.append(_skipped(ctx, scope, cost_type))
            continue
        base = done

        def on_slice(n: int, base: int = base) -> None:
            if progress:
                progress(base + n, total)

        results = _collect_scope(ctx, scope, cost_type, oldest, on_slice, plan)
        done = base + len(plan)
        if results:  # empty only when stopped before its first slice
            outcomes.append(_merge(watermark_scope(scope, cost_type), results))
    for (scope, cost_type), back in backs.items():
        if ctx.stopping():
            return outcomes
        if not back:
            continue
        base = done

        def on_back(n: int, base: int = base) -> None:
            if progress:
                progress(base + n, total)

        results = _collect_scope(ctx, scope, cost_type, oldest, on_back, back, fill_back=True)
        done = base + len(back)
        if results:
            outcomes.append(_merge(watermark_scope(scope, cost_type), results))
    if progress:
        progress(total, total)
    return outcomes


def plan_fill_back(ctx: JobContext, scope: str, cost_type: str, oldest: date) -> list[Slice]:
    """Month slices between ``oldest`` and the first day of the collected stretch, newest
    first (empty when the stretch reaches back far enough, or nothing was collected yet).

    Not held back by the quota guard: these days were never pulled, and a backfill that asks
    for them is a one-off (a slice costs the QPU of one month of data)."""
    wm_scope = watermark_scope(scope, cost_type)
    with ctx.engine.connect() as conn:
        state = read_state(conn, wm_scope)
        if state is None:
            return []
        low = coverage_start(conn, SOURCE, wm_scope, state.high_water)
    if low is None:
        return []
    first = low.astimezone(UTC).date()
    if first <= oldest:
        return []
    return list(reversed(month_slices(oldest, first - timedelta(days=1))))
