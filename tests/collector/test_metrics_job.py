"""The metrics job: unit tests of its parsing, then end-to-end runs against the emulator.

End-to-end tests compare the store with the emulator's ground truth, computed here from
``world.requests`` with the counting rules ``emulator/metrics.py`` documents (every request
counts in ModelRequests by status; latency metrics count 2xx requests only; token metrics get a
sample per request with a non-zero count of that kind; TotalTokens = input + output unless the
emulator says cache tokens are included).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.monitor.querymetrics import MetricsQueryResult
from sqlalchemy import delete, func, select, update

from collector.jobs import discovery
from collector.jobs import metrics as job
from collector.jobs.base import JobContext
from emulator import metrics as emu_metrics
from models.tables import CollectorRun, Deployment, MetricPoint, Resource, Watermark

SUB = "12345678-abcd-1234-abcd-123456789abc"
RID = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/acc1"
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
TOKEN_METRICS = (
    "InputTokens",
    "OutputTokens",
    "TotalTokens",
    "cacheReadInputTokens",
    "ephemeral5mInputTokens",
    "ephemeral1hInputTokens",
)


# =========================================================================== unit tests


def _series(dims: dict[str, str], points: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadatavalues": [
            {"name": {"value": k, "localizedValue": k}, "value": v} for k, v in dims.items()
        ],
        "data": points,
    }


def _result(metrics: dict[str, list[dict[str, Any]]], rid: str = RID) -> MetricsQueryResult:
    """A per-resource answer in the 2024-02-01 batch shape, through the SDK's own parser."""
    return MetricsQueryResult._from_generated(
        {
            "starttime": "2026-01-05T10:00:00.000Z",
            "endtime": "2026-01-05T10:05:00.000Z",
            "interval": "PT1M",
            "value": [
                {
                    "id": f"{rid}/providers/Microsoft.Insights/metrics/{name}",
                    "type": "Microsoft.Insights/metrics",
                    "name": {"value": name, "localizedValue": name},
                    "unit": "Count",
                    "timeseries": series,
                    "errorCode": "Success",
                }
                for name, series in metrics.items()
            ],
            "namespace": "microsoft.cognitiveservices/accounts",
            "resourceregion": "eastus2",
            "resourceid": rid,
        }
    )


