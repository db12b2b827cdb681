"""The request-logs job against the emulator's Log Analytics: exact ground truth, idempotence,
slicing, faults, late rows, rollup percentiles; plus the parsing rules and the KQL escaper."""

from __future__ import annotations

import dataclasses
import itertools
import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from azure.monitor.query import LogsQueryPartialResult, LogsQueryResult, LogsTable
from azure.monitor.query._exceptions import LogsQueryError
from sqlalchemy import delete, insert, select

from collector import azure as azure_mod
from collector import kql, rollups
from collector.jobs import logs
from emulator import kql as emulator_kql
from emulator import logs as emulator_logs
from models.tables import CollectorRun, Deployment, LatencyRollup, Request, Resource, Watermark

#: Longest request duration the comparison windows allow for (TimeGenerated = start + duration).
MAX_DURATION = timedelta(minutes=10)

HOSTILE = [
    "",
    "'",
    "''",
    '"',
    "\\",
    "\\'",
    "a'b\"c\\d",
    "' | take 1 //",
    'x" or 1 == 1 | project secret //',
    "@'verbatim'",
    "line1\nline2\r\nline3\rline4",
    "tab\there",
    "nul\x00byte\x07bell\x1bescape\x7fdel\x85nel",
    "sep\u2028line\u2029para",
    "unicode: é ü ß 中文 日本語 🙂 \U0001f680",
    "\ud800lone-surrogate",
    "trailing backslash \\",
    "\\u0041 is not an A",
    "; drop table requests; --",
    "}{)(][|&*%$#@!~`^",
]


# ------------------------------------------------------------------------------ helpers


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same retry behaviour with millisecond back-off, so 5xx tests do not sleep for seconds."""
    original = azure_mod.AzureClients._common

    def quick(self: Any, audience: str) -> dict[str, Any]:
        common = original(self, audience)
        common["retry_policy"] = azure_mod.AzureRetryPolicy(
            retry_total=2,
            retry_backoff_factor=0.001,
            retry_backoff_max=0.01,
            retry_on_status_codes=azure_mod.EXTRA_RETRY_STATUS,
        )
        return common

    monkeypatch.setattr(azure_mod.AzureClients, "_common", quick)


@pytest.fixture
def logs_options(emulator: Any) -> Iterator[emulator_logs.LogsOptions]:
    opts = emulator_logs.options(emulator.state)
    saved = dataclasses.replace(opts)
    yield opts
    opts.row_limit, opts.max_bytes = saved.row_limit, saved.max_bytes
    opts.ingestion_lag_s = saved.ingestion_lag_s


def _store(engine: Any, a: datetime, b: datetime) -> dict[str, tuple]:
    """Stored requests that started in [a, b): correlation id -> comparable fields."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Request.correlation_id,
                Request.time,
                Request.status_code,
                Request.duration_ms,
                Resource.arm_id,
                Request.deployment_name,
                Deployment.name,
                Request.model_name,
                Request.stream,
                Request.caller_ip,
                Request.operation_name,
                Request.source,
            )
            .join(Resource, Resource.id == Request.resource_id)
            .outerjoin(Deployment, Deployment.id == Request.deployment_id)
            .where(Request.time >= a, Request.time < b)
        ).all()
    return {
        r[0]: (r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11]) for r in rows
    }


def _truth(world: Any, a: datetime, b: datetime) -> dict[str, tuple]:
    out = {}
    for rec in world.requests(a, b):
        dep = rec.deployment
        out[rec.correlation_id] = (
            rec.time,
            rec.status,
            float(rec.duration_ms),
            dep.resource.arm_id.lower(),
            dep.name,
            dep.name,
            dep.model_name,
            rec.stream,
            rec.caller_ip,
            rec.operation_name,
            "logs",
        )
    return out


def _assert_store_equals_world(ctx: Any, world: Any, a: datetime, b: datetime) -> int:
    stored, truth = _store(ctx.engine, a, b), _truth(world, a, b)
    assert truth, "the comparison window should hold requests"
    missing = truth.keys() - stored.keys()
    extra = stored.keys() - truth.keys()
    assert not missing and not extra, (len(missing), len(extra))
    wrong = [k for k in truth if stored[k] != truth[k]]
    assert not wrong, (wrong[:3], [(stored[k], truth[k]) for k in wrong[:3]])
    return len(truth)


