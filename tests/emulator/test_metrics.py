"""The metrics batch endpoint, driven by the real ``azure-monitor-querymetrics`` MetricsClient.

Totals are checked against the world's own request records (``World.requests``), the ground truth
the logs endpoint also serves, so a green run means metrics and logs agree.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.exceptions import HttpResponseError
from azure.monitor.querymetrics import MetricAggregationType, MetricsClient

from emulator import costs
from emulator import metrics as M
from emulator.world import World, floor_minute

NS = "Microsoft.CognitiveServices/accounts"


def _client(credential, region: str, **kwargs) -> MetricsClient:
    endpoint = os.environ["FOUNDRY_WATCH_METRICS_ENDPOINT"].format(region=region)
    return MetricsClient(
        endpoint, credential, audience=os.environ["FOUNDRY_WATCH_METRICS_AUDIENCE"], **kwargs
    )


def _window(world, minutes: int = 60) -> tuple[datetime, datetime]:
    """A settled window ending 10 minutes ago, on minute boundaries."""
    end = world.now().replace(second=0, microsecond=0) - timedelta(minutes=10)
    return end - timedelta(minutes=minutes), end


@pytest.fixture(scope="module")
def eastus2(emulator):
    world = emulator.world
    res = next(r for r in world.resources if r.location == "eastus2")
    return res


def test_split_by_deployment_and_status_equals_world_truth(emulator, credential, eastus2):
    world = emulator.world
    start, end = _window(world)
    with _client(credential, "eastus2") as client:
        [result] = client.query_resources(
            resource_ids=[eastus2.arm_id],
            metric_namespace=NS,
            metric_names=["ModelRequests"],
            timespan=(start, end),
            granularity=timedelta(minutes=1),
            aggregations=[MetricAggregationType.TOTAL],
            filter="ModelDeploymentName eq '*' and StatusCode eq '*'",
            max_results=1000,
        )
    truth = Counter(
        (r.deployment.name, str(r.status)) for r in world.requests(start, end, resources=[eastus2])
    )
    got: Counter = Counter()
    bare = 0
    series = result.metrics["ModelRequests"].timeseries
    assert series, "expected split series"
    for ts in series:
        assert set(ts.metadata_values) == {"modeldeploymentname", "statuscode"}
        assert len(ts.data) == 60
        assert ts.data[0].timestamp == start
        for point in ts.data:
            if point.total is None:
                bare += 1
                assert point.average is None and point.count is None
            else:
                assert point.total > 0
                got[
                    (ts.metadata_values["modeldeploymentname"], ts.metadata_values["statuscode"])
                ] += point.total
    assert got == truth
    assert bare > 0, "empty minutes must come back as bare points (None), not 0"
    assert result.resource_region == "eastus2"
    assert result.granularity == timedelta(minutes=1)


def test_tokens_and_latency_equal_world_truth(emulator, credential, eastus2):
    world = emulator.world
    start, end = _window(world, 120)
    names = ["InputTokens", "OutputTokens", "cacheReadInputTokens", "ephemeral5mInputTokens"]
    with _client(credential, "eastus2") as client:
        [tokens] = client.query_resources(
            resource_ids=[eastus2.arm_id],
            metric_namespace=NS,
            metric_names=names,
            timespan=(start, end),
            granularity=timedelta(hours=1),
            aggregations=["Total"],
        )
        [latency] = client.query_resources(
            resource_ids=[eastus2.arm_id],
            metric_namespace=NS,
            metric_names=["TimeToLastByte", "NormalizedTimeToFirstToken"],
            timespan=(start, end),
            granularity=timedelta(hours=1),
            aggregations=["Average", "Count", "Maximum", "Minimum"],
        )
    recs = list(world.requests(start, end, resources=[eastus2]))
    expected = {
        "InputTokens": sum(r.input_tokens for r in recs),
        "OutputTokens": sum(r.output_tokens for r in recs),
        "cacheReadInputTokens": sum(r.cache_read_tokens for r in recs),
        "ephemeral5mInputTokens": sum(r.cache_write_5m_tokens for r in recs),
    }
    for name in names:
        [ts] = tokens.metrics[name].timeseries
        assert ts.metadata_values == {}
        assert len(ts.data) == 2
        assert sum(p.total or 0 for p in ts.data) == expected[name], name
    ok = [r for r in recs if 200 <= r.status < 300]
    [ttlb] = latency.metrics["TimeToLastByte"].timeseries
    assert sum(p.count or 0 for p in ttlb.data) == len(ok)
    assert max(p.maximum for p in ttlb.data if p.maximum is not None) == max(
        r.duration_ms for r in ok
    )
    weighted = sum(p.average * p.count for p in ttlb.data if p.count)
    assert weighted == pytest.approx(sum(r.duration_ms for r in ok))
    [ttft] = latency.metrics["NormalizedTimeToFirstToken"].timeseries
    assert sum(p.count or 0 for p in ttft.data) == sum(1 for r in ok if r.ttft_ms is not None)
    assert latency.metrics["TimeToLastByte"].unit == "MilliSeconds"


def test_ptu_only_metric_is_accepted_but_empty(emulator, credential, eastus2):
    start, end = _window(emulator.world, 5)
    with _client(credential, "eastus2") as client:
        [unsplit] = client.query_resources(
            resource_ids=[eastus2.arm_id],
            metric_namespace=NS,
            metric_names=["TimeToResponse"],
            timespan=(start, end),
        )
        [split] = client.query_resources(
            resource_ids=[eastus2.arm_id],
            metric_namespace=NS,
            metric_names=["TimeToResponse"],
            timespan=(start, end),
            filter="ModelDeploymentName eq '*'",
        )
    [ts] = unsplit.metrics["TimeToResponse"].timeseries
    assert len(ts.data) == 5
    assert all(p.average is None and p.total is None for p in ts.data)
    assert split.metrics["TimeToResponse"].timeseries == []


def test_wrong_region_gives_empty_series_not_error(emulator, credential, eastus2):
    start, end = _window(emulator.world, 10)
    with _client(credential, "swedencentral") as client:
        [result] = client.query_resources(
            resource_ids=[eastus2.arm_id],
            metric_namespace=NS,
            metric_names=["ModelRequests", "InputTokens"],
            timespan=(start, end),
        )
    assert [m.name for m in result.metrics] == ["ModelRequests", "InputTokens"]
    assert all(m.timeseries == [] for m in result.metrics)


def test_default_top_is_10_series_per_metric(emulator, credential, eastus2):
    world = emulator.world
    start, end = _window(world, 24 * 60)
    combos = {
        (r.deployment.name, r.status) for r in world.requests(start, end, resources=[eastus2])
    }
    if len(combos) <= 10:
        pytest.skip(f"only {len(combos)} deployment/status combinations in the window")
    kwargs = {
        "resource_ids": [eastus2.arm_id],
        "metric_namespace": NS,
        "metric_names": ["ModelRequests"],
        "timespan": (start, end),
        "granularity": timedelta(hours=1),
        "filter": "ModelDeploymentName eq '*' and StatusCode eq '*'",
    }
    with _client(credential, "eastus2") as client:
        [default] = client.query_resources(**kwargs)
        [full] = client.query_resources(**kwargs, max_results=50)
        [bottom] = client.query_resources(**kwargs, max_results=3, order_by="total asc")
    assert len(default.metrics["ModelRequests"].timeseries) == 10
    assert len(full.metrics["ModelRequests"].timeseries) == len(combos)

    def totals(result):
        return [sum(p.total or 0 for p in ts.data) for ts in result.metrics[0].timeseries]

    assert totals(default) == sorted(totals(full), reverse=True)[:10]
    assert totals(bottom) == sorted(totals(full))[:3]


def test_filter_values_and_rollup(emulator, credential, eastus2):
    world = emulator.world
    start, end = _window(world, 60)
    dep = "claude-sonnet-4-5"
    with _client(credential, "eastus2") as client:
        [result] = client.query_resources(
            resource_ids=[eastus2.arm_id],
            metric_namespace=NS,
            metric_names=["ModelRequests"],
            timespan=(start, end),
            granularity=timedelta(minutes=15),
            filter=f"ModelDeploymentName eq '{dep}' and StatusCode eq '*'",
            roll_up_by="StatusCode",
            max_results=100,
        )
    [ts] = result.metrics["ModelRequests"].timeseries
    assert ts.metadata_values == {"modeldeploymentname": dep}
    truth = sum(
        1 for r in world.requests(start, end, resources=[eastus2]) if r.deployment.name == dep
    )
    assert sum(p.total or 0 for p in ts.data) == truth
    assert len(ts.data) == 4


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"metric_names": ["NoSuchMetric"]}, "Failed to find metric configuration"),
        ({"granularity": timedelta(minutes=2)}, "Commonly allowed time grains"),
        ({"timespan": timedelta(days=31)}, "exceeds the maximum allowed time range"),
        (
            {"metric_names": ["InputTokens"], "filter": "StatusCode eq '*'"},
            "does not support requested dimension combination",
        ),
        ({"filter": "ModelName eq 'a' or StatusCode eq 'b'"}, "cannot separate"),
        ({"metric_namespace": "Microsoft.Storage/storageAccounts"}, "does not match"),
    ],
)
def test_bad_requests_use_batch_error_shape(emulator, credential, eastus2, kwargs, fragment):
    query = {
        "resource_ids": [eastus2.arm_id],
        "metric_namespace": NS,
        "metric_names": ["ModelRequests"],
        "timespan": timedelta(hours=1),
        **kwargs,
    }
    with _client(credential, "eastus2") as client, pytest.raises(HttpResponseError) as info:
        client.query_resources(**query)
    assert info.value.status_code == 400
    assert info.value.error.code == "BadRequest"
    assert fragment in info.value.error.message


def test_batch_limits(emulator, credential, eastus2):
    sub = eastus2.subscription_id
    fake = [
        f"/subscriptions/{sub}/resourceGroups/rg-x/providers/{NS}/acct-{i:02d}" for i in range(51)
    ]
    other_sub = next(s for s in emulator.world.subscriptions if s != sub)
    mixed = [eastus2.arm_id, f"/subscriptions/{other_sub}/resourceGroups/rg/providers/{NS}/x"]
    with _client(credential, "eastus2") as client:
        with pytest.raises(HttpResponseError) as too_many:
            client.query_resources(
                resource_ids=fake, metric_namespace=NS, metric_names=["ModelRequests"]
            )
        with pytest.raises(HttpResponseError) as two_subs:
            client.query_resources(
                resource_ids=mixed, metric_namespace=NS, metric_names=["ModelRequests"]
            )
        # 50 ids (one real, the rest unknown) answer; unknown resources have empty series
        results = client.query_resources(
            resource_ids=[eastus2.arm_id, *fake[:49]],
            metric_namespace=NS,
            metric_names=["ModelRequests"],
        )
    assert too_many.value.status_code == 400
    assert too_many.value.error.code == "BadRequest"
    assert "50" in too_many.value.error.message
    assert two_subs.value.status_code == 400
    assert len(results) == 50
    assert len(results[0].metrics["ModelRequests"].timeseries) == 1
    assert all(r.metrics["ModelRequests"].timeseries == [] for r in results[1:])


def test_fifty_resources_pt1m_hour_is_fast(emulator, credential, eastus2):
    sub = eastus2.subscription_id
    ids = [eastus2.arm_id] + [
        f"/subscriptions/{sub}/resourceGroups/rg-x/providers/{NS}/acct-{i:02d}" for i in range(49)
    ]
    query = {
        "resource_ids": ids,
        "metric_namespace": NS,
        "metric_names": ["ModelRequests"],
        "timespan": timedelta(hours=1),
        "granularity": timedelta(minutes=1),
        "filter": "ModelDeploymentName eq '*' and StatusCode eq '*'",
        "max_results": 100,
    }
    with _client(credential, "eastus2") as client:
        client.query_resources(**query)  # warm the world's minutes
        t0 = time.perf_counter()
        client.query_resources(**query)
        elapsed = time.perf_counter() - t0
    assert elapsed < 1.0


def test_throttle_is_529_and_post_is_not_retried_without_retry_after(
    emulator, credential, eastus2, faults
):
    faults.add(kind="throttle", endpoint="metrics", count=1)
    query = {
        "resource_ids": [eastus2.arm_id],
        "metric_namespace": NS,
        "metric_names": ["ModelRequests"],
    }
    with _client(credential, "eastus2") as client:
        with pytest.raises(HttpResponseError) as info:
            client.query_resources(**query)
        # azure-core retries a POST only on 500/503/504 or when Retry-After is present: the 529
        # surfaces to the caller after one attempt, and the next call goes through.
        assert info.value.status_code == 529
        assert faults.rules() == []
        assert client.query_resources(**query)


def test_throttle_with_retry_after_is_retried_by_the_sdk(emulator, credential, eastus2, faults):
    faults.add(kind="throttle", endpoint="metrics", count=2, retry_after_s=0)
    with _client(credential, "eastus2") as client:
        [result] = client.query_resources(
            resource_ids=[eastus2.arm_id], metric_namespace=NS, metric_names=["ModelRequests"]
        )
    assert result.metrics["ModelRequests"].timeseries
    assert faults.rules() == []


def test_generic_faults(emulator, credential, eastus2, faults):
    query = {
        "resource_ids": [eastus2.arm_id],
        "metric_namespace": NS,
        "metric_names": ["ModelRequests"],
    }
    with _client(credential, "eastus2", retry_total=0) as client:
        faults.add(kind="error", endpoint="metrics", status=503)
        with pytest.raises(HttpResponseError) as info:
            client.query_resources(**query)
        assert info.value.status_code == 503
        faults.add(kind="malformed", endpoint="metrics")
        with pytest.raises(Exception):  # noqa: B017 - any decode error is fine
            client.query_resources(**query)
        faults.add(kind="expired_token", endpoint="metrics")
        with pytest.raises(HttpResponseError) as expired:
            client.query_resources(**query)
        assert expired.value.status_code == 401
        assert client.query_resources(**query)


def test_no_token_is_401(emulator):
    import ssl

    import httpx

    url = os.environ["FOUNDRY_WATCH_METRICS_ENDPOINT"].format(region="eastus2")
    r = httpx.post(
        f"{url}/subscriptions/x/metrics:getBatch",
        params={"api-version": "2024-02-01", "metricnamespace": NS, "metricnames": "ModelRequests"},
        json={"resourceids": []},
        verify=ssl.create_default_context(cafile=emulator.ca_file),
    )
    assert r.status_code == 401


# ------------------------------------------------------------------------------ units


def test_parse_filter_rules():
    f = M.parse_filter("A eq 'a1' and B eq 'b1' or B eq 'b2' and C eq '*'")
    assert list(f) == ["a", "b", "c"]
    assert f["a"].allowed == {"a1"}
    assert f["b"].allowed == {"b1", "b2"}
    assert f["c"].wildcard
    assert M.parse_filter("(StatusCode eq '429') and ModelName ne 'x'")["modelname"].excluded == {
        "x"
    }
    with pytest.raises(M.BatchError):
        M.parse_filter("A eq 'a1' or B eq 'b1'")
    with pytest.raises(M.BatchError):
        M.parse_filter("A = 'a1'")


def test_endtime_before_starttime_is_rejected():
    now = datetime(2025, 1, 10, tzinfo=UTC)
    params = {
        "api-version": "2024-02-01",
        "metricnamespace": NS,
        "metricnames": "ModelRequests",
        "starttime": "2025-01-09T12:00:00Z",
        "endtime": "2025-01-09T11:00:00Z",
    }
    rid = f"/subscriptions/s/resourceGroups/rg/providers/{NS}/a"
    with pytest.raises(M.BatchError, match="earlier than"):
        M.parse_query("eastus2", "s", params, {"resourceids": [rid]}, now, M.MetricsOptions())
    params["starttime"], params["endtime"] = "2024-09-01T00:00:00Z", "2024-09-02T00:00:00Z"
    with pytest.raises(M.BatchError, match="retention"):
        M.parse_query("eastus2", "s", params, {"resourceids": [rid]}, now, M.MetricsOptions())
    with pytest.raises(M.BatchError, match="metricnamespace"):
        M.parse_query(
            "eastus2",
            "s",
            {k: v for k, v in params.items() if k != "metricnamespace"},
            {"resourceids": [rid]},
            now,
            M.MetricsOptions(),
        )


def test_a_late_call_reaches_every_cached_aggregate():
    """A call recorded into a minute the caches already hold (Azure's late data) shows up in the
    next minute, hour and day answer; before the fix the cached aggregates hid it for good."""
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    world = World(5, days=3, clock=now, resources=1, deployments_per_resource=2)
    dep = next(d for d in world.deployments if d.active_at(now - timedelta(days=2)))
    minute = datetime(2026, 11, 19, 10, 30, tzinfo=UTC)  # settled: cached on first read
    hour, day = minute.replace(minute=0), minute.date()
    key = f"{dep.resource.arm_id.lower()}/{dep.name}"

    def counts() -> tuple[float, float, float]:
        agg = M.Aggregator(world)
        in_minute = sum(st[M._REQ * 4] for st in agg.minute(dep, minute).values())
        return (
            in_minute,
            agg.hour_totals(dep, hour)["requests"],
            costs.day_totals(world, day)[key]["requests"],
        )

    before = counts()
    cache = M.Aggregator(world).cache
    assert cache.days and cache.hours and cache.minutes, "the first read fills every cache"
    template = next(iter(world.requests(minute - timedelta(hours=6), minute)))
    world.record_live(replace(template, deployment=dep, time=minute + timedelta(seconds=20)))
    assert counts() == tuple(n + 1 for n in before)


def test_a_cache_fill_that_raced_a_late_call_is_not_kept():
    """An aggregate computed before a late call arrived must not be stored after it; other
    keys, and fills begun after it, are kept (steady live traffic must not stop all caching)."""
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    world = World(5, days=3, clock=now, resources=1, deployments_per_resource=1)
    cache = M.Aggregator(world).cache
    rec = next(iter(world.requests(now - timedelta(hours=2), now)))
    hour = floor_minute(rec.time).replace(minute=0)
    key = (rec.deployment.resource.arm_id.lower(), rec.deployment.name, hour)
    before = cache.generation
    world.record_live(rec)
    assert not cache.keep(cache.hours, key, {}, before)
    assert cache.keep(cache.hours, (*key[:2], hour - timedelta(hours=1)), {}, before)
    assert cache.keep(cache.hours, key, {}, cache.generation)


def test_late_call_marks_stay_bounded_and_safe():
    """A long live run touches a new minute per deployment per minute: the marks are bounded,
    and a fill begun before a dropped mark is still refused (by the generation floor)."""
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    world = World(5, days=3, clock=now, resources=1, deployments_per_resource=1)
    cache = M.Aggregator(world).cache
    rec = next(iter(world.requests(now - timedelta(hours=2), now)))
    first = floor_minute(rec.time)
    key = (rec.deployment.resource.arm_id.lower(), rec.deployment.name, first)
    before = cache.generation
    cache.forget(rec.deployment, first)
    for n in range(1, cache.TOUCHED_MAX):  # minutes, hours, days: well over the bound
        cache.forget(rec.deployment, first + timedelta(minutes=n))
    assert len(cache.touched) <= cache.TOUCHED_MAX and key not in cache.touched
    assert not cache.keep(cache.minutes, key, {}, before)  # its mark is gone, the floor is not
    assert cache.keep(cache.minutes, key, {}, cache.generation)