def _ts(minute: int) -> str:
    return (T0 + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _data(end_minutes: int = 5) -> job.ChunkData:
    return job.ChunkData(start=T0, end=T0 + timedelta(minutes=end_minutes))


REQUESTS = job.GROUPS[0]
LATENCY = job.GROUPS[1]
TOKENS = job.GROUPS[2]


def test_groups_never_ask_ptu_only_metrics_and_split_by_their_dimensions() -> None:
    names = {m for g in job.GROUPS for m in g.metrics}
    assert "TimeToResponse" not in names and "TokensPerSecond" not in names
    assert names == {
        "ModelRequests",
        "TimeToLastByte",
        "NormalizedTimeToFirstToken",
        *TOKEN_METRICS,
    }
    assert REQUESTS.filter == (
        "ModelDeploymentName eq '*' and StatusCode eq '*' and ModelName eq '*'"
        " and ModelVersion eq '*'"
    )
    assert (
        TOKENS.filter == "ModelDeploymentName eq '*' and ModelName eq '*' and ModelVersion eq '*'"
    )
    # every filter dimension exists on every metric of its group (else Azure refuses the call)
    for g in job.GROUPS:
        wanted = {d.lower() for d in ("ModelDeploymentName", "ModelName", "ModelVersion")} | (
            {"statuscode"} if g.by_status else set()
        )
        for m in g.metrics:
            assert wanted <= emu_metrics.METRICS[m.lower()].dim_keys


def test_lower_cased_dimensions_map_case_insensitively_and_bare_points_are_skipped() -> None:
    data = _data()
    result = _result(
        {
            "ModelRequests": [
                _series(
                    {"modeldeploymentname": "Claude-Sonnet", "statuscode": "200", "modelname": "x"},
                    [
                        {"timeStamp": _ts(0), "total": 3.0},
                        {"timeStamp": _ts(1)},  # bare: no value, not zero
                        {"timeStamp": _ts(2), "total": 0.0},  # a real zero is kept
                    ],
                ),
                _series(
                    {"modeldeploymentname": "claude-sonnet", "statuscode": "429"},
                    [{"timeStamp": _ts(1), "total": 2.0}],
                ),
            ]
        }
    )
    job.collect_result(data, REQUESTS, result, RID.lower(), {"claude-sonnet": 7}, top=1000)
    rows = sorted(data.rows(), key=lambda r: (r["minute"], r["status_code"]))
    assert [(r["minute"], r["status_code"], r["total"]) for r in rows] == [
        (T0, "200", 3.0),
        (T0 + timedelta(minutes=1), "429", 2.0),
        (T0 + timedelta(minutes=2), "200", 0.0),
    ]
    assert all(r["deployment_id"] == 7 and r["metric"] == "ModelRequests" for r in rows)
    assert all(r["count"] is None and r["average"] is None for r in rows)
    assert data.bare == 1


def test_series_of_the_same_key_are_merged_not_overwritten() -> None:
    data = _data()
    pts = [{"timeStamp": _ts(0), "average": 100.0, "minimum": 50, "maximum": 150, "count": 2}]
    more = [{"timeStamp": _ts(0), "average": 400.0, "minimum": 400, "maximum": 400, "count": 1}]
    result = _result(
        {
            "TimeToLastByte": [
                _series({"modeldeploymentname": "d", "modelname": "claude-a"}, pts),
                _series({"modeldeploymentname": "D", "modelname": "claude-b"}, more),
            ],
            "NormalizedTimeToFirstToken": [],
        }
    )
    job.collect_result(data, LATENCY, result, RID.lower(), {"d": 1}, top=1000)
    (row,) = list(data.rows())
    assert row["count"] == 3 and row["minimum"] == 50 and row["maximum"] == 400
    assert row["average"] == pytest.approx(200.0)


def test_unknown_claude_deployments_are_kept_and_non_claude_ones_ignored() -> None:
    data = _data()
    result = _result(
        {
            "InputTokens": [
                _series(
                    {
                        "modeldeploymentname": "New-Dep",
                        "modelname": "claude-opus-4-5",
                        "modelversion": "20251101",
                    },
                    [{"timeStamp": _ts(3), "total": 5.0}, {"timeStamp": _ts(4), "total": 1.0}],
                ),
                _series(
                    {"modeldeploymentname": "gpt-4o", "modelname": "gpt-4o"},
                    [{"timeStamp": _ts(1), "total": 9.0}],
                ),
                _series({"modeldeploymentname": "known"}, [{"timeStamp": _ts(1), "total": 2.0}]),
            ]
        }
    )
    job.collect_result(data, TOKENS, result, RID.lower(), {"known": 3}, top=1000)
    assert [r["total"] for r in data.rows()] == [2.0]
    unlisted = data.unlisted[(RID.lower(), "new-dep")]
    assert (unlisted.name, unlisted.model, unlisted.version) == (
        "New-Dep",
        "claude-opus-4-5",
        "20251101",
    )
    assert unlisted.points == {
        (T0 + timedelta(minutes=3), "InputTokens", ""): [5.0, None, None, None, None],
        (T0 + timedelta(minutes=4), "InputTokens", ""): [1.0, None, None, None, None],
    }
    assert (RID.lower(), "gpt-4o") in data.ignored and len(data.unlisted) == 1


def test_a_result_cut_by_top_is_an_error() -> None:
    series = [_series({"modeldeploymentname": f"d{i}", "statuscode": "200"}, []) for i in range(3)]
    with pytest.raises(job.MetricsResultError, match="top"):
        job.collect_result(
            _data(), REQUESTS, _result({"ModelRequests": series}), RID.lower(), {}, top=3
        )
    job.collect_result(_data(), REQUESTS, _result({"ModelRequests": series}), RID.lower(), {}, 4)


def test_malformed_series_are_errors_not_guesses() -> None:
    no_status = _series({"modeldeploymentname": "d"}, [{"timeStamp": _ts(0), "total": 1.0}])
    with pytest.raises(job.MetricsResultError, match="StatusCode"):
        job.collect_result(
            _data(), REQUESTS, _result({"ModelRequests": [no_status]}), RID.lower(), {"d": 1}, 99
        )
    with pytest.raises(job.MetricsResultError, match="unexpected metric"):
        job.collect_result(
            _data(), TOKENS, _result({"ModelRequests": [no_status]}), RID.lower(), {"d": 1}, 99
        )


def test_points_outside_the_chunk_are_not_written() -> None:
    data = _data(end_minutes=2)
    series = _series(
        {"modeldeploymentname": "d"},
        [{"timeStamp": _ts(m), "total": 1.0} for m in (-1, 0, 1, 2)],
    )
    job.collect_result(data, TOKENS, _result({"InputTokens": [series]}), RID.lower(), {"d": 1}, 9)
    assert sorted(r["minute"] for r in data.rows()) == [T0, T0 + timedelta(minutes=1)]


def test_resource_of_metric_id() -> None:
    assert job.resource_of(f"{RID}/providers/Microsoft.Insights/metrics/InputTokens") == RID.lower()
    assert job.resource_of(f"{RID}/PROVIDERS/microsoft.insights/METRICS/x") == RID.lower()
    assert job.resource_of(None) is None and job.resource_of("garbage") is None


def test_windows_and_chunks() -> None:
    now = datetime(2026, 1, 5, 10, 7, 42, tzinfo=UTC)
    assert job.window_end(now) == datetime(2026, 1, 5, 10, 6, tzinfo=UTC)
    wm = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    assert job.window_start(wm, T0 - timedelta(days=30), now) == wm - job.OVERLAP
    assert job.window_start(None, T0 - timedelta(days=30), now) == T0 - timedelta(days=30)
    # never older than Azure keeps metrics (a 93-day-old end is refused)
    assert job.window_start(None, now - timedelta(days=200), now) > now - timedelta(days=93)
    pieces = job.chunks(T0, T0 + timedelta(hours=50), timedelta(days=1))
    assert [b - a for a, b in pieces] == [timedelta(days=1), timedelta(days=1), timedelta(hours=2)]
    assert all(pieces[i][1] == pieces[i + 1][0] for i in range(len(pieces) - 1))


def test_batches_top_and_chunk_length_follow_the_estate() -> None:
    scope = job.ScopeResources("s", "eastus2")
    for i in range(120):
        scope.deployments[f"/subscriptions/s/r{i:03d}"] = {f"d{k}": k for k in range(12)}
    assert [len(b) for b in scope.batches()] == [50, 50, 20]
    assert scope.top(scope.batches()[0]) >= 12 * 20  # deployments × a generous status count
    assert job.MIN_CHUNK <= scope.chunk_length() <= job.MAX_CHUNK
    small = job.ScopeResources("s", "eastus2", {"/r": {"a": 1, "b": 2}})
    assert small.chunk_length() == job.MAX_CHUNK
    assert small.scope == "/subscriptions/s/locations/eastus2"


# =========================================================================== emulator tests


def _known(conn) -> dict[tuple[str, str], int]:
    rows = conn.execute(
        select(Deployment.id, Deployment.name, Resource.arm_id).join(
            Resource, Resource.id == Deployment.resource_id
        )
    ).all()
    return {(r.arm_id.lower(), r.name.lower()): r.id for r in rows}


def _floor(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def _truth(world, start: datetime, end: datetime):
    """Ground truth over [start, end) for EVERY deployment of the world (deleted ones too),
    keyed by (resource ARM id, deployment name, minute, status or metric), lower-cased."""
    requests: Counter = Counter()
    tokens: Counter = Counter()
    latency: dict[tuple, list[float]] = defaultdict(list)
    for r in world.requests(start, end):
        dep = (r.deployment.resource.arm_id.lower(), r.deployment.name.lower())
        minute = _floor(r.time)
        requests[(*dep, minute, str(r.status))] += 1
        cache = r.cache_read_tokens + r.cache_write_5m_tokens + r.cache_write_1h_tokens
        total = r.input_tokens + r.output_tokens
        if emu_metrics.TOTAL_TOKENS_INCLUDE_CACHE:
            total += cache
        for metric, value in zip(
            TOKEN_METRICS,
            (
                r.input_tokens,
                r.output_tokens,
                total,
                r.cache_read_tokens,
                r.cache_write_5m_tokens,
                r.cache_write_1h_tokens,
            ),
            strict=True,
        ):
            if value:
                tokens[(*dep, minute, metric)] += value
        if 200 <= r.status < 300:
            latency[(*dep, minute, "TimeToLastByte")].append(r.duration_ms)
            if r.ttft_ms is not None:
                latency[(*dep, minute, "NormalizedTimeToFirstToken")].append(r.ttft_ms)
    return requests, tokens, latency


def _stored(conn, start: datetime, end: datetime):
    """The store over [start, end), keyed like ``_truth``."""
    rows = conn.execute(
        select(MetricPoint.__table__, Deployment.name, Resource.arm_id)
        .join(Deployment, Deployment.id == MetricPoint.deployment_id)
        .join(Resource, Resource.id == Deployment.resource_id)
        .where(MetricPoint.minute >= start, MetricPoint.minute < end)
    ).all()
    requests: dict = {}
    tokens: dict = {}
    latency: dict = {}
    for p in rows:
        dep = (p.arm_id.lower(), p.name.lower())
        if p.metric == "ModelRequests":
            requests[(*dep, p.minute, p.status_code)] = p.total
        elif p.metric in TOKEN_METRICS:
            assert p.status_code == ""
            tokens[(*dep, p.minute, p.metric)] = p.total
        else:
            assert p.status_code == ""
            latency[(*dep, p.minute, p.metric)] = (
                p.count,
                p.minimum,
                p.maximum,
                p.average,
            )
    return requests, tokens, latency


def assert_store_matches_truth(ctx: JobContext, world, start: datetime, end: datetime) -> int:
    """The store equals the ground truth for [start, end), every deployment of the world
    included (deleted ones too); returns the number of requests."""
    with ctx.engine.connect() as conn:
        s_req, s_tok, s_lat = _stored(conn, start, end)
    t_req, t_tok, t_lat = _truth(world, start, end)
    assert s_req == {k: float(v) for k, v in t_req.items()}
    assert s_tok == {k: float(v) for k, v in t_tok.items()}
    assert set(s_lat) == set(t_lat)
    for key, values in t_lat.items():
        count, minimum, maximum, average = s_lat[key]
        assert (count, minimum, maximum) == (len(values), min(values), max(values)), key
        assert average == pytest.approx(sum(values) / len(values), rel=1e-12), key
    return sum(t_req.values())


def _watermarks(ctx: JobContext) -> dict[str, datetime]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(Watermark.scope, Watermark.high_water).where(Watermark.source == job.SOURCE)
        ).all()
    return {r.scope: r.high_water for r in rows}


def _points(ctx: JobContext) -> dict[tuple, tuple]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(MetricPoint.__table__)).all()
    return {
        (p.deployment_id, p.minute, p.metric, p.status_code): (
            p.total,
            p.count,
            p.average,
            p.minimum,
            p.maximum,
        )
        for p in rows
    }