def _watermarks(ctx: Any) -> dict[str, datetime]:
    with ctx.engine.connect() as conn:
        return {r.scope: r.high_water for r in conn.execute(select(Watermark)).all()}


def _snapshot(ctx: Any) -> tuple[list, list]:
    with ctx.engine.connect() as conn:
        reqs = conn.execute(select(Request).order_by(Request.correlation_id)).all()
        rolls = conn.execute(
            select(LatencyRollup).order_by(
                LatencyRollup.deployment_id, LatencyRollup.bucket, LatencyRollup.status_class
            )
        ).all()
    return [tuple(r) for r in reqs], [tuple(r) for r in rolls]


def _until(rows: list[tuple], index: int, b: datetime) -> list[tuple]:
    return [r for r in rows if r[index] < b]


def _window(ctx: Any, hours: float) -> tuple[datetime, datetime]:
    now = ctx.clock()
    return now - timedelta(hours=hours), now


def _comparable(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """Request-start window whose every request has its log row in [start, end)."""
    return start, end - MAX_DURATION


# ------------------------------------------------------------------------------ ground truth


def test_backfill_equals_world_and_is_idempotent(collector_ctx: Any, emulator: Any) -> None:
    ctx, world = collector_ctx, emulator.world
    start, _ = _window(ctx, 3)
    progress: list[tuple[int, int]] = []
    outcomes = logs.backfill(ctx, start, lambda done, total: progress.append((done, total)))
    assert outcomes and all(o.status == "ok" for o in outcomes), outcomes
    assert len(outcomes) == len(world.workspaces)
    end = min(_watermarks(ctx).values())
    a, b = _comparable(start, end)
    n = _assert_store_equals_world(ctx, world, a, b)
    assert sum(o.rows for o in outcomes) >= n
    assert progress[0][0] == 0 and progress[-1][0] == progress[-1][1] > 0
    assert all(d1 <= d2 for (d1, _), (d2, _) in itertools.pairwise(progress))
    # the same window again (watermarks removed): nothing changes, not even row ids
    before = _snapshot(ctx)
    with ctx.engine.begin() as conn:
        conn.execute(delete(Watermark))
    assert all(o.status == "ok" for o in logs.backfill(ctx, start))
    after = _snapshot(ctx)
    assert _until(after[0], 3, b) == _until(before[0], 3, b)
    assert _until(after[1], 1, rollups.floor_minute(b)) == _until(
        before[1], 1, rollups.floor_minute(b)
    )
    # an overlapping incremental cycle: the old window is unchanged as well
    outcomes = logs.run(ctx)
    assert all(o.status == "ok" and o.api_calls == 1 for o in outcomes), outcomes
    again = _snapshot(ctx)
    assert _until(again[0], 3, b) == _until(before[0], 3, b)
    assert _until(again[1], 1, rollups.floor_minute(b)) == _until(
        before[1], 1, rollups.floor_minute(b)
    )
    _assert_store_equals_world(ctx, world, a, b)
    with ctx.engine.connect() as conn:
        runs = conn.execute(
            select(CollectorRun.status, CollectorRun.rows, CollectorRun.api_calls).where(
                CollectorRun.job == "logs"
            )
        ).all()
    assert runs and all(r.status == "ok" and r.api_calls >= 1 for r in runs)


def test_tiny_row_limit_splits_to_the_same_result(
    collector_ctx: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch, logs_options: Any
) -> None:
    ctx, world = collector_ctx, emulator.world
    monkeypatch.setattr(logs, "ROW_LIMIT", 100)
    logs_options.row_limit = 100  # the service truncates (PartialError) beyond 100 rows too
    start, _ = _window(ctx, 1.5)
    outcomes = logs.backfill(ctx, start)
    assert all(o.status == "ok" for o in outcomes), outcomes
    assert all(o.api_calls > o.rows / 100 for o in outcomes), outcomes  # many small slices
    end = min(_watermarks(ctx).values())
    a, b = _comparable(start, end)
    _assert_store_equals_world(ctx, world, a, b)
    # an unplanned window (incremental, no count query) that is over the limit gets halved
    with ctx.engine.begin() as conn:
        conn.execute(
            Watermark.__table__.update().values(high_water=ctx.clock() - timedelta(minutes=40))
        )
    outcomes = logs.run(ctx)
    assert all(o.status == "ok" and o.api_calls > 1 for o in outcomes), outcomes
    _assert_store_equals_world(ctx, world, a, b)


# ------------------------------------------------------------------------------ faults


def _backfilled(ctx: Any, hours: float = 1) -> tuple[datetime, dict[str, datetime]]:
    start, _ = _window(ctx, hours)
    assert all(o.status == "ok" for o in logs.backfill(ctx, start))
    return start, _watermarks(ctx)


def test_partial_result_keeps_rows_and_holds_the_watermark(
    collector_ctx: Any, emulator: Any, faults: Any
) -> None:
    ctx, world = collector_ctx, emulator.world
    start, marks = _backfilled(ctx)
    held = {s: t - timedelta(minutes=10) for s, t in marks.items()}
    with ctx.engine.begin() as conn:  # forget recent rows (re-read from held - OVERLAP on)
        conn.execute(
            delete(Request).where(Request.time >= min(held.values()) - timedelta(minutes=5))
        )
    with ctx.engine.begin() as conn:
        for scope, t in held.items():
            conn.execute(
                Watermark.__table__.update().where(Watermark.scope == scope).values(high_water=t)
            )
    faults.add(kind="partial", endpoint="logs", count=1)
    outcomes = logs.run(ctx)
    partial = [o for o in outcomes if o.status == "partial"]
    assert len(partial) == 1 and len(outcomes) == 2, outcomes
    assert "partial result" in partial[0].error and "watermark held" in partial[0].error
    assert partial[0].rows > 0  # the half that arrived was kept
    after = _watermarks(ctx)
    assert after[partial[0].scope] == held[partial[0].scope]
    ok = next(o for o in outcomes if o.status == "ok")
    assert after[ok.scope] > held[ok.scope]
    with ctx.engine.connect() as conn:
        run = conn.execute(
            select(CollectorRun).where(CollectorRun.job == "logs").order_by(CollectorRun.id.desc())
        ).first()
    assert run is not None and run.status in ("ok", "partial")
    # next cycle: complete again
    assert all(o.status == "ok" for o in logs.run(ctx))
    a, b = _comparable(start, min(_watermarks(ctx).values()))
    _assert_store_equals_world(ctx, world, a, b)


@pytest.mark.usefixtures("fast_retries")
def test_server_error_fails_the_run_and_keeps_the_watermark(
    collector_ctx: Any, emulator: Any, faults: Any
) -> None:
    ctx = collector_ctx
    _, marks = _backfilled(ctx)
    faults.add(kind="error", endpoint="logs", status=500, count=None)
    outcomes = logs.run(ctx)
    assert outcomes and all(o.status == "failed" for o in outcomes), outcomes
    assert all("500" in o.error and o.error.count("\n") == 0 for o in outcomes)
    assert _watermarks(ctx) == marks
    with ctx.engine.connect() as conn:
        failed = conn.execute(
            select(CollectorRun.error).where(
                CollectorRun.job == "logs", CollectorRun.status == "failed"
            )
        ).all()
    assert len(failed) == len(outcomes)
    faults.clear()
    # a single 5xx is retried: correct data, ok run
    faults.add(kind="error", endpoint="logs", status=503, count=1)
    assert all(o.status == "ok" for o in logs.run(ctx))


def test_bad_query_fails_the_run_and_keeps_the_watermark(
    collector_ctx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = collector_ctx
    _, marks = _backfilled(ctx)
    monkeypatch.setattr(kql, "request_logs_query", lambda s, e: "AzureDiagnostics | frobnicate")
    outcomes = logs.run(ctx)
    assert outcomes and all(o.status == "failed" for o in outcomes), outcomes
    assert all("400" in o.error for o in outcomes), outcomes
    assert _watermarks(ctx) == marks


@pytest.mark.usefixtures("fast_retries")
def test_malformed_response_fails_the_run(collector_ctx: Any, faults: Any) -> None:
    ctx = collector_ctx
    _, marks = _backfilled(ctx)
    faults.add(kind="malformed", endpoint="logs", count=None)
    outcomes = logs.run(ctx)
    assert outcomes and all(o.status == "failed" for o in outcomes), outcomes
    assert _watermarks(ctx) == marks


# ------------------------------------------------------------------------------ late rows


def test_late_ingested_rows_arrive_next_cycle(
    collector_ctx: Any, emulator: Any, logs_options: Any
) -> None:
    ctx, world = collector_ctx, emulator.world
    logs_options.ingestion_lag_s = 180  # rows of the last 3 minutes are not queryable yet
    start, _ = _window(ctx, 1)
    assert all(o.status == "ok" for o in logs.backfill(ctx, start))
    first_end = min(_watermarks(ctx).values())
    a, b = _comparable(start, first_end)
    # requests whose log row was emitted in the lag before the run's end: not visible then
    hidden = {
        rec.correlation_id
        for rec in world.requests(first_end - timedelta(minutes=15), first_end)
        if first_end - timedelta(seconds=170)
        <= rec.time + timedelta(milliseconds=rec.duration_ms)
        < first_end
    }
    stored_then = _store(ctx.engine, start, first_end).keys()
    assert hidden and not hidden & stored_then
    # a request inside the overlap, recorded after the run (client traffic served late)
    template = next(iter(world.requests(first_end - timedelta(minutes=30), first_end)))
    late = dataclasses.replace(
        template,
        time=first_end - timedelta(minutes=6, microseconds=123),
        duration_ms=1500,
        correlation_id=str(uuid.uuid4()),
        request_id="req_late" + uuid.uuid4().hex[:16],
    )
    world.record_live(late)
    logs_options.ingestion_lag_s = 0
    outcomes = logs.run(ctx)
    assert all(o.status == "ok" for o in outcomes), outcomes
    stored = _store(ctx.engine, start, first_end)
    assert late.correlation_id in stored and late.correlation_id not in stored_then
    assert stored[late.correlation_id][0] == late.time
    assert hidden <= stored.keys()
    _assert_store_equals_world(ctx, world, a, b)


# ------------------------------------------------------------------------------ rollups


def test_rollups_match_world_latency(collector_ctx: Any, emulator: Any) -> None:
    ctx, world = collector_ctx, emulator.world
    start, _ = _window(ctx, 3)
    assert all(o.status == "ok" for o in logs.backfill(ctx, start))
    a = rollups.ceil_minute(start)
    b = rollups.floor_minute(min(_watermarks(ctx).values()) - MAX_DURATION)
    with ctx.engine.connect() as conn:
        ids = {
            (arm, name.lower()): dep_id
            for dep_id, arm, name in conn.execute(
                select(Deployment.id, Resource.arm_id, Deployment.name).join(
                    Resource, Resource.id == Deployment.resource_id
                )
            )
        }
        stored = conn.execute(
            select(LatencyRollup).where(LatencyRollup.bucket >= a, LatencyRollup.bucket < b)
        ).all()
    durations: dict[int, list[float]] = {}
    cells: dict[tuple, int] = {}
    for rec in world.requests(a, b):
        dep_id = ids[(rec.deployment.resource.arm_id.lower(), rec.deployment.name.lower())]
        durations.setdefault(dep_id, []).append(float(rec.duration_ms))
        key = (dep_id, rollups.floor_minute(rec.time), rollups.status_class(rec.status))
        cells[key] = cells.get(key, 0) + 1
    assert {(r.deployment_id, r.bucket, r.status_class): r.count for r in stored} == cells
    checked = 0
    for dep_id, values in durations.items():
        merged = rollups.merge(r.histogram for r in stored if r.deployment_id == dep_id)
        got = rollups.percentiles(merged, (50, 95, 99))
        ordered = sorted(values)
        for p in (50, 95, 99):
            exact = ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]
            assert abs(got[p] - exact) <= 0.01 * exact, (dep_id, p, got[p], exact)
        checked += 1
    assert checked >= 5


# ------------------------------------------------------------------------------ escaping


@pytest.mark.parametrize("value", HOSTILE)
def test_escaped_literal_round_trips_in_the_kql_parser(value: str) -> None:
    literal = kql.escape_string_literal(value)
    assert literal.startswith("'") and literal.endswith("'")
    assert all(ord(ch) >= 0x20 and ch not in "\u2028\u2029" for ch in literal)
    query = f"AzureDiagnostics | where CorrelationId == {literal} | count"
    parsed = emulator_kql.parse(query)
    assert len(parsed.ops) == 2  # the literal did not end early and smuggle in an operator
    assert parsed.ops[0].predicate.right.value == value


@pytest.mark.parametrize("value", HOSTILE)
def test_escaped_literal_matches_exactly_when_executed(value: str) -> None:
    columns = [emulator_kql.Column("s", "string")]
    data = [{"s": value}, {"s": value + "x"}, {"s": "other"}]
    query = f"T | where s == {kql.escape_string_literal(value)}"
    result = emulator_kql.execute(
        emulator_kql.parse(query),
        {"T": emulator_kql.Table(columns, lambda: iter(data))},
        now=datetime.now(UTC),
    )
    assert [list(row) for row in result.rows] == [[value]]


def test_escaped_literals_over_the_wire(collector_ctx: Any, emulator: Any) -> None:
    """A hostile literal reaches Log Analytics intact: no 400, no match, the real id matches."""
    ctx = collector_ctx
    client = ctx.clients().logs()
    customer_id = emulator.world.workspaces[0].customer_id
    end = ctx.clock()
    start = end - timedelta(minutes=30)
    real = next(
        rec.correlation_id
        for rec in emulator.world.requests(start, end - MAX_DURATION)
        if rec.deployment.resource.workspace.customer_id == customer_id
    )
    for value in [*HOSTILE, real]:
        query = (
            "AzureDiagnostics | where TimeGenerated >= "
            f"{kql.datetime_literal(start)} | where CorrelationId == "
            f"{kql.escape_string_literal(value)} | count"
        )
        result = client.query_workspace(customer_id, query, timespan=(start, end))
        assert isinstance(result, LogsQueryResult), value
        assert list(result.tables[0].rows[0]) == [1 if value == real else 0], value


def test_datetime_literal() -> None:
    t = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert kql.datetime_literal(t) == "datetime(2026-01-02T03:04:05.1234560Z)"
    with pytest.raises(ValueError):
        kql.datetime_literal(datetime(2026, 1, 1))
    assert emulator_kql.parse(f"T | where x < {kql.datetime_literal(t)}")


def test_query_templates_parse() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(hours=5, microseconds=7)
    q = kql.request_logs_query(start, end)
    parsed = emulator_kql.parse(q)
    assert [op.kind for op in parsed.ops] == ["where", "where", "project", "order"]
    assert "RequestResponse" in q and "MICROSOFT.COGNITIVESERVICES" in q
    for col in kql.REQUEST_LOG_COLUMNS:
        assert col in q
    counts = emulator_kql.parse(kql.request_counts_query(start, end, timedelta(hours=1)))
    assert counts.ops[-1].kind == "summarize"


# ------------------------------------------------------------------------------ row parsing

ARM = "/subscriptions/s/resourcegroups/rg/providers/microsoft.cognitiveservices/accounts/a"
LOOKUP = logs.Lookup(resources={ARM: 1}, deployments={(1, "claude-opus-4-5"): 10})
COLUMNS = list(kql.REQUEST_LOG_COLUMNS)
T = datetime(2026, 3, 1, 12, 0, 5, 250000, tzinfo=UTC)
START = datetime(2026, 3, 1, 12, 0, 3, 1000, tzinfo=UTC)


def _ticks(t: datetime) -> int:
    return (
        621_355_968_000_000_000
        + (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 10
    )


def _row(**over: Any) -> list[Any]:
    props = {
        "apiName": "Anthropic Messages",
        "requestTime": _ticks(START),
        "responseTime": _ticks(T),
        "streamType": "Streaming",
        "modelDeploymentName": "Claude-Opus-4-5",
        "modelName": "claude-opus-4-5",
        "modelVersion": "20251101",
    }
    props.update(over.pop("props", {}))
    base = {
        "TimeGenerated": T,
        "_ResourceId": ARM.upper(),
        "OperationName": "Messages_Create",
        "DurationMs": 2249,
        "ResultSignature": "200",
        "CorrelationId": "6f1c4b7e-0000-4000-8000-000000000001",
        "CallerIPAddress": "203.0.113.***",
        "properties_s": props,
    }
    base.update(over)
    return [base[c] for c in COLUMNS]


def _parse(*rows: list[Any]) -> tuple[list[dict], logs.Tally]:
    tally = logs.Tally()
    return logs.parse_table(SimpleNamespace(columns=COLUMNS, rows=rows), LOOKUP, tally), tally


def test_parse_row_fields() -> None:
    import json

    (as_object,), _ = _parse(_row())
    (as_text,), _ = _parse(_row(properties_s=json.dumps(_row()[COLUMNS.index("properties_s")])))
    assert as_object == as_text
    assert as_object == {
        "correlation_id": "6f1c4b7e-0000-4000-8000-000000000001",
        "time": START,
        "resource_id": 1,
        "deployment_id": 10,
        "deployment_name": "Claude-Opus-4-5",
        "model_name": "claude-opus-4-5",
        "operation_name": "Messages_Create",
        "status_code": 200,
        "duration_ms": 2249.0,
        "stream": True,
        "caller_ip": "203.0.113.***",
        "source": "logs",
    }


def test_parse_row_tolerates_strings_and_missing_keys() -> None:
    (row,), tally = _parse(
        _row(
            DurationMs="1500",
            TimeGenerated="2026-03-01T12:00:05.2500000Z",
            props={"requestTime": None, "streamType": "Non-Streaming"},
        )
    )
    assert row["duration_ms"] == 1500.0 and row["stream"] is False
    assert row["time"] == T - timedelta(milliseconds=1500)  # no requestTime: end - duration
    (bare,), tally = _parse(_row(properties_s=None, DurationMs=None))
    assert bare["deployment_id"] is None and bare["deployment_name"] == ""
    assert bare["duration_ms"] is None and bare["time"] == T and bare["stream"] is None
    assert not tally.unknown  # unknown deployments are linked (or counted) when written


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"CorrelationId": ""}, "CorrelationId missing"),
        ({"CorrelationId": "x" * 65}, "CorrelationId too long"),
        ({"TimeGenerated": None}, "TimeGenerated missing"),
        ({"TimeGenerated": "yesterday"}, "not a time"),
        ({"ResultSignature": "OK"}, "not an HTTP status"),
        ({"DurationMs": "fast"}, "not a number"),
        ({"DurationMs": -4}, "not a duration"),
        ({"properties_s": "{not json"}, "not JSON"),
        ({"properties_s": "[1, 2]"}, "not a JSON object"),
    ],
)
def test_malformed_rows_are_counted_not_fatal(override: dict, reason: str) -> None:
    rows, tally = _parse(_row(**override), _row(CorrelationId="good"))
    assert [r["correlation_id"] for r in rows] == ["good"]
    assert tally.malformed == 1
    assert reason in next(iter(tally.malformed_reasons))
    assert "1 malformed row(s) skipped" in tally.error_line()


