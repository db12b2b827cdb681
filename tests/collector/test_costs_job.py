"""Costs job and spend functions against the emulator's Cost Management (SQLite and PostgreSQL).

The store must equal what the emulator's query API shows, row for row (cost at the store's six
decimals), and per resource group and day the emulator's billed truth; revisions replace old
values; paging, throttling and the quota guard behave; spend splits are exact.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from azure.core.pipeline import PipelineResponse
from azure.core.pipeline.transport import HttpRequest as TransportRequest
from sqlalchemy import insert, select, text, update

from collector import spend
from collector.azure import AzureRetryPolicy, make_credential
from collector.jobs import costs, discovery, metrics
from collector.jobs.base import JobContext
from emulator import costs as emu_costs
from emulator.server import EmulatorServer
from models.db import upsert
from models.settings import load_settings
from models.tables import CollectorRun, Cost, Deployment, MetricPoint, Resource, Watermark

# --------------------------------------------------------------------------- pure units


@pytest.mark.parametrize(
    ("meter", "sub", "model"),
    [
        ("Claude Sonnet 4.5 Input Tokens", "", "claude-sonnet-4-5"),
        ("Claude Sonnet 4.5 Output Tokens", "", "claude-sonnet-4-5"),
        ("Claude Opus 4.1 Cache Read Input Tokens", "", "claude-opus-4-1"),
        ("Claude Haiku 4.5 5m Cache Write Input Tokens", "", "claude-haiku-4-5"),
        ("claude-opus-4-5-20251101 input", "", "claude-opus-4-5"),
        ("Sonnet 4.5 Output", "", "claude-sonnet-4-5"),
        ("Claude Opus 4 Input Tokens", "", "claude-opus-4"),
        ("claude-sonnet-4-20250514 output", "", "claude-sonnet-4"),
        ("Claude 3.5 Sonnet Input", "", "claude-3-5-sonnet"),
        ("Input Tokens", "Claude Haiku 4.5", "claude-haiku-4-5"),
        ("Claude Consumption Units", "", ""),
        ("Standard Text Records", "Content Safety", ""),
        ("Analytics Logs Data Ingestion", "", ""),
    ],
)
def test_model_from_meter(meter: str, sub: str, model: str) -> None:
    assert costs.model_from_meter(meter, sub) == model


def test_rows_are_read_by_column_name_in_any_order() -> None:
    columns = [
        {"name": "Meter", "type": "String"},
        {"name": "UsageDate", "type": "Number"},
        {"name": "PreTaxCost", "type": "Number"},
        {"name": "ResourceId", "type": "String"},
        {"name": "Currency", "type": "String"},
    ]
    rid = "/subscriptions/s/resourcegroups/rg-a"
    rows = [
        [
            "Claude Sonnet 4.5 Input Tokens",
            20251101,
            1.23456789,
            "/SUBSCRIPTIONS/S/resourceGroups/RG-A",
            "USD",
        ],
        ["Claude Sonnet 4.5 Output Tokens", "20251102", 2, rid, "USD"],
        ["X", 20251103.0, None, "", "EUR"],
    ]
    lines = list(costs.parse_rows(columns, rows))
    assert [x.day for x in lines] == [date(2025, 11, 1), date(2025, 11, 2), date(2025, 11, 3)]
    assert lines[0].cost == Decimal("1.234568")
    assert lines[0].resource_id == "/subscriptions/s/resourcegroups/rg-a"
    assert lines[0].resource_group == "rg-a" == lines[1].resource_group
    assert lines[1].cost == Decimal(2)
    assert lines[2].cost == 0 and lines[2].currency == "EUR" and lines[2].resource_group == ""


def test_store_rows_sum_shared_keys_and_flag_unknown_claude_meters() -> None:
    def line(day: int, meter: str, cost: str, sub: str = "") -> costs.CostLine:
        return costs.CostLine(
            day=date(2025, 11, day),
            cost=Decimal(cost),
            currency="USD",
            resource_id="/subscriptions/s/resourcegroups/rg",
            resource_group="rg",
            meter=meter,
            meter_subcategory=sub,
            meter_category="SaaS",
            service_name="SaaS",
            publisher_type="Marketplace",
            charge_type="Usage",
        )

    sl = costs.Slice(date(2025, 11, 1), date(2025, 11, 30))
    fetched = costs.store_rows(
        [
            line(2, "Claude Sonnet 4.5 Input Tokens", "1.000001", "a"),
            line(2, "Claude Sonnet 4.5 Input Tokens", "2", "b"),  # same store key
            line(2, "Claude Consumption Units", "3"),
            line(2, "Standard Text Records", "4"),
            line(12, "Claude Sonnet 4.5 Input Tokens", "5"),
            dataclasses.replace(
                line(1, "Claude Sonnet 4.5 Input Tokens", "6"), day=date(2025, 12, 1)
            ),
        ],
        "/subscriptions/s",
        "ActualCost",
        sl,
        datetime(2025, 12, 1, tzinfo=UTC),
    )
    by = {(r["day"].day, r["meter"]): (r["cost"], r["model_name"]) for r in fetched.rows}
    assert by == {
        (2, "Claude Sonnet 4.5 Input Tokens"): (Decimal("3.000001"), "claude-sonnet-4-5"),
        (2, "Claude Consumption Units"): (Decimal(3), ""),
        (2, "Standard Text Records"): (Decimal(4), ""),
        (12, "Claude Sonnet 4.5 Input Tokens"): (Decimal(5), "claude-sonnet-4-5"),
    }
    assert fetched.outside == 1
    assert fetched.unmapped == {"Claude Consumption Units"}


@pytest.mark.parametrize(
    ("columns", "rows"),
    [
        ([{"name": "Meter"}, {"name": "Currency"}], [["m", "USD"]]),  # no cost / date
        ([{"name": "Cost"}, {"name": "UsageDate"}], [[1.0]]),  # short row
        ([{"name": "Cost"}, {"name": "UsageDate"}], [[1.0, "yesterday"]]),
        ([{"name": "Cost"}, {"name": "UsageDate"}], [["NaN", 20251101]]),
    ],
)
def test_malformed_pages_raise(columns: list, rows: list) -> None:
    with pytest.raises(costs.CostPayloadError):
        list(costs.parse_rows(columns, rows))


def test_month_slices_and_windows() -> None:
    sl = costs.month_slices(date(2025, 10, 27), date(2025, 12, 2))
    assert [(s.first, s.last) for s in sl] == [
        (date(2025, 10, 27), date(2025, 10, 31)),
        (date(2025, 11, 1), date(2025, 11, 30)),
        (date(2025, 12, 1), date(2025, 12, 2)),
    ]
    now = datetime(2025, 11, 20, 10, 0, tzinfo=UTC)
    oldest = date(2025, 10, 21)
    assert costs.plan_window(None, now, oldest) == (oldest, date(2025, 11, 20))
    current = costs.ScopeState(now - timedelta(hours=5), now - timedelta(hours=5))
    assert costs.plan_window(current, now, oldest) == (date(2025, 11, 14), date(2025, 11, 20))
    # An interrupted backfill (watermark = a slice end, long before it was written) resumes there.
    resumed = costs.ScopeState(datetime(2025, 11, 1, tzinfo=UTC), now - timedelta(minutes=1))
    assert not costs.is_current(resumed)
    assert costs.next_allowed(resumed, 4 * 3600) is None
    assert costs.plan_window(resumed, now, oldest) == (date(2025, 11, 1), date(2025, 11, 20))
    # A collector that stopped for ten days re-pulls from the old watermark's week.
    stale = costs.ScopeState(now - timedelta(days=10), now - timedelta(days=10))
    assert costs.plan_window(stale, now, oldest) == (date(2025, 11, 4), date(2025, 11, 20))
    assert costs.next_allowed(current, 4 * 3600) == current.updated_at + timedelta(hours=4)


def test_cost_retry_headers_make_a_post_429_retryable() -> None:
    """Cost Management may throttle with only its own header: POST must still be retried."""
    policy = AzureRetryPolicy(retry_total=2)
    request = TransportRequest("POST", "https://management.azure.com/x/query")

    class Response:
        status_code = 429
        headers = {"x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after": "7"}

    pipeline_response = PipelineResponse(request, Response(), None)  # type: ignore[arg-type]
    assert policy.is_retry(policy.configure_retries({}), pipeline_response)
    assert policy.get_retry_after(pipeline_response) == 7


def _estimate(dep_id: int, rg: str, model: str, cost: str | None, tokens: int = 10) -> Any:
    return spend.EstimatedSpend(
        day=date(2025, 11, 1),
        deployment_id=dep_id,
        deployment_name=f"d{dep_id}",
        resource_arm_id=f"/subscriptions/s/resourcegroups/{rg}/providers/x/accounts/a",
        subscription_id="s",
        resource_group=rg,
        model_name=model,
        input_tokens=tokens,
        output_tokens=0,
        cache_read_tokens=0,
        cache_write_5m_tokens=0,
        cache_write_1h_tokens=0,
        cost=None if cost is None else Decimal(cost),
        currency="USD",
    )


def test_split_is_exact_and_by_priced_share() -> None:
    bill = spend.GroupBill(date(2025, 11, 1), "s", "rg", "claude-sonnet-4-5", Decimal("10"), "USD")
    members = [
        _estimate(1, "rg", "claude-sonnet-4-5", "1"),
        _estimate(2, "rg", "claude-sonnet-4-5", "1"),
        _estimate(3, "rg", "claude-sonnet-4-5", "1"),
        _estimate(4, "rg", "claude-sonnet-4-5", "0"),
    ]
    parts = spend.split_bill(bill, members)
    assert sum(p.cost for p in parts) == Decimal("10")
    assert {p.deployment_id for p in parts} == {1, 2, 3}
    assert all(abs(p.cost - Decimal("3.333333")) <= Decimal("0.000002") for p in parts)
    # No tokens that day: one unattributed row keeps the money.
    lone = spend.split_bill(bill, [])
    assert [(p.deployment_id, p.cost) for p in lone] == [(None, Decimal("10"))]


# --------------------------------------------------------------------------- store vs emulator


def _store_rows(
    ctx: JobContext, scope: str, cost_type: str = "ActualCost", charge_type: str = "Usage"
) -> dict[tuple, tuple]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(Cost).where(Cost.scope == scope, Cost.cost_type == cost_type)
        ).all()
    out: dict[tuple, tuple] = {}
    for r in rows:
        key = (r.day, r.resource_group, r.resource_arm_id, r.meter, r.publisher_type)
        assert key not in out
        assert r.currency == "USD" and r.charge_type == charge_type
        out[key] = (Decimal(r.cost), r.model_name, r.service_name, r.meter_category)
    return out


def _truth_rows(
    world: Any, sub: str, first: date, last: date, as_of: datetime, opts: Any
) -> dict[tuple, tuple]:
    """What the emulator's query API shows for the subscription at ``as_of``, row by row."""
    window = emu_costs.billable_days(world, as_of)
    out: dict[tuple, tuple] = {}
    if window is None:
        return out
    day = max(first, window[0])
    while day <= min(last, window[1]):
        for r in emu_costs.reported_rows(world, day, as_of, opts=opts):
            if r.subscription_id.lower() != sub.lower():
                continue
            key = (day, r.resource_group.lower(), r.resource_id.lower(), r.meter, r.publisher_type)
            assert key not in out
            out[key] = (costs.to_decimal(r.cost), r.model or "", r.service_name, r.meter_category)
        day += timedelta(days=1)
    return out