def _scopes(world) -> set[str]:
    return {f"/subscriptions/{r.subscription_id}/locations/{r.location}" for r in world.resources}


@pytest.fixture
def ctx(collector_ctx: JobContext) -> JobContext:
    return collector_ctx


def _at(ctx: JobContext, now: datetime) -> JobContext:
    """The same store and emulator, with the collector's clock at ``now``."""
    return JobContext(
        settings=ctx.settings, engine=ctx.engine, credential=ctx.credential, clock=lambda: now
    )


def test_backfill_equals_ground_truth_and_repeats_change_nothing(collector_ctx, emulator) -> None:
    world = emulator.world
    gone = world.deleted_deployment
    assert gone is not None
    # a 3-hour window around the deletion of a deployment discovery never saw
    ctx = _at(collector_ctx, _floor(gone.deleted_at) + timedelta(minutes=90))
    start = _floor(ctx.clock() - timedelta(hours=3))
    outcomes = job.backfill(ctx, start)
    assert outcomes and all(o.status == "ok" for o in outcomes), outcomes
    marks = _watermarks(ctx)
    assert set(marks) == _scopes(world)
    end = min(marks.values())
    assert end >= _floor(ctx.clock()) - timedelta(minutes=3)
    assert assert_store_matches_truth(ctx, world, start, end) > 100
    # the deleted deployment's minutes are in that truth, stored under a row of its own
    assert sum(1 for r in world.requests(start, end) if r.deployment is gone) > 0
    with ctx.engine.connect() as conn:
        row = conn.execute(
            select(Deployment.__table__)
            .join(Resource, Resource.id == Deployment.resource_id)
            .where(Resource.arm_id == gone.resource.arm_id.lower(), Deployment.name == gone.name)
        ).one()
    assert (row.model_name, row.model_version) == (gone.model_name, gone.model_version)
    assert row.deleted_at is not None

    with ctx.engine.connect() as conn:
        nulls = conn.execute(
            select(func.count())
            .select_from(MetricPoint)
            .where(MetricPoint.total.is_(None), MetricPoint.count.is_(None))
        ).scalar_one()
    assert nulls == 0  # bare points are not stored

    before = {k: v for k, v in _points(ctx).items() if k[1] < end}
    assert any(k[0] == row.id for k in before)
    # the next cycle re-reads the overlap; a full re-run of the same window rewrites it all
    assert all(o.status == "ok" for o in job.run(ctx))
    with ctx.engine.begin() as conn:
        conn.execute(delete(Watermark).where(Watermark.source == job.SOURCE))
    assert all(o.status == "ok" for o in job.backfill(ctx, start))
    after = {k: v for k, v in _points(ctx).items() if k[1] < end}
    assert after == before
    assert min(_watermarks(ctx).values()) >= end


