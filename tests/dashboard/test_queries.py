"""The dashboard's query module on real stores (SQLite and PostgreSQL) against Python truth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pandas as pd
import pytest
from sqlalchemy import Engine, text

from collector import spend
from dashboard import queries as q
from dashboard.readonly import readonly_engine
from tests.dashboard.seed import (
    build_world,
    estimated_cost,
    exact_percentile,
    seed,
    utc_now_minute,
)

T = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def _covers(segments, start, end) -> bool:
    pos = start
    for _grain, lo, hi in segments:
        if lo != pos:
            return False
        pos = hi
    return pos >= end


@pytest.mark.parametrize(
    ("start", "end", "open_end"),
    [
        (T - timedelta(days=30, minutes=17), T + timedelta(minutes=3), False),
        (T - timedelta(days=30), T, True),
        (T - timedelta(minutes=42), T - timedelta(minutes=5), False),
        (T - timedelta(hours=24, minutes=3), T - timedelta(minutes=1), True),
        (T, T, False),
    ],
)
def test_plan_tiles_the_window_with_whole_buckets(start, end, open_end) -> None:
    segments = q.plan(q.Window(start, end, open_end))
    assert _covers(segments, start, end)
    for grain, lo, hi in segments:
        size = q.GRAIN_SIZE[grain]
        assert q.coarse.floor_to(lo, size) == lo and q.coarse.floor_to(hi, size) == hi
        assert hi <= end or (open_end and hi - size < end)
    if not open_end and end > start:
        assert segments[-1][2] == end
    if end - start >= timedelta(days=3):
        assert any(g == "day" for g, _, _ in segments)
        assert sum(1 for g, _, _ in segments if g == "minute") <= 2


@pytest.fixture
def world_engine(engine: Engine):
    now = utc_now_minute()
    world = build_world(now, 3, per_deployment=300, old_days=5)
    seed(engine, world)
    return world, engine


@pytest.mark.parametrize("coarse_tables", [True, False], ids=["coarse", "minutes-only"])
def test_counts_percentiles_and_tokens_match_truth(world_engine, monkeypatch, coarse_tables):
    world, engine = world_engine
    if not coarse_tables:
        monkeypatch.setattr(q, "READ_COARSE", False)
    end = world.now + timedelta(minutes=1)
    for start in (end - timedelta(hours=24), q.coarse.floor_to(end - timedelta(days=7), q.MINUTE)):
        window = q.Window(start, end, open_end=True)
        ids = [d["id"] for d in world.deployments]
        with readonly_engine(engine.url.render_as_string(False)).connect() as conn:
            cat = q.catalogue(conn)
            table = q.deployment_table(conn, window, ids, cat).set_index("deployment_id")
            k = q.kpis(conn, window, ids)
        reqs = world.in_window(start, end)
        assert k["requests"] == len(reqs)
        assert k["throttled_pct"] == pytest.approx(
            100 * sum(r.status == 429 for r in reqs) / len(reqs)
        )
        assert k["tokens_in"] == sum(r.tokens_in for r in reqs)
        truth95 = exact_percentile([r.duration_ms for r in reqs if r.status == 200], 95)
        assert k["p95_ms"] == pytest.approx(truth95, rel=0.01)
        for dep in world.deployments:
            mine = [r for r in reqs if r.deployment_id == dep["id"]]
            row = table.loc[dep["id"]]
            assert row["requests"] == len(mine)
            errors = sum(r.status >= 400 and r.status != 429 for r in mine)
            assert row["errors"] == errors
            assert row["throttled"] == sum(r.status == 429 for r in mine)
            assert row["tokens_out"] == sum(r.tokens_out for r in mine)
            ok = [r.duration_ms for r in mine if r.status == 200]
            for p in (50, 95, 99):
                assert row[f"p{p}"] == pytest.approx(exact_percentile(ok, p), rel=0.01)


def test_spend_from_rollups_equals_collector_spend_and_truth(world_engine) -> None:
    world, engine = world_engine
    first, last = (world.now - timedelta(days=7)).date(), world.now.date()
    ids = [d["id"] for d in world.deployments]
    with engine.connect() as conn:
        mine = q.estimated_spend(conn, first, last, ids)
        theirs = spend.estimated_spend(conn, first, last)
        daily = q.daily_spend(conn, first, last, ids)
    assert sorted(mine, key=lambda e: (e.day, e.deployment_id)) == sorted(
        theirs, key=lambda e: (e.day, e.deployment_id)
    )
    for dep in world.deployments:
        reqs = [r for r in world.requests if r.deployment_id == dep["id"]]
        est = estimated_cost(reqs, dep["model_name"])
        got = daily[daily["deployment_id"] == dep["id"]]["estimated"].sum()
        assert got == pytest.approx(float(est), rel=1e-9)
        rg = world.resources[dep["resource_id"] - 1]["resource_group"]
        billed = sum(
            v for (g, m, _d), v in world.bills.items() if (g, m) == (rg, dep["model_name"])
        )
        got_billed = daily[daily["deployment_id"] == dep["id"]]["billed"].sum()
        assert got_billed == pytest.approx(float(billed), rel=1e-9)
        assert billed > 0


def test_budgets_evaluate_like_the_budget_alerts(world_engine) -> None:
    """Same budget status as alerts.budgets on its own (minute-based) spend data."""
    from alerts.budgets import SpendData, evaluate_budget
    from tests.dashboard.seed import seed_budget

    world, engine = world_engine
    seed_budget(engine, Decimal("300"))
    now = world.now
    with engine.connect() as conn:
        configs, problems = q.budget_configs(conn)
        first, last = q.budget_range(configs, now)
        mine = q.budget_frame(configs, q.spend_data(conn, first, last), now).iloc[0]
        theirs = evaluate_budget(configs[0], SpendData.load(conn, first, last), now)
    assert not problems and configs[0].spend == "billed"
    assert mine["mtd"] == pytest.approx(float(theirs.forecast.month_to_date))
    if theirs.forecast.month_end is None:
        assert pd.isna(mine["forecast"])
    else:
        assert mine["forecast"] == pytest.approx(float(theirs.forecast.month_end))


def test_request_lookup_by_either_id(world_engine) -> None:
    world, engine = world_engine
    r = world.requests[len(world.requests) // 2]
    with engine.connect() as conn:
        by_req = q.find_request(conn, r.request_id)
        by_apim = q.find_request(conn, r.correlation_id.upper())
        none = q.find_request(conn, "req_doesnotexist0000")
        bad = q.find_request(conn, "'; drop table requests; --")
    assert by_req["correlation_id"].tolist() == [r.correlation_id]
    assert by_apim["request_id"].tolist() == [r.request_id]
    assert none.empty and bad.empty
    assert q.id_kind(" req_011CUb3Xc9 ") == "request-id"
    assert q.id_kind("not an id") is None


def test_readonly_engine_refuses_writes(engine: Engine) -> None:
    ro = readonly_engine(engine.url.render_as_string(False))
    with ro.connect() as conn:
        assert q.catalogue(conn).empty
        with pytest.raises(Exception, match=r"(?i)read.?only|readonly"):
            conn.execute(text("DELETE FROM deployments"))
    ro.dispose()


def test_empty_store_gives_empty_frames(engine: Engine) -> None:
    now = utc_now_minute()
    window = q.Window(now - timedelta(days=30), now, True)
    with engine.connect() as conn:
        assert q.deployment_table(conn, window, [], q.catalogue(conn)).empty
        k = q.kpis(conn, window, [])
        assert k["requests"] == 0 and k["p95_ms"] is None
        assert q.daily_spend(conn, window.start.date(), now.date(), []).empty
        assert q.last_runs(conn).empty
        assert (q.freshness(conn, now, {"metrics": 60})["state"] == "never").all()
    assert Decimal(0) == Decimal(0)


@pytest.mark.parametrize("step", [300, 3600])
def test_chart_buckets_hold_the_requests_of_their_step(world_engine, step: int) -> None:
    """Each chart bucket starts on a multiple of the step and counts exactly its requests."""
    world, engine = world_engine
    end = world.now + timedelta(minutes=1)
    start = q.coarse.floor_to(end - timedelta(hours=24), timedelta(seconds=step))
    ids = [d["id"] for d in world.deployments]
    with readonly_engine(engine.url.render_as_string(False)).connect() as conn:
        frame = q.request_counts(
            conn, q.Window(start, end, open_end=True), ids, by_deployment=False, step=step
        )
    shown = frame.groupby("t")["requests"].sum()
    truth: dict[datetime, int] = {}
    for r in world.in_window(start, end):
        t = q.coarse.floor_to(r.time, timedelta(seconds=step))
        truth[t] = truth.get(t, 0) + 1
    assert {t.to_pydatetime(): int(n) for t, n in shown.items() if n} == truth


@pytest.mark.parametrize("per_read", [None, 2_000, 7], ids=["one-read", "step-cuts", "cut-steps"])
@pytest.mark.parametrize("step", [300, 3600])
@pytest.mark.parametrize("by_deployment", [False, True])
def test_chart_counts_per_status_code_match_truth(
    world_engine, monkeypatch, step: int, by_deployment, per_read
) -> None:
    """Every (deployment,) bucket × status code, from minutes summed in one or two steps,
    read whole or in parts (cut on step boundaries, or inside steps when a step is longer
    than a part)."""
    world, engine = world_engine
    if per_read is not None:
        monkeypatch.setattr(q, "READ_COARSE", False)  # every minute of the window, in parts
        monkeypatch.setattr(q, "_MINUTES_PER_READ", per_read)
    end = world.now + timedelta(minutes=1)
    start = end - timedelta(hours=26, minutes=7)  # ragged: not on a step, hour or day
    ids = [d["id"] for d in world.deployments]
    with readonly_engine(engine.url.render_as_string(False)).connect() as conn:
        frame = q.request_counts(
            conn, q.Window(start, end, open_end=True), ids, by_deployment=by_deployment, step=step
        )
    keys = ["deployment_id"] if by_deployment else []
    shown = {
        (*(int(k) for k in row[:-3]), row[-3].to_pydatetime(), str(row[-2])): int(row[-1])
        for row in frame[[*keys, "t", "status_code", "requests"]].itertuples(index=False)
        if row[-1]
    }
    truth: dict[tuple, int] = {}
    for r in world.in_window(start, end):
        t = q.coarse.floor_to(r.time, timedelta(seconds=step))
        key = (*([r.deployment_id] if by_deployment else []), max(t, start), str(r.status))
        truth[key] = truth.get(key, 0) + 1
    # The first bucket starts before the window: it holds the window's part of it only.
    shown = {(*k[:-2], max(k[-2], start), k[-1]): v for k, v in shown.items()}
    assert shown == truth


@pytest.mark.parametrize("coarse_tables", [True, False], ids=["coarse", "minutes-only"])
def test_latency_counts_and_extremes_match_truth(world_engine, monkeypatch, coarse_tables):
    """Counts of every class, and 2xx count/min/max/mean, whatever mix of minutes and hours."""
    world, engine = world_engine
    if not coarse_tables:
        monkeypatch.setattr(q, "READ_COARSE", False)
    end = world.now + timedelta(minutes=1)
    ids = [d["id"] for d in world.deployments]
    for start in (end - timedelta(hours=24), end - timedelta(hours=5, minutes=13)):
        window = q.Window(start, end, open_end=True)
        reqs = world.in_window(start, end)
        with readonly_engine(engine.url.render_as_string(False)).connect() as conn:
            table = q.deployment_table(conn, window, ids, q.catalogue(conn))
            per = q.latency(conn, window, ids).set_index("deployment_id")
            overall = q.latency(conn, window, ids, by_deployment=False)
            hours = q.latency(conn, q.Window(start, end - timedelta(minutes=31)), ids)
        table = table.set_index("deployment_id")
        for dep in world.deployments:
            mine = [r for r in reqs if r.deployment_id == dep["id"]]
            ok = [r.duration_ms for r in mine if r.status == 200]
            assert table.loc[dep["id"], "logged"] == len(mine)
            row = per.loc[dep["id"]]
            assert row["count"] == len(ok)
            assert row["min_ms"] == pytest.approx(min(ok))
            assert row["max_ms"] == pytest.approx(max(ok))
            assert row["mean_ms"] == pytest.approx(sum(ok) / len(ok))
        all_ok = [r.duration_ms for r in reqs if r.status == 200]
        assert overall["count"].iloc[0] == len(all_ok)
        assert overall["max_ms"].iloc[0] == pytest.approx(max(all_ok))
        closed = [r for r in world.in_window(start, end - timedelta(minutes=31)) if r.status == 200]
        got = dict(zip(hours["deployment_id"], hours["count"], strict=True))
        assert got == {
            d["id"]: n
            for d in world.deployments
            if (n := sum(r.deployment_id == d["id"] for r in closed))
        }


@pytest.mark.parametrize("preset", ["24 h", "30 d"])
def test_overview_spend_matches_bills_and_token_prices(world_engine, preset: str) -> None:
    """Month to date, the window's estimate and bill per deployment, from the seeded truth:
    bills (every day before today) where they exist, tokens × list price otherwise."""
    from dashboard import ui

    world, engine = world_engine
    now = world.now
    window = ui._window(preset, now, "UTC")
    ids = [d["id"] for d in world.deployments]
    with readonly_engine(engine.url.render_as_string(False)).connect() as conn:
        cat = q.catalogue(conn)
        everything = q.overview_page(conn, window, ids, cat, now)["money"]
        some = q.overview_page(conn, window, ids[1:], cat, now)["money"]
    month, today = now.date().replace(day=1), now.date()
    first, last = window.start.date(), (window.end - timedelta(microseconds=1)).date()

    def bill(dep: dict, day) -> Decimal | None:
        rg = world.resources[dep["resource_id"] - 1]["resource_group"]
        return world.bills.get((rg, dep["model_name"], day))

    def mtd(deps: list[dict]) -> Decimal:
        total = Decimal(0)
        for dep in deps:
            days = {r.time.date() for r in world.requests if r.deployment_id == dep["id"]}
            for day in days:
                if not month <= day <= today:
                    continue
                b = bill(dep, day)
                if b is None:  # no bill yet (today): the day's estimate
                    b = estimated_cost(
                        [
                            r
                            for r in world.requests
                            if r.deployment_id == dep["id"] and r.time.date() == day
                        ],
                        dep["model_name"],
                    )
                total += b
        return total

    assert everything["currency"] == "USD"
    assert everything["mtd"] == pytest.approx(float(mtd(world.deployments)), rel=1e-9)
    assert some["mtd"] == pytest.approx(float(mtd(world.deployments[1:])), rel=1e-9)
    # spend this month, unless it is the first hour of a month (recent requests end an hour
    # before now, so all of them are last month's)
    assert mtd(world.deployments) > 0 or not any(r.time.date() >= month for r in world.requests)
    for money, deps in ((everything, world.deployments), (some, world.deployments[1:])):
        frame = money["per_deployment"].set_index("deployment_id")
        assert sorted(frame.index) == [d["id"] for d in deps]
        for dep in deps:
            if preset == "24 h":  # the window's own tokens
                reqs = world.in_window(window.start, window.end, {dep["id"]})
            else:  # whole days: the days' tokens
                reqs = [
                    r
                    for r in world.requests
                    if r.deployment_id == dep["id"] and first <= r.time.date() <= last
                ]
            est = estimated_cost(reqs, dep["model_name"])
            assert frame.loc[dep["id"], "estimated"] == pytest.approx(float(est), rel=1e-9)
            bills = [
                b
                for day in {r.time.date() for r in world.requests}
                if first <= day <= last and (b := bill(dep, day)) is not None
            ]
            billed = frame.loc[dep["id"], "billed"]
            if bills:
                assert billed == pytest.approx(float(sum(bills)), rel=1e-9)
            else:
                assert pd.isna(billed)
