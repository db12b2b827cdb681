"""The synthetic world: deterministic, lazily generated, and shaped like real traffic."""

from __future__ import annotations

import statistics
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from emulator.world import World, floor_minute

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # a Friday


@pytest.fixture(scope="module")
def world() -> World:
    return World(42, clock=NOW)


def _key(rec):
    return (
        rec.time,
        rec.deployment.resource.name,
        rec.deployment.name,
        rec.status,
        rec.duration_ms,
        rec.input_tokens,
        rec.output_tokens,
        rec.correlation_id,
        rec.request_id,
    )


def test_estate_matches_the_contract(world: World) -> None:
    assert len(world.subscriptions) == 2
    assert {r.location for r in world.resources} == {"eastus2", "swedencentral"}
    assert len(world.workspaces) == 2
    for r in world.resources:
        assert r.workspace.location == r.location
        assert r.arm_id.startswith(f"/subscriptions/{r.subscription_id}/resourceGroups/")
        assert r.endpoint == f"https://{r.name}.services.ai.azure.com/"
        assert world.api_keys[r.name]
    names = {d.name for d in world.deployments}
    assert {"claude-opus-4-5", "claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5"} <= names
    assert {"support-bot-sonnet", "batch-haiku"} <= names
    versions = {d.model_name: d.model_version for d in world.deployments}
    assert versions["claude-sonnet-4-5"] == "20250929"
    assert all(d.sku_name == "GlobalStandard" for d in world.deployments)
    assert world.start == floor_minute(NOW - timedelta(days=30))


def test_lookups_are_case_insensitive(world: World) -> None:
    res = world.resources[0]
    assert world.resource(res.name.upper()) is res
    assert world.resource(res.arm_id.lower()) is res
    assert world.deployment(res.name.upper(), "CLAUDE-SONNET-4-5").name == "claude-sonnet-4-5"
    assert world.workspace(res.workspace.customer_id.upper()) == res.workspace
    assert world.resource("nope") is None


def test_prices() -> None:
    p = World.price("claude-opus-4-5")
    assert (p["input"], p["output"]) == (5.0, 25.0)
    assert p["cache_write_5m"] == 6.25 and p["cache_write_1h"] == 10.0 and p["cache_read"] == 0.5
    assert World.price("claude-haiku-4-5")["output"] == 5.0


def test_same_seed_same_records_different_seed_different() -> None:
    a, b, c = World(7, clock=NOW), World(7, clock=NOW), World(8, clock=NOW)
    end = NOW - timedelta(hours=1)
    start = end - timedelta(hours=3)
    ra = [_key(r) for r in a.requests(start, end)]
    # b computes minutes in another order first: the answer must not depend on cache state.
    dep = b.deployments[3]
    b.requests_in_minute(dep, end - timedelta(minutes=7))
    rb = [_key(r) for r in b.requests(start, end)]
    rc = [_key(r) for r in c.requests(start, end)]
    assert ra and ra == rb
    assert ra != rc


def test_requests_window_is_half_open_and_ordered(world: World) -> None:
    start = NOW - timedelta(hours=5, seconds=30)
    end = NOW - timedelta(hours=4, seconds=15)
    recs = list(world.requests(start, end))
    assert recs
    assert all(start <= r.time < end for r in recs)
    assert [r.time for r in recs] == sorted(r.time for r in recs)
    one = world.resources[1]
    only = list(world.requests(start, end, resources=[one]))
    assert only and all(r.deployment.resource is one for r in only)


def test_record_invariants(world: World) -> None:
    recs = list(world.requests(NOW - timedelta(days=2), NOW))
    assert len(recs) > 10_000
    for r in recs:
        assert r.time.tzinfo is not None
        assert r.request_id.startswith("req_") and len(r.request_id) == 28
        assert len(r.correlation_id) == 36
        assert r.caller_ip.endswith(".***")
        if r.status != 200:
            assert r.output_tokens == 0 and r.ttft_ms is None
        if r.status in (401, 429):
            assert r.input_tokens == r.cache_read_tokens == r.cache_write_5m_tokens == 0
        if r.ttft_ms is not None:
            assert r.stream and r.ttft_ms <= r.duration_ms
    streams = sum(r.stream for r in recs) / len(recs)
    assert 0.35 < streams < 0.45
    assert any(r.cache_read_tokens for r in recs)
    assert any(r.cache_write_5m_tokens for r in recs)
    assert any(r.cache_write_1h_tokens for r in recs)
    assert {401, 400, 500, 529} <= {r.status for r in recs}