def test_incremental_cycle_cost_is_scopes_times_groups(ctx, emulator) -> None:
    job.backfill(ctx, _floor(ctx.clock() - timedelta(minutes=30)))
    first_id = _last_run_id(ctx)
    outcomes = job.run(ctx)
    scopes = _scopes(emulator.world)
    assert len(outcomes) == len(scopes) and all(o.status == "ok" for o in outcomes)
    with ctx.engine.connect() as conn:
        runs = conn.execute(
            select(CollectorRun.__table__).where(
                CollectorRun.job == "metrics", CollectorRun.id > first_id
            )
        ).all()
        deployments = conn.execute(select(func.count()).select_from(Deployment)).scalar_one()
    assert {r.scope for r in runs} == scopes
    assert all(r.api_calls == len(job.GROUPS) for r in runs)
    assert sum(r.api_calls for r in runs) == len(scopes) * len(job.GROUPS) < deployments * 9
    for r in runs:  # the window re-reads the overlap before the previous watermark
        assert r.window_end - r.window_start >= job.OVERLAP


def _last_run_id(ctx: JobContext) -> int:
    with ctx.engine.connect() as conn:
        return conn.execute(select(func.max(CollectorRun.id))).scalar_one() or 0


def test_late_metrics_show_up_next_cycle(ctx, emulator) -> None:
    world = emulator.world
    start = _floor(ctx.clock() - timedelta(minutes=40))
    assert all(o.status == "ok" for o in job.backfill(ctx, start))
    marks = _watermarks(ctx)
    # a call that Azure reports late: it belongs to a minute the last cycle already read
    dep = next(d for d in world.deployments if d.deleted_at is None)
    scope = f"/subscriptions/{dep.resource.subscription_id}/locations/{dep.resource.location}"
    minute = marks[scope] - timedelta(minutes=2)
    template = next(
        r
        for m in range(0, 600)
        for r in world.requests_in_minute(dep, minute - timedelta(minutes=m))
    )
    late = dataclasses.replace(
        template,
        time=minute + timedelta(seconds=30),
        status=200,
        input_tokens=1234,
        correlation_id=str(uuid.uuid4()),
        request_id="req_011C" + uuid.uuid4().hex[:20],
    )
    world.record_live(late)
    with ctx.engine.connect() as conn:
        dep_id = _known(conn)[(dep.resource.arm_id.lower(), dep.name.lower())]
    key = (dep_id, minute, "InputTokens", "")
    before = _points(ctx).get(key, (0.0,))[0]
    assert all(o.status == "ok" for o in job.run(ctx))
    assert _points(ctx)[key][0] == before + 1234
    assert_store_matches_truth(ctx, world, start, min(_watermarks(ctx).values()))