def test_foreign_rows_are_skipped_and_unknown_claude_rows_kept() -> None:
    rows, tally = _parse(
        _row(_ResourceId="/subscriptions/s/other", CorrelationId="foreign-resource"),
        _row(props={"modelDeploymentName": "gpt-4o", "modelName": "gpt-4o"}, CorrelationId="g"),
        _row(props={"modelDeploymentName": "new-claude"}, CorrelationId="new"),
    )
    assert [r["correlation_id"] for r in rows] == ["new"]
    assert rows[0]["deployment_id"] is None and rows[0]["deployment_name"] == "new-claude"
    assert tally.foreign == 2 and not tally.unknown  # linked when written (link_unlisted)


def test_missing_columns_is_a_malformed_payload() -> None:
    with pytest.raises(logs.MalformedPayload):
        logs.parse_table(
            SimpleNamespace(columns=["TimeGenerated"], rows=[[T]]), LOOKUP, logs.Tally()
        )


def test_ticks() -> None:
    assert logs.ticks_to_datetime(_ticks(START)) == START
    assert logs.ticks_to_datetime(str(_ticks(START))) == START
    assert logs.ticks_to_datetime(None) is None
    assert logs.ticks_to_datetime("soon") is None
    assert logs.ticks_to_datetime(5) is None  # year 1: not plausible