def test_daily_and_weekly_shape(world: World) -> None:
    res = world.resources[0]  # eastus2: business hours ~13-22 UTC
    by_hour = [0] * 24
    weekday = weekend = 0
    for r in world.requests(NOW - timedelta(days=14), NOW, resources=[res]):
        by_hour[r.time.hour] += 1
        local_day = (r.time - timedelta(hours=5)).weekday()
        if local_day >= 5:
            weekend += 1
        else:
            weekday += 1
    assert sum(by_hour[16:20]) > 2.5 * sum(by_hour[4:8])
    assert weekend / 4 < 0.7 * (weekday / 10)  # per day


def test_incident_window(world: World) -> None:
    inc = world.incident
    assert inc is not None and inc.deployment.name == "claude-sonnet-4-5"
    assert inc.end - inc.start == timedelta(hours=1)
    assert world.start < inc.start < NOW
    res = [inc.deployment.resource]
    during = [r for r in world.requests(inc.start, inc.end, resources=res)]
    during = [r for r in during if r.deployment.name == inc.deployment.name]
    before = [
        r
        for r in world.requests(
            inc.start - timedelta(days=1), inc.end - timedelta(days=1), resources=res
        )
        if r.deployment.name == inc.deployment.name
    ]
    errors_during = sum(r.status >= 500 for r in during) / len(during)
    errors_before = sum(r.status >= 500 for r in before) / len(before)
    assert errors_during > 0.2 > errors_before
    p50 = statistics.median(r.duration_ms for r in during if r.status == 200)
    p50_before = statistics.median(r.duration_ms for r in before if r.status == 200)
    assert p50 > 2.5 * p50_before


def test_throttle_bursts(world: World) -> None:
    bursts = world.throttle_bursts
    assert len(bursts) >= 2
    for b in bursts:
        assert timedelta(minutes=10) <= b.end - b.start <= timedelta(minutes=20)
        dep = b.deployment
        recs = [
            r
            for r in world.requests(b.start, b.end, resources=[dep.resource])
            if r.deployment.name == dep.name
        ]
        throttled = [r for r in recs if r.status == 429]
        assert len(throttled) > len(recs) / 2
        assert all(r.input_tokens == r.output_tokens == 0 for r in throttled)
    dep = bursts[0].deployment
    calm = [
        r
        for r in world.requests(bursts[0].end, bursts[0].end + timedelta(hours=3))
        if r.deployment == dep
    ]
    assert calm and not any(r.status == 429 for r in calm)


def test_deleted_and_created_deployments(world: World) -> None:
    gone = world.deleted_deployment
    born = world.created_deployment
    assert gone is not None and gone.deleted_at is not None
    assert world.start < gone.deleted_at < NOW
    assert gone not in world.active_deployments(NOW)
    assert gone in world.active_deployments(gone.deleted_at - timedelta(minutes=1))
    before = list(world.requests(gone.deleted_at - timedelta(hours=6), gone.deleted_at))
    assert any(r.deployment == gone for r in before)
    after = list(world.requests(gone.deleted_at, gone.deleted_at + timedelta(hours=6)))
    assert after and not any(r.deployment == gone for r in after)

    assert born is not None and world.start < born.created_at < NOW
    early = list(world.requests(born.created_at - timedelta(hours=6), born.created_at))
    assert not any(r.deployment == born for r in early)
    late = list(world.requests(born.created_at, born.created_at + timedelta(hours=12)))
    assert any(r.deployment == born for r in late)


def test_future_is_empty_and_live_records_merge() -> None:
    clock = [datetime(2026, 11, 20, 12, 0, 30, tzinfo=UTC)]
    w = World(3, clock=lambda: clock[0], resources=1, deployments_per_resource=1)
    dep = w.deployments[0]
    minute = floor_minute(clock[0])
    assert all(r.time <= clock[0] for r in w.requests_in_minute(dep, minute))
    assert w.requests_in_minute(dep, minute + timedelta(minutes=5)) == []
    template = next(r for r in w.requests(w.start, w.now()) if r.status == 200)
    live = replace(template, time=clock[0], correlation_id="live-1")
    w.record_live(live)
    assert live in w.requests_in_minute(dep, minute)
    assert live in list(w.requests(minute, minute + timedelta(minutes=1)))
    assert live in w.live_records()