def _assert_store_is_truth(
    ctx: JobContext, world: Any, first: date, last: date, as_of: list[datetime], opts: Any
) -> int:
    """Store == API view at one of the ``as_of`` instants (the query ran between them)."""
    n = 0
    for sub in ctx.settings.subscriptions:
        scope = f"/subscriptions/{sub}"
        stored = _store_rows(ctx, scope)
        candidates = [_truth_rows(world, sub, first, last, t, opts) for t in as_of]
        assert any(stored == c for c in candidates), _diff(stored, candidates[-1])
        n += len(stored)
        _assert_group_totals(stored, world, sub, as_of, opts)
    return n


def _assert_group_totals(
    stored: dict[tuple, tuple], world: Any, sub: str, as_of: list[datetime], opts: Any
) -> None:
    """Per day and resource group, the Claude rows add up to ``billed_truth`` (the helper)."""
    groups: dict[tuple[date, str], list[Decimal]] = defaultdict(list)
    for (day, rg, _rid, _meter, _pt), (cost, model, _s, _c) in stored.items():
        if model:
            groups[(day, rg)].append(cost)
    assert groups
    for (day, rg), parts in groups.items():
        scope = f"/subscriptions/{sub}/resourceGroups/{rg}"
        truths = [
            emu_costs.billed_truth(world, scope, day, t, cache_meters=opts.cache_meters)
            for t in as_of
        ]
        tolerance = Decimal("0.0000005") * len(parts)
        assert any(abs(sum(parts) - Decimal(repr(t.reported))) <= tolerance for t in truths), (
            day,
            rg,
            sum(parts),
            [t.reported for t in truths],
        )