# ------------------------------------------------------------------------------ slicing


def test_pack_slices_covers_the_window_within_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "TARGET_ROWS", 100)
    start = datetime(2026, 3, 1, 10, 17, tzinfo=UTC)
    end = datetime(2026, 3, 1, 20, 5, tzinfo=UTC)
    counts = [
        (datetime(2026, 3, 1, 10, tzinfo=UTC), 30),
        (datetime(2026, 3, 1, 11, tzinfo=UTC), 50),
        (datetime(2026, 3, 1, 12, tzinfo=UTC), 40),
        (datetime(2026, 3, 1, 14, tzinfo=UTC), 350),
        (datetime(2026, 3, 1, 20, tzinfo=UTC), 7),
    ]
    slices = logs.pack_slices(start, end, counts)
    assert slices[0].start == start and slices[-1].end == end
    assert all(x.end == y.start for x, y in itertools.pairwise(slices))
    assert all(s.expected is not None and s.expected <= 100 for s in slices)
    assert sum(s.expected for s in slices) in range(477 - 4, 478)  # busy hour split 4 ways
    assert len([s for s in slices if s.start.hour == 14]) == 4


def test_read_answer_detects_truncation(monkeypatch: pytest.MonkeyPatch) -> None:
    table = LogsTable(name="PrimaryResult", columns=["a"], columns_types=["long"], rows=[[1], [2]])
    assert not logs.read_answer(LogsQueryResult(tables=[table])).truncated
    monkeypatch.setattr(logs, "ROW_LIMIT", 2)
    assert logs.read_answer(LogsQueryResult(tables=[table])).truncated
    monkeypatch.setattr(logs, "ROW_LIMIT", 500_000)
    error = LogsQueryError(
        code="PartialError",
        message="There were some errors when processing your query.",
        details=[{"code": "EngineError", "innererror": {"code": "E_QUERY_RESULT_SET_TOO_LARGE"}}],
    )
    answer = logs.read_answer(LogsQueryPartialResult(partial_data=[table], partial_error=error))
    assert answer.truncated and answer.partial
    other = LogsQueryError(code="PartialError", message="low memory", details=None)
    answer = logs.read_answer(LogsQueryPartialResult(partial_data=None, partial_error=other))
    assert not answer.truncated and answer.partial and answer.table is None