def test_throttled_once_is_retried_and_data_is_correct(ctx, emulator, faults) -> None:
    world = emulator.world
    start = _floor(ctx.clock() - timedelta(minutes=30))
    faults.add(endpoint="metrics", kind="throttle", count=1)  # 529 without Retry-After
    outcomes = job.backfill(ctx, start)
    assert all(o.status == "ok" for o in outcomes), outcomes
    assert sum(o.api_calls for o in outcomes) == len(outcomes) * len(job.GROUPS) + 1
    assert assert_store_matches_truth(ctx, world, start, min(_watermarks(ctx).values())) > 0


def test_persistent_throttling_fails_the_run_and_keeps_the_watermark(
    ctx, emulator, faults, monkeypatch
) -> None:
    monkeypatch.setitem(job.RETRY_OPTIONS, "retry_backoff_factor", 0.01)
    start = _floor(ctx.clock() - timedelta(minutes=30))
    assert all(o.status == "ok" for o in job.backfill(ctx, start))
    marks = _watermarks(ctx)
    points = _points(ctx)
    faults.add(endpoint="metrics", kind="throttle", count=None, retry_after_s=0)
    outcomes = job.run(ctx)
    assert outcomes and all(o.status == "failed" for o in outcomes)
    assert all("529" in o.error and o.api_calls > 1 for o in outcomes)
    assert _watermarks(ctx) == marks
    assert _points(ctx) == points
    with ctx.engine.connect() as conn:
        failed = conn.execute(
            select(CollectorRun.__table__).where(CollectorRun.status == "failed")
        ).all()
    assert len(failed) == len(outcomes) and all("529" in r.error for r in failed)
    faults.clear()
    assert all(o.status == "ok" for o in job.run(ctx))