def _diff(stored: dict, truth: dict) -> str:
    missing = sorted(set(truth) - set(stored))[:3]
    extra = sorted(set(stored) - set(truth))[:3]
    changed = [(k, stored[k], truth[k]) for k in stored if k in truth and stored[k] != truth[k]]
    return f"missing={missing} extra={extra} changed={changed[:3]}"


def _window(ctx: JobContext, now: datetime) -> tuple[date, date]:
    return (now - timedelta(days=ctx.settings.retention_days)).date(), now.date()


def _runs(ctx: JobContext) -> list[Any]:
    with ctx.engine.connect() as conn:
        return conn.execute(
            select(CollectorRun).where(CollectorRun.job == "costs").order_by(CollectorRun.id)
        ).all()


def _watermarks(ctx: JobContext) -> dict[str, tuple[datetime, datetime]]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(Watermark).where(Watermark.source == "costs")).all()
    return {r.scope: (r.high_water, r.updated_at) for r in rows}


def _one_subscription(ctx: JobContext) -> JobContext:
    settings = ctx.settings.model_copy(update={"subscriptions": ctx.settings.subscriptions[:1]})
    return dataclasses.replace(ctx, settings=settings)


@pytest.fixture
def cost_options(emulator: Any) -> Iterator[Any]:
    """The emulator's cost switches, restored after the test."""
    opts = emu_costs.options(emulator.state)
    saved = dict(opts.__dict__)
    yield opts
    opts.__dict__.update(saved)