# ------------------------------------------------------------------------------ store rules


class _FakeLogs:
    """A LogsQueryClient answering every query with fixed rows (for store-side rules)."""

    def __init__(self, rows: list[list[Any]]) -> None:
        self.rows = rows
        self.calls = 0

    def query_workspace(self, workspace_id: str, query: str, **_: Any) -> LogsQueryResult:
        self.calls += 1
        types = ["datetime", "string", "string", "long", "string", "string", "string", "string"]
        return LogsQueryResult(
            tables=[
                LogsTable(
                    name="PrimaryResult", columns=COLUMNS, columns_types=types, rows=self.rows
                )
            ]
        )


def _known(ctx: Any) -> tuple[str, str, int]:
    with ctx.engine.connect() as conn:
        arm, name, dep_id = conn.execute(
            select(Resource.arm_id, Deployment.name, Deployment.id)
            .join(Resource, Resource.id == Deployment.resource_id)
            .where(Resource.workspace_customer_id != "")
            .order_by(Deployment.id)
        ).first()
    return arm, name, dep_id


def test_malformed_and_unknown_rows_make_a_partial_run_that_advances(
    collector_ctx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = collector_ctx
    arm, name, dep_id = _known(ctx)
    now = ctx.clock()
    good = _row(_ResourceId=arm, CorrelationId="good-1", props={"modelDeploymentName": name})
    good[COLUMNS.index("TimeGenerated")] = now - timedelta(minutes=1)
    good[COLUMNS.index("properties_s")]["requestTime"] = _ticks(now - timedelta(minutes=2))
    bad = list(good)
    bad[COLUMNS.index("CorrelationId")] = None
    unknown = _row(_ResourceId=arm, CorrelationId="u-1", props={"modelDeploymentName": "brand-new"})
    fake = _FakeLogs([good, bad, unknown])
    monkeypatch.setattr(azure_mod.AzureClients, "logs", lambda self: fake)
    outcomes = logs.backfill(ctx, now - timedelta(minutes=30))
    assert outcomes and all(o.status == "partial" for o in outcomes), outcomes
    line = outcomes[0].error
    assert "1 malformed row(s) skipped (CorrelationId missing)" in line
    assert "discovery does not know" not in line  # ARM-unlisted deployments get their own row
    marks = _watermarks(ctx)
    assert all(t >= now for t in marks.values())  # complete data: the watermark advances
    with ctx.engine.connect() as conn:
        stored = {r.correlation_id: r for r in conn.execute(select(Request)).all()}
        rolled = conn.execute(select(LatencyRollup)).all()
        unlisted = conn.execute(select(Deployment).where(Deployment.name == "brand-new")).one()
    assert stored["good-1"].deployment_id == dep_id
    assert stored["u-1"].deployment_id == unlisted.id and unlisted.deleted_at is not None
    assert sorted((r.deployment_id, r.count) for r in rolled) == sorted(
        [(dep_id, 1), (unlisted.id, 1)]
    )


def test_client_capture_fields_survive_and_orphans_are_adopted(
    collector_ctx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = collector_ctx
    arm, name, dep_id = _known(ctx)
    now = ctx.clock()
    with ctx.engine.connect() as conn:
        resource_id = conn.execute(select(Resource.id).where(Resource.arm_id == arm)).scalar_one()
    captured = {
        "correlation_id": "cap-1",
        "request_id": "req_0123456789",
        "time": now - timedelta(minutes=3, seconds=1),
        "resource_id": resource_id,
        "deployment_id": dep_id,
        "deployment_name": name,
        "status_code": 200,
        "input_tokens": 1200,
        "output_tokens": 345,
        "ttft_ms": 410.0,
        "source": "capture",
    }
    orphan = {
        "correlation_id": "orphan-1",
        "time": now - timedelta(hours=2),
        "resource_id": resource_id,
        "deployment_id": None,
        "deployment_name": name.upper(),  # names compare case-insensitively
        "status_code": 200,
        "duration_ms": 900.0,
        "source": "logs",
    }
    with ctx.engine.begin() as conn:
        conn.execute(insert(Request), [captured])
        conn.execute(insert(Request), [orphan])
    row = _row(_ResourceId=arm, CorrelationId="cap-1", props={"modelDeploymentName": name})
    row[COLUMNS.index("TimeGenerated")] = now - timedelta(minutes=1)
    row[COLUMNS.index("properties_s")]["requestTime"] = _ticks(now - timedelta(minutes=3))
    monkeypatch.setattr(azure_mod.AzureClients, "logs", lambda self: _FakeLogs([row]))
    outcomes = logs.backfill(ctx, now - timedelta(minutes=30))
    assert all(o.status == "ok" for o in outcomes), outcomes
    with ctx.engine.connect() as conn:
        stored = {r.correlation_id: r for r in conn.execute(select(Request)).all()}
        rolled = conn.execute(
            select(LatencyRollup.bucket).where(LatencyRollup.deployment_id == dep_id)
        ).all()
    cap = stored["cap-1"]
    assert (cap.request_id, cap.input_tokens, cap.output_tokens, cap.ttft_ms) == (
        "req_0123456789",
        1200,
        345,
        410.0,
    )
    assert cap.source == "both" and cap.duration_ms == 2249.0
    assert cap.time == now - timedelta(minutes=3)  # the server's request time wins
    assert stored["orphan-1"].deployment_id == dep_id
    assert rollups.floor_minute(orphan["time"]) in {r.bucket for r in rolled}