def test_malformed_answer_fails_without_writing(ctx, emulator, faults) -> None:
    start = _floor(ctx.clock() - timedelta(minutes=30))
    faults.add(endpoint="metrics", kind="malformed", count=1)
    outcomes = job.backfill(ctx, start)
    assert [o.status for o in outcomes].count("failed") == 1
    failed = next(o for o in outcomes if o.status == "failed")
    assert "malformed" in failed.error
    assert failed.scope not in _watermarks(ctx)
    assert all(o.status == "ok" for o in job.backfill(ctx, start))  # the next try fills it
    assert assert_store_matches_truth(ctx, emulator.world, start, min(_watermarks(ctx).values()))


def test_result_cut_by_top_fails_the_chunk(ctx, monkeypatch) -> None:
    monkeypatch.setattr(job, "MIN_TOP", 1)
    monkeypatch.setattr(job, "TOP_PER_DEPLOYMENT", 0)
    outcomes = job.backfill(ctx, _floor(ctx.clock() - timedelta(minutes=30)))
    assert outcomes and all(o.status == "failed" and "top" in o.error for o in outcomes)
    assert _watermarks(ctx) == {} and _points(ctx) == {}


def test_wrong_region_is_empty_not_an_error(ctx, emulator) -> None:
    world = emulator.world
    moved = world.resources[0]
    with ctx.engine.begin() as conn:
        conn.execute(
            update(Resource)
            .where(Resource.arm_id == moved.arm_id.lower())
            .values(location="westus3")
        )
    outcomes = job.backfill(ctx, _floor(ctx.clock() - timedelta(minutes=30)))
    wrong = f"/subscriptions/{moved.subscription_id}/locations/westus3"
    by_scope = {o.scope: o for o in outcomes}
    assert by_scope[wrong].status == "ok" and by_scope[wrong].rows == 0
    assert all(o.status == "ok" and o.rows > 0 for s, o in by_scope.items() if s != wrong)