def test_backfill_equals_the_billed_truth_and_is_idempotent(
    collector_ctx: JobContext, emulator: Any, cost_options: Any
) -> None:
    ctx, world = collector_ctx, emulator.world
    t0 = world.now()
    calls: list[tuple[int, int]] = []
    outcomes = costs.backfill(
        ctx, ctx.clock() - timedelta(days=30), lambda d, t: calls.append((d, t))
    )
    t1 = world.now()
    assert [o.status for o in outcomes] == ["ok"] * len(ctx.settings.subscriptions)
    assert calls[-1][0] == calls[-1][1] >= 2
    first, last = _window(ctx, t1)
    n = _assert_store_is_truth(ctx, world, first, last, [t1, t0], cost_options)
    assert n > 100
    # Month-sized queries: one API call per month slice (no paging at the default page size).
    runs = _runs(ctx)
    assert all(r.status == "ok" and r.api_calls == 1 for r in runs)
    wms = _watermarks(ctx)
    assert set(wms) == {f"/subscriptions/{s}" for s in ctx.settings.subscriptions}
    assert all(t0 - timedelta(seconds=5) <= hw <= t1 for hw, _u in wms.values())

    # Same window again (the guard lifted): the store does not change.
    with ctx.engine.begin() as conn:
        conn.execute(update(Watermark).values(updated_at=t0 - timedelta(days=1)))
        conn.execute(update(Watermark).values(high_water=t0 - timedelta(days=1)))
    before = {s: _store_rows(ctx, f"/subscriptions/{s}") for s in ctx.settings.subscriptions}
    t2 = world.now()
    assert all(o.status == "ok" for o in costs.run(ctx))
    after = {s: _store_rows(ctx, f"/subscriptions/{s}") for s in ctx.settings.subscriptions}
    if before != after:  # only legitimate if a day's revision landed in between
        _assert_store_is_truth(ctx, world, first, last, [world.now(), t2], cost_options)


def test_tiny_pages_give_the_same_store(
    collector_ctx: JobContext, emulator: Any, cost_options: Any
) -> None:
    ctx, world = _one_subscription(collector_ctx), emulator.world
    cost_options.page_size = 40
    cost_options.column_order = "auto"
    t0 = world.now()
    outcomes = costs.run(ctx)
    t1 = world.now()
    assert [o.status for o in outcomes] == ["ok"]
    runs = _runs(ctx)
    assert sum(r.api_calls for r in runs) > len(runs) * 3  # nextLink pages were followed
    first, last = _window(ctx, t1)
    _assert_store_is_truth(ctx, world, first, last, [t1, t0], cost_options)