def test_unlisted_deployment_gets_its_own_row_and_discovery_keeps_its_points(ctx, emulator):
    world = emulator.world
    start = _floor(ctx.clock() - timedelta(minutes=30))
    dep = next(
        d for d in world.deployments if d.deleted_at is None and d.name == "claude-sonnet-4-5"
    )
    resource_id = (
        select(Resource.id).where(Resource.arm_id == dep.resource.arm_id.lower()).scalar_subquery()
    )
    mine = (Deployment.name == dep.name, Deployment.resource_id == resource_id)
    with ctx.engine.begin() as conn:  # as if ARM had not listed it at the last discovery
        old_id = conn.execute(select(Deployment.id).where(*mine)).scalar_one()
        conn.execute(delete(Deployment).where(*mine))
    outcomes = job.backfill(ctx, start)
    assert outcomes and all(o.status == "ok" for o in outcomes), outcomes
    end = min(_watermarks(ctx).values())
    assert end >= _floor(ctx.clock()) - timedelta(minutes=3)  # nothing held back
    with ctx.engine.connect() as conn:
        row = conn.execute(select(Deployment.__table__).where(*mine)).one()
    assert row.id != old_id and row.deleted_at is not None
    assert (row.model_name, row.model_version) == (dep.model_name, dep.model_version)
    points = _points(ctx)
    assert any(k[0] == row.id for k in points)
    assert assert_store_matches_truth(ctx, world, start, end) > 0  # all its points included

    assert all(o.status == "ok" for o in discovery.run(ctx))  # ARM lists it: merely new
    with ctx.engine.connect() as conn:
        listed = conn.execute(select(Deployment.__table__).where(*mine)).one()
    assert listed.id == row.id and listed.deleted_at is None
    assert _points(ctx) == points  # still attached to it
    assert all(o.status == "ok" for o in job.run(ctx))
    assert assert_store_matches_truth(ctx, world, start, min(_watermarks(ctx).values())) > 0


def test_minutes_azure_has_not_ingested_yet_arrive_next_cycle(ctx, emulator) -> None:
    world = emulator.world
    opts = emu_metrics.options(emulator.state)
    start = _floor(ctx.clock() - timedelta(minutes=30))
    opts.lag_s = 240  # the newest 4 minutes come back as bare points (null), like Azure's lag
    try:
        assert all(o.status == "ok" for o in job.backfill(ctx, start))
        end = min(_watermarks(ctx).values())
        with ctx.engine.connect() as conn:
            newest = conn.execute(select(func.max(MetricPoint.minute))).scalar_one()
        assert newest < end - timedelta(minutes=2)  # nothing stored for the lagging minutes
    finally:
        opts.lag_s = 0
    assert all(o.status == "ok" for o in job.run(ctx))
    assert assert_store_matches_truth(ctx, world, start, min(_watermarks(ctx).values())) > 0