def test_a_next_page_failing_once_is_retried(
    collector_ctx: JobContext, emulator: Any, cost_options: Any, faults: Any
) -> None:
    ctx, world = _one_subscription(collector_ctx), emulator.world
    cost_options.page_size = 100
    faults.add(kind="nextlink_break", endpoint="costs", count=1)
    t0 = world.now()
    assert [o.status for o in costs.run(ctx)] == ["ok"]
    runs = _runs(ctx)
    pages = sum(max(1, -(-r.rows // 100)) for r in runs)
    assert sum(r.api_calls for r in runs) == pages + 1  # the broken page, asked twice
    first, last = _window(ctx, world.now())
    _assert_store_is_truth(ctx, world, first, last, [world.now(), t0], cost_options)


def test_throttled_once_is_retried_after_the_cost_headers(
    collector_ctx: JobContext, emulator: Any, cost_options: Any, faults: Any
) -> None:
    ctx, world = _one_subscription(collector_ctx), emulator.world
    faults.add(kind="throttle", endpoint="costs", count=1, retry_after_s=2)
    t0, started = world.now(), time.monotonic()
    outcomes = costs.run(ctx)
    elapsed = time.monotonic() - started
    assert [o.status for o in outcomes] == ["ok"]
    assert elapsed >= 2
    runs = _runs(ctx)
    assert sum(r.api_calls for r in runs) == len(runs) + 1  # the throttled call + its retry
    first, last = _window(ctx, world.now())
    _assert_store_is_truth(ctx, world, first, last, [world.now(), t0], cost_options)


def test_persistent_throttling_fails_and_keeps_the_watermark(
    collector_ctx: JobContext, emulator: Any, cost_options: Any, faults: Any
) -> None:
    ctx, world = _one_subscription(collector_ctx), emulator.world
    scope = f"/subscriptions/{ctx.settings.subscriptions[0]}"
    # A first good pull, then an aged watermark so the next cycle is due.
    assert [o.status for o in costs.run(ctx)] == ["ok"]
    aged = ctx.clock() - timedelta(seconds=ctx.settings.costs_interval_s + 5)
    with ctx.engine.begin() as conn:
        conn.execute(update(Watermark).values(updated_at=aged, high_water=aged))
    marks, stored = _watermarks(ctx), _store_rows(ctx, scope)

    rule = faults.add(kind="throttle", endpoint="costs", count=None, retry_after_s=1)
    started = time.monotonic()
    outcomes = costs.run(ctx)
    assert [o.status for o in outcomes] == ["failed"]
    assert "429" in outcomes[0].error and "throttled" in outcomes[0].error
    # Every call was a throttled one, retried after the announced second, then given up.
    assert outcomes[0].api_calls == rule.fired >= 3
    assert time.monotonic() - started >= rule.fired - 1
    assert _watermarks(ctx) == marks
    assert _store_rows(ctx, scope) == stored
    last_run = _runs(ctx)[-1]
    assert last_run.status == "failed" and last_run.rows == 0

    faults.clear()
    t0 = world.now()
    assert [o.status for o in costs.run(ctx)] == ["ok"]  # due again: the failure moved nothing
    first, last = _window(ctx, world.now())
    _assert_store_is_truth(ctx, world, first, last, [world.now(), t0], cost_options)


def test_refused_groupings_fall_back_to_resource_id_and_meter(
    collector_ctx: JobContext, emulator: Any, cost_options: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service that refuses the grouping (400 "Invalid dataset grouping") gets the documented
    two; groups and models still come out of ResourceId and Meter."""
    ctx, world = _one_subscription(collector_ctx), emulator.world
    monkeypatch.setattr(costs, "FULL_GROUPING", (*costs.FULL_GROUPING, "NoSuchDimension"))
    monkeypatch.setattr(costs, "_MINIMAL_ENDPOINTS", set())
    t0 = world.now()
    outcomes = costs.run(ctx)
    assert [o.status for o in outcomes] == ["ok"]
    assert "grouped by ResourceId+Meter only" in outcomes[0].error
    assert ctx.settings.arm_endpoint.lower() in costs._MINIMAL_ENDPOINTS
    runs = _runs(ctx)
    assert sum(r.api_calls for r in runs) == len(runs) + 1  # one refusal, remembered after
    stored = _store_rows(ctx, f"/subscriptions/{ctx.settings.subscriptions[0]}", charge_type="")
    assert {k[4] for k in stored} == {""}  # no PublisherType column any more
    claude = {k: v for k, v in stored.items() if v[1]}
    assert claude and {v[1] for v in claude.values()} >= {"claude-sonnet-4-5"}
    plain = {(k[0], k[1], k[2], k[3]): v for k, v in stored.items()}
    truth = _truth_rows(world, ctx.settings.subscriptions[0], *_window(ctx, world.now()),
                        world.now(), cost_options)  # fmt: skip
    truth_t0 = _truth_rows(world, ctx.settings.subscriptions[0], *_window(ctx, t0), t0,
                           cost_options)  # fmt: skip
    assert any(
        plain == {(k[0], k[1], k[2], k[3]): (v[0], v[1], "", "") for k, v in t.items()}
        for t in (truth, truth_t0)
    )


def test_quota_guard_allows_one_query_per_interval(collector_ctx: JobContext) -> None:
    ctx = _one_subscription(collector_ctx)
    first = costs.run(ctx)
    assert [o.status for o in first] == ["ok"] and first[0].api_calls >= 1
    runs_before = len(_runs(ctx))
    for _ in range(3):  # repeated `collect --once`
        again = costs.run(ctx)
        assert [(o.status, o.api_calls) for o in again] == [("skipped", 0)]
        assert "quota" in again[0].error
    assert len(_runs(ctx)) == runs_before
    skipped = costs.backfill(ctx, ctx.clock() - timedelta(days=30), None)
    assert [(o.status, o.api_calls) for o in skipped] == [("skipped", 0)]

    # Once the interval has passed, one cycle re-pulls only the trailing days.
    hw, updated = next(iter(_watermarks(ctx).values()))
    shift = timedelta(seconds=ctx.settings.costs_interval_s + 1)
    with ctx.engine.begin() as conn:
        conn.execute(update(Watermark).values(updated_at=updated - shift, high_water=hw - shift))
    later = costs.run(ctx)
    assert [o.status for o in later] == ["ok"]
    new_runs = _runs(ctx)[runs_before:]
    today = ctx.clock().date()
    expected_first = (hw - shift).date() - timedelta(days=costs.REPULL_DAYS - 1)
    assert min(r.window_start for r in new_runs).date() == min(
        expected_first, today - timedelta(days=costs.REPULL_DAYS - 1)
    )
    assert sum(r.api_calls for r in new_runs) == len(new_runs) <= 2


def test_interrupted_backfill_resumes_at_once(collector_ctx: JobContext, emulator: Any) -> None:
    """A watermark left at a slice end is not 'current': the guard does not hold it back."""
    ctx = _one_subscription(collector_ctx)
    scope = f"/subscriptions/{ctx.settings.subscriptions[0]}"
    now = ctx.clock()
    # The slice end: this month's start, or the last month's in this month's first hour, where
    # a pull that reached this month's start is current (within ``CURRENT_SLACK`` of its run)
    # and no watermark can tell it from a resumable slice end (this test failed at 00:00 UTC
    # on the 1st)
    slice_end = datetime(now.year, now.month, 1, tzinfo=UTC)
    if now - slice_end <= costs.CURRENT_SLACK:
        before = slice_end - timedelta(days=1)
        slice_end = datetime(before.year, before.month, 1, tzinfo=UTC)
    with ctx.engine.begin() as conn:
        costs.write_watermark(conn, scope, slice_end, now)
    outcomes = costs.backfill(ctx, min(now - timedelta(days=30), slice_end), None)
    assert [o.status for o in outcomes] == ["ok"]
    runs = _runs(ctx)
    first_day = min(slice_end.date(), now.date() - timedelta(days=costs.REPULL_DAYS - 1))
    assert min(r.window_start for r in runs).date() == first_day


# --------------------------------------------------------------------------- a world with a clock


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


T0 = datetime(2026, 3, 10, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def small_emulator(emulator: Any) -> Iterator[tuple[EmulatorServer, Clock]]:
    """A small world whose clock the test moves (revisions happen days later)."""
    clock = Clock(T0)
    server = EmulatorServer(
        seed=7,
        port=0,
        resources=2,
        deployments_per_resource=5,
        requests_per_day=150,
        days=30,
        clock=clock,
    )
    server.start()
    try:
        yield server, clock
    finally:
        server.stop()


@pytest.fixture
def small_ctx(
    small_emulator: tuple[EmulatorServer, Clock], engine: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[JobContext, EmulatorServer, Clock]]:
    server, clock = small_emulator
    clock.now = T0
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    settings = load_settings(
        database_url=engine.url.render_as_string(hide_password=False),
        subscriptions=server.world.subscriptions[0],
    )
    assert os.environ["FOUNDRY_WATCH_ARM_ENDPOINT"] == server.base_url
    ctx = JobContext(settings, engine, make_credential(settings), clock=clock)
    assert all(o.status == "ok" for o in discovery.run(ctx))
    yield ctx, server, clock


def _preliminary_day(world: Any, as_of: datetime) -> date:
    window = emu_costs.billable_days(world, as_of)
    assert window is not None
    day = window[1]
    while day >= window[0]:
        if emu_costs.schedule(world, day).state(as_of) == "preliminary":
            return day
        day -= timedelta(days=1)
    raise AssertionError("no preliminary day in the window")


def test_revisions_and_late_days_replace_the_stored_values(
    small_ctx: tuple[JobContext, EmulatorServer, Clock],
) -> None:
    ctx, server, clock = small_ctx
    world, opts = server.world, emu_costs.options(server.state)
    sub = ctx.settings.subscriptions[0]
    scope = f"/subscriptions/{sub}"
    assert [o.status for o in costs.run(ctx)] == ["ok"]
    first, _ = _window(ctx, T0)
    _assert_store_is_truth(ctx, world, first, T0.date(), [T0], opts)
    at_t0 = _store_rows(ctx, scope)

    day = _preliminary_day(world, T0)
    sched = emu_costs.schedule(world, day)
    pending = [
        d
        for d in (T0.date() - timedelta(days=k) for k in range(4))
        if emu_costs.schedule(world, d).state(T0) == "pending"
    ]
    rg = "rg-foundry-prod"
    before = emu_costs.billed_truth(world, f"{scope}/resourceGroups/{rg}", day, T0)
    stored_day = sum(
        c for (d, g, *_), (c, model, *_) in _store_rows(ctx, scope).items() if d == day and model
    )
    assert abs(stored_day - Decimal(repr(before.reported))) < Decimal("0.0001")
    assert before.reported < before.final

    # A row the API no longer returns (inside the re-pull window) and one outside it.
    ghost = {
        "scope": scope,
        "cost_type": "ActualCost",
        "resource_group": rg,
        "resource_arm_id": f"{scope}/resourcegroups/{rg}",
        "meter": "Retired Meter",
        "meter_category": "",
        "service_name": "",
        "publisher_type": "Marketplace",
        "charge_type": "Usage",
        "model_name": "",
        "cost": Decimal("1.5"),
        "currency": "USD",
        "fetched_at": T0,
    }
    old_day = first + timedelta(days=1)
    with ctx.engine.begin() as conn:
        upsert(conn, Cost, [{**ghost, "day": T0.date() - timedelta(days=1)}])
        upsert(conn, Cost, [{**ghost, "day": old_day}])

    # Within the quota interval nothing is asked, even though the day was revised.
    clock.now = T0 + timedelta(hours=1)
    assert [o.status for o in costs.run(ctx)] == ["skipped"]

    clock.now = max(sched.final_at, T0 + timedelta(seconds=ctx.settings.costs_interval_s)) + (
        timedelta(minutes=1)
    )
    t1 = clock.now
    assert [o.status for o in costs.run(ctx)] == ["ok"]
    after = emu_costs.billed_truth(world, f"{scope}/resourceGroups/{rg}", day, t1)
    assert after.state == "final" and after.reported == after.final
    stored = _store_rows(ctx, scope)
    assert (T0.date() - timedelta(days=1), rg, ghost["resource_arm_id"], "Retired Meter",
            "Marketplace") not in stored  # fmt: skip
    assert stored.pop((old_day, rg, ghost["resource_arm_id"], "Retired Meter", "Marketplace"))
    with ctx.engine.begin() as conn:
        conn.execute(text("DELETE FROM costs WHERE meter = 'Retired Meter'"))
    # Every day the API still serves at t1 equals it (revised and late days alike); the days
    # that slid out of the emulator's synthetic window since T0 keep their T0 values.
    window_t1 = emu_costs.billable_days(world, t1)
    assert window_t1 is not None
    expected = {k: v for k, v in at_t0.items() if k[0] < window_t1[0]}
    expected |= _truth_rows(world, sub, window_t1[0], t1.date(), t1, opts)
    assert _store_rows(ctx, scope) == expected, _diff(_store_rows(ctx, scope), expected)
    _assert_group_totals(
        {k: v for k, v in expected.items() if k[0] >= window_t1[0]}, world, sub, [t1], opts
    )
    for d in pending:
        if emu_costs.schedule(world, d).state(t1) != "pending":
            assert any(k[0] == d for k in _store_rows(ctx, scope)), f"late day {d} missing"


def _seed_metrics_window(ctx: JobContext, start: datetime) -> None:
    outcomes = metrics.backfill(ctx, start)
    assert outcomes and all(o.status == "ok" for o in outcomes), outcomes


def _priced(world: Any, recs: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Tokens and list-price cost per (resource arm id, deployment) from the world's requests."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in recs:
        key = (r.deployment.resource.arm_id.lower(), r.deployment.name)
        acc = out.setdefault(key, {"tokens": defaultdict(int), "model": r.deployment.model_name})
        acc["tokens"]["input"] += r.input_tokens
        acc["tokens"]["output"] += r.output_tokens
        acc["tokens"]["cache_read"] += r.cache_read_tokens
        acc["tokens"]["cache_write_5m"] += r.cache_write_5m_tokens
        acc["tokens"]["cache_write_1h"] += r.cache_write_1h_tokens
    for acc in out.values():
        # $/MTok at six decimals (the float 15 × 0.1 is 1.5000000000000002).
        price = {k: costs.to_decimal(v) for k, v in world.price(acc["model"]).items()}
        acc["cost"] = sum(
            Decimal(acc["tokens"][k]) * price[k] for k in spend.TOKEN_KINDS
        ) / Decimal(1_000_000)
    return out


def test_estimated_billed_and_reconciled_spend(
    small_ctx: tuple[JobContext, EmulatorServer, Clock],
) -> None:
    ctx, server, clock = small_ctx
    world = server.world
    day = T0.date() - timedelta(days=6)  # final for sure (final ≤ 5 d 19 h after the day)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    clock.now = start + timedelta(days=1, minutes=30)  # metrics of that one day only
    _seed_metrics_window(ctx, start)
    clock.now = T0
    assert [o.status for o in costs.run(ctx)] == ["ok"]

    with ctx.engine.connect() as conn:
        estimated = spend.estimated_spend(conn, day, day)
        billed = spend.billed_spend(conn, day, day)
        bills = spend.group_bills(conn, day, day)
        recon = spend.reconcile(conn, day, day)
        dep_names = {
            d.id: (d.arm_id, d.name)
            for d in conn.execute(
                select(Deployment.id, Deployment.name, Resource.arm_id).join(Resource)
            ).all()
        }

    # (a) estimated == tokens × list prices, from the world's own requests.
    truth = _priced(world, world.requests(start, start + timedelta(days=1)))
    truth = {k: v for k, v in truth.items() if v["cost"] > 0}
    assert {dep_names[e.deployment_id]: e.cost for e in estimated} == {
        k: v["cost"] for k, v in truth.items()
    }
    for e in estimated:
        t = truth[dep_names[e.deployment_id]]["tokens"]
        assert (e.input_tokens, e.output_tokens, e.cache_read_tokens) == (
            t["input"],
            t["output"],
            t["cache_read"],
        )
        assert (e.cache_write_5m_tokens, e.cache_write_1h_tokens) == (
            t["cache_write_5m"],
            t["cache_write_1h"],
        )

    # (b) each group's model bill is split across its deployments and sums back exactly.
    assert bills
    scope = f"/subscriptions/{ctx.settings.subscriptions[0]}"
    for bill in bills:
        parts = [
            b
            for b in billed
            if (b.resource_group, spend.normalize_model(b.model_name))
            == (bill.resource_group, bill.model_name)
        ]
        assert sum(p.cost for p in parts) == bill.cost
        assert all(p.deployment_id is not None for p in parts)
        weights = {p.deployment_id: p.share for p in parts}
        assert sum(weights.values()) == pytest.approx(1)
        emu = emu_costs.billed_truth(
            world, f"{scope}/resourceGroups/{bill.resource_group}", day, T0
        )
        assert emu.state == "final"
    # The sonnet group has three deployments on two resources, split by priced tokens.
    sonnet = [b for b in billed if b.model_name == "claude-sonnet-4-5"]
    assert len({b.deployment_id for b in sonnet}) >= 2
    est_by = {e.deployment_id: e.cost for e in estimated}
    total_est = sum(est_by[b.deployment_id] for b in sonnet)
    for b in sonnet:
        assert b.share == est_by[b.deployment_id] / total_est
    # Billed at list price, per-row six-decimal rounding aside, the bill equals the estimate.
    for b in billed:
        assert abs(b.cost - est_by[b.deployment_id]) < Decimal("0.0001")

    # (c) reconciliation pairs both per deployment and day.
    assert {r.deployment_id for r in recon} == set(est_by)
    for r in recon:
        assert r.estimated == est_by[r.deployment_id]
        assert r.billed is not None and r.gap == r.billed - r.estimated
    # Today has an estimate and no bill yet.
    with ctx.engine.connect() as conn:
        conn.execute(
            insert(MetricPoint).values(
                deployment_id=estimated[0].deployment_id,
                minute=T0 - timedelta(minutes=5),
                metric="OutputTokens",
                status_code="",
                total=1000.0,
            )
        )
        today = spend.reconcile(conn, T0.date(), T0.date())
        conn.rollback()
    assert today and all(r.billed is None and r.gap is None for r in today)
    assert today[0].estimated is not None and today[0].estimated > 0
