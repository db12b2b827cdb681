"""Log Analytics endpoint: table building and wire format (unit) and the real LogsQueryClient
against the running emulator (integration)."""

from __future__ import annotations

import json
import os
import ssl
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from emulator import kql, logs
from emulator.world import World, floor_minute

PINNED = datetime(2025, 6, 2, 15, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=7, days=3, requests_per_day=400, clock=PINNED)


def _truth(world: World, resources: list[Any], start: datetime, end: datetime) -> list[Any]:
    """Ground truth: requests whose log row (arrival + duration) falls in [start, end)."""
    out = []
    for rec in world.requests(start - timedelta(minutes=15), end, resources=resources):
        t = rec.time + timedelta(milliseconds=rec.duration_ms)
        if start <= t < end and t <= world.now():
            out.append(rec)
    return out


def _run(world: World, query: str, resources: list[Any], window: Any, **kw: Any) -> dict:
    opts = kw.pop("opts", logs.LogsOptions())
    run = logs._run_query(
        world,
        opts,
        query,
        resources,
        window,
        partial_fault=kw.pop("partial_fault", False),
        statistics=kw.pop("statistics", False),
    )
    return json.loads(run.body)


# ----------------------------------------------------------------------------- unit


def test_diagnostics_row_shape(world: World) -> None:
    rec = next(world.requests(PINNED - timedelta(hours=2), PINNED))
    row = logs.diagnostics_row(rec)
    assert [c.name for c in logs.COLUMNS] == list(row)
    res = rec.deployment.resource
    end = rec.time + timedelta(milliseconds=rec.duration_ms)
    assert row["TimeGenerated"] == end
    assert row["Category"] == "RequestResponse"
    assert row["ResultSignature"] == str(rec.status)
    assert row["CorrelationId"] == rec.correlation_id
    assert row["CallerIPAddress"].endswith(".***")
    assert row["Resource"] == res.name.upper()
    assert row["ResourceGroup"] == res.resource_group.upper()
    assert row["ResourceProvider"] == "MICROSOFT.COGNITIVESERVICES"
    assert row["ResourceType"] == "ACCOUNTS"
    assert row["_ResourceId"] == res.arm_id.lower()
    assert row["ResourceId"] == res.arm_id.upper()
    assert row["TenantId"] == res.workspace.customer_id
    assert row["Type"] == "AzureDiagnostics"
    props = json.loads(row["properties_s"])
    assert props["modelDeploymentName"] == rec.deployment.name
    assert props["modelName"] == rec.deployment.model_name
    assert props["modelVersion"] == rec.deployment.model_version
    assert props["streamType"] == ("Streaming" if rec.stream else "Non-Streaming")
    assert props["objectId"] == ""
    # .NET ticks: 100 ns since 0001-01-01
    ticks_to_dt = datetime(1, 1, 1, tzinfo=UTC) + timedelta(microseconds=props["requestTime"] // 10)
    assert ticks_to_dt == rec.time
    assert (props["responseTime"] - props["requestTime"]) // 10_000 == rec.duration_ms
    assert (props["requestLength"], props["responseLength"]) == (
        rec.request_length,
        rec.response_length,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("PT3600.0S", (PINNED - timedelta(hours=1), PINNED)),
        ("P1D", (PINNED - timedelta(days=1), PINNED)),
        ("PT1H30M", (PINNED - timedelta(minutes=90), PINNED)),
        (
            "2025-06-01T00:00:00.000Z/2025-06-01T01:00:00.000Z",
            (datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 6, 1, 1, tzinfo=UTC)),
        ),
        (
            "2025-06-01T00:00:00Z/PT7200.0S",
            (datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 6, 1, 2, tzinfo=UTC)),
        ),
        (
            "PT1H/2025-06-01T01:00:00+00:00",
            (datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 6, 1, 1, tzinfo=UTC)),
        ),
    ],
)
def test_parse_timespan(value: Any, expected: Any) -> None:
    assert logs.parse_timespan(value, PINNED) == expected


@pytest.mark.parametrize("value", ["yesterday", "P", "PT", "1h", "a/b", "x/y/z", 5])
def test_parse_timespan_rejects(value: Any) -> None:
    with pytest.raises(logs._ApiError) as err:
        logs.parse_timespan(value, PINNED)
    assert err.value.status == 400


def test_run_query_counts_match_ground_truth(world: World) -> None:
    res = world.resources[0]
    start, end = PINNED - timedelta(hours=3), PINNED - timedelta(hours=2)
    truth = _truth(world, [res], start, end)
    assert truth, "the window should hold traffic"
    body = _run(world, "AzureDiagnostics | count", [res], (start, end))
    assert body["tables"][0]["columns"] == [{"name": "Count", "type": "long"}]
    assert body["tables"][0]["rows"] == [[len(truth)]]
    assert "error" not in body


def test_run_query_rows_are_typed_on_the_wire(world: World) -> None:
    res = world.resources[1]
    start, end = PINNED - timedelta(hours=1), PINNED
    rec = _truth(world, [res], start, end)[0]
    q = f"AzureDiagnostics | where CorrelationId == {kql.quote(rec.correlation_id)}"
    table = _run(world, q, [res], (start, end))["tables"][0]
    assert table["name"] == "PrimaryResult"
    types = {c["name"]: c["type"] for c in table["columns"]}
    assert types["TimeGenerated"] == "datetime"
    assert types["DurationMs"] == "long"
    assert types["properties_s"] == "string"
    (row,) = table["rows"]
    cells = dict(zip(types, row, strict=True))
    end_t = rec.time + timedelta(milliseconds=rec.duration_ms)
    assert cells["TimeGenerated"] == kql.format_datetime(end_t)
    assert cells["TimeGenerated"].endswith("Z")
    assert cells["DurationMs"] == rec.duration_ms
    assert cells["ResultSignature"] == str(rec.status)


def test_no_timespan_means_whole_retention_and_nothing_after_now(world: World) -> None:
    res = world.resources[2]
    body = _run(
        world, "AzureDiagnostics | summarize max(TimeGenerated), min(TimeGenerated)", [res], None
    )
    (newest, oldest) = body["tables"][0]["rows"][0]
    assert kql.parse_datetime(newest) <= PINNED
    assert kql.parse_datetime(oldest) >= world.start


def test_row_limit_gives_partial_error(world: World) -> None:
    res = world.resources[0]
    window = (PINNED - timedelta(hours=6), PINNED)
    body = _run(
        world,
        "AzureDiagnostics | project CorrelationId",
        [res],
        window,
        opts=logs.LogsOptions(row_limit=7),
    )
    assert len(body["tables"][0]["rows"]) == 7
    err = body["error"]
    assert err["code"] == "PartialError"
    assert err["message"] == "There were some errors when processing your query."
    detail = err["details"][0]
    assert detail["code"] == "EngineError"
    assert "internal record count limit 7" in detail["innererror"]["message"]


def test_size_limit_gives_partial_error(world: World) -> None:
    res = world.resources[0]
    window = (PINNED - timedelta(hours=6), PINNED)
    body = _run(world, "AzureDiagnostics", [res], window, opts=logs.LogsOptions(max_bytes=5000))
    assert 0 < len(body["tables"][0]["rows"]) < 10
    assert "internal data size limit 5000" in body["error"]["details"][0]["innererror"]["message"]


def test_partial_fault_keeps_half_and_statistics(world: World) -> None:
    res = world.resources[0]
    window = (PINNED - timedelta(hours=2), PINNED)
    full = _run(world, "AzureDiagnostics | project CorrelationId", [res], window)
    part = _run(
        world,
        "AzureDiagnostics | project CorrelationId",
        [res],
        window,
        partial_fault=True,
        statistics=True,
    )
    n = len(full["tables"][0]["rows"])
    assert len(part["tables"][0]["rows"]) == n // 2
    assert part["error"]["code"] == "PartialError"
    assert part["statistics"]["query"]["datasetStatistics"][0]["tableRowCount"] == n // 2


def test_kql_error_body_shapes() -> None:
    with pytest.raises(kql.KqlError) as err:
        kql.parse("completely invalid syntax")
    body = logs.kql_error_body(err.value)["error"]
    assert body["code"] == "BadArgumentError"
    assert body["message"] == "The request had some invalid properties"
    assert body["correlationId"]
    inner = body["innererror"]
    assert (inner["code"], inner["message"]) == (
        "SyntaxError",
        "A recognition error occurred in the query.",
    )
    assert inner["innererror"] == {
        "code": "SYN0002",
        "message": "Query could not be parsed at 'invalid' on line [1,11]",
        "line": 1,
        "pos": 11,
        "token": "invalid",
    }
    sem = kql.KqlError(
        "'where' operator: Failed to resolve scalar expression named 'X'", kind="SemanticError"
    )
    inner = logs.kql_error_body(sem)["error"]["innererror"]
    assert inner["code"] == "SemanticError"
    assert inner["innererror"]["code"] == "SEM0100"


# ----------------------------------------------------------------------------- integration
# The real azure-monitor-query LogsQueryClient against the running emulator (fixture `emulator`
# from conftest.py: started server, env applied; `faults` clears fault rules afterwards).


def _client(credential: Any, **kwargs: Any) -> Any:
    from azure.monitor.query import LogsQueryClient

    audience = kwargs.pop("audience", os.environ["FOUNDRY_WATCH_LOGS_AUDIENCE"])
    return LogsQueryClient(
        credential,
        endpoint=os.environ["FOUNDRY_WATCH_LOGS_ENDPOINT"],
        audience=audience,
        **kwargs,
    )


@pytest.fixture(scope="module")
def client(emulator: Any, credential: Any) -> Any:
    c = _client(credential)
    yield c
    c.close()


@pytest.fixture(scope="module")
def no_retry_client(emulator: Any, credential: Any) -> Any:
    c = _client(credential, retry_total=0)
    yield c
    c.close()


@pytest.fixture
def window(emulator: Any) -> tuple[datetime, datetime]:
    """A closed hour in the past: its rows cannot change while the test runs."""
    end = floor_minute(emulator.world.now()) - timedelta(hours=2)
    return end - timedelta(hours=1), end


def _rows(result: Any) -> list[Any]:
    from azure.monitor.query import LogsQueryStatus

    assert result.status == LogsQueryStatus.SUCCESS, getattr(result, "partial_error", None)
    (table,) = result.tables
    return list(table.rows)


def test_query_workspace_matches_ground_truth(emulator: Any, client: Any, window: Any) -> None:
    world = emulator.world
    ws = world.workspaces[0]
    resources = [r for r in world.resources if r.workspace == ws]
    truth = _truth(world, resources, *window)
    assert truth
    result = client.query_workspace(
        ws.customer_id,
        "AzureDiagnostics | where Category == 'RequestResponse'"
        " | project CorrelationId, TimeGenerated, DurationMs, ResultSignature, _ResourceId",
        timespan=window,
    )
    rows = _rows(result)
    assert result.tables[0].columns_types == ["string", "datetime", "long", "string", "string"]
    assert sorted(r["CorrelationId"] for r in rows) == sorted(t.correlation_id for t in truth)
    assert {r["_ResourceId"] for r in rows} <= {r.arm_id.lower() for r in resources}

    # one specific request, looked up by its apim-request-id as the collector does
    rec = truth[len(truth) // 2]
    result = client.query_workspace(
        ws.customer_id,
        f"AzureDiagnostics | where CorrelationId == {kql.quote(rec.correlation_id)}"
        " | extend p = parse_json(properties_s)"
        " | project TimeGenerated, DurationMs, ResultSignature,"
        " dep = tostring(p.modelDeploymentName), stream = tostring(p.streamType)",
        timespan=window,
    )
    (row,) = _rows(result)
    assert row["TimeGenerated"] == rec.time + timedelta(milliseconds=rec.duration_ms)
    assert row["TimeGenerated"].tzinfo is not None
    assert row["DurationMs"] == rec.duration_ms
    assert row["ResultSignature"] == str(rec.status)
    assert row["dep"] == rec.deployment.name
    assert row["stream"] == ("Streaming" if rec.stream else "Non-Streaming")


def test_query_resource_and_summarize_by_bin(emulator: Any, client: Any, window: Any) -> None:
    world = emulator.world
    res = world.resources[1]
    truth = _truth(world, [res], *window)
    result = client.query_resource(
        res.arm_id,
        "AzureDiagnostics | summarize n = count() by ResultSignature",
        timespan=window,
    )
    got = {r["ResultSignature"]: r["n"] for r in _rows(result)}
    assert got == dict(Counter(str(t.status) for t in truth))

    result = client.query_resource(
        res.arm_id,
        "AzureDiagnostics | summarize count() by bin(TimeGenerated, 1m)"
        " | order by TimeGenerated asc",
        timespan=window,
    )
    rows = _rows(result)
    assert result.tables[0].columns == ["TimeGenerated", "count_"]
    expected = Counter(floor_minute(t.time + timedelta(milliseconds=t.duration_ms)) for t in truth)
    assert {r["TimeGenerated"]: r["count_"] for r in rows} == dict(expected)
    assert [r["TimeGenerated"] for r in rows] == sorted(expected)


def test_resource_centric_sees_only_that_resource(emulator: Any, client: Any, window: Any) -> None:
    world = emulator.world
    res = world.resources[0]
    result = client.query_resource(
        res.arm_id.upper(),  # Azure resource ids are case-insensitive
        "AzureDiagnostics | summarize by _ResourceId",
        timespan=window,
    )
    assert [r["_ResourceId"] for r in _rows(result)] == [res.arm_id.lower()]


def test_partial_fault_gives_partial_result(
    emulator: Any, client: Any, faults: Any, window: Any
) -> None:
    from azure.monitor.query import LogsQueryPartialResult, LogsQueryStatus

    world = emulator.world
    res = world.resources[0]
    n = len(_truth(world, [res], *window))
    emulator.faults.add(kind="partial", endpoint="logs")
    result = client.query_resource(
        res.arm_id, "AzureDiagnostics | project CorrelationId", timespan=window
    )
    assert isinstance(result, LogsQueryPartialResult)
    assert result.status == LogsQueryStatus.PARTIAL
    assert len(result.partial_data[0].rows) == n // 2
    assert result.partial_error.code == "PartialError"
    assert result.partial_error.details[0]["code"] == "EngineError"


def test_row_limit_truncates_with_partial_error(emulator: Any, client: Any, window: Any) -> None:
    from azure.monitor.query import LogsQueryPartialResult

    opts = logs.options(emulator.state)
    saved = opts.row_limit
    opts.row_limit = 3
    try:
        result = client.query_workspace(
            emulator.world.workspaces[0].customer_id,
            "AzureDiagnostics | project CorrelationId",
            timespan=window,
        )
    finally:
        opts.row_limit = saved
    assert isinstance(result, LogsQueryPartialResult)
    assert len(result.partial_data[0].rows) == 3
    (detail,) = result.partial_error.details
    assert "record count limit 3" in detail["innererror"]["message"]


def test_bad_query_is_a_400_bad_argument(emulator: Any, client: Any) -> None:
    from azure.core.exceptions import HttpResponseError

    ws = emulator.world.workspaces[0].customer_id
    with pytest.raises(HttpResponseError) as err:
        client.query_workspace(ws, "AzureDiagnostics | where", timespan=timedelta(hours=1))
    assert err.value.status_code == 400
    assert err.value.error.code == "BadArgumentError"
    assert err.value.model.code == "BadArgumentError"
    assert err.value.model.message.startswith("Query could not be parsed at '<EOF>'")

    with pytest.raises(HttpResponseError) as err:
        client.query_workspace(
            ws, "AzureDiagnostics | where ResultSignature == 429", timespan=timedelta(hours=1)
        )
    assert err.value.status_code == 400
    body = err.value.response.json()["error"]
    assert body["innererror"]["code"] == "SemanticError"
    assert "Cannot compare values of types string and long" in err.value.model.message


def test_wrong_audience_token_is_401(emulator: Any, credential: Any) -> None:
    # LogsQueryClient re-raises every failure as a plain HttpResponseError (process_error in
    # azure/monitor/query/_helpers.py), so ClientAuthenticationError never reaches the caller.
    from azure.core.exceptions import HttpResponseError

    c = _client(credential, audience=os.environ["FOUNDRY_WATCH_ARM_AUDIENCE"], retry_total=0)
    try:
        with pytest.raises(HttpResponseError) as err:
            c.query_workspace(
                emulator.world.workspaces[0].customer_id,
                "AzureDiagnostics | take 1",
                timespan=timedelta(hours=1),
            )
    finally:
        c.close()
    assert err.value.status_code == 401
    assert err.value.error.code == "InvalidTokenError"


def test_unknown_workspace_and_resource(emulator: Any, client: Any) -> None:
    from azure.core.exceptions import HttpResponseError

    with pytest.raises(HttpResponseError) as err:
        client.query_workspace(
            "00000000-0000-4000-8000-000000000000",
            "AzureDiagnostics | take 1",
            timespan=timedelta(hours=1),
        )
    assert err.value.status_code == 404
    assert err.value.error.code == "PathNotFoundError"
    sub = emulator.world.subscriptions[0]
    with pytest.raises(HttpResponseError) as err:
        client.query_resource(
            f"/subscriptions/{sub}/resourceGroups/nope/providers/"
            "Microsoft.CognitiveServices/accounts/nope",
            "AzureDiagnostics | take 1",
            timespan=timedelta(hours=1),
        )
    assert err.value.status_code == 403
    assert err.value.error.code == "InsufficientAccessError"


def test_throttle_once_is_retried_by_the_sdk(
    emulator: Any, client: Any, faults: Any, window: Any
) -> None:
    emulator.faults.add(kind="throttle", endpoint="logs", retry_after_s=0)
    result = client.query_workspace(
        emulator.world.workspaces[1].customer_id, "AzureDiagnostics | count", timespan=window
    )
    assert _rows(result)[0]["Count"] >= 0
    assert not [r for r in emulator.faults.rules() if r.endpoint == "logs"]


def test_throttle_error_and_malformed_faults_surface(
    emulator: Any, no_retry_client: Any, faults: Any
) -> None:
    from azure.core.exceptions import HttpResponseError

    ws = emulator.world.workspaces[0].customer_id
    emulator.faults.add(kind="throttle", endpoint="logs", retry_after_s=7)
    with pytest.raises(HttpResponseError) as err:
        no_retry_client.query_workspace(ws, "AzureDiagnostics | count", timespan=timedelta(hours=1))
    assert err.value.status_code == 429
    assert err.value.response.headers["Retry-After"] == "7"

    emulator.faults.add(kind="error", endpoint="logs", status=503)
    with pytest.raises(HttpResponseError) as err:
        no_retry_client.query_workspace(ws, "AzureDiagnostics | count", timespan=timedelta(hours=1))
    assert err.value.status_code == 503

    # invalid JSON: azure-core's DecodeError, re-raised by the SDK as HttpResponseError
    emulator.faults.add(kind="malformed", endpoint="logs")
    with pytest.raises(HttpResponseError, match="JSON is invalid"):
        no_retry_client.query_workspace(ws, "AzureDiagnostics | count", timespan=timedelta(hours=1))


def test_statistics_and_get_form(emulator: Any, client: Any, credential: Any, window: Any) -> None:
    import httpx

    ws = emulator.world.workspaces[0].customer_id
    result = client.query_workspace(
        ws, "AzureDiagnostics | count", timespan=window, include_statistics=True
    )
    assert "query" in result.statistics

    token = credential.get_token(os.environ["FOUNDRY_WATCH_LOGS_AUDIENCE"] + "/.default").token
    start, end = window
    resp = httpx.get(
        f"{os.environ['FOUNDRY_WATCH_LOGS_ENDPOINT']}/v1/workspaces/{ws}/query",
        params={
            "query": "AzureDiagnostics | count",
            "timespan": f"{start.isoformat()}/{end.isoformat()}",
        },
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=emulator.ca_file),
    )
    assert resp.status_code == 200
    (count,) = resp.json()["tables"][0]["rows"][0]
    assert (
        count
        == _rows(client.query_workspace(ws, "AzureDiagnostics | count", timespan=window))[0][
            "Count"
        ]
    )


def test_truncated_expired_token_and_slow_faults(
    emulator: Any, no_retry_client: Any, faults: Any
) -> None:
    import time

    from azure.core.exceptions import AzureError, HttpResponseError

    ws = emulator.world.workspaces[0].customer_id
    emulator.faults.add(kind="truncated", endpoint="logs")
    with pytest.raises(AzureError):
        no_retry_client.query_workspace(ws, "AzureDiagnostics | count", timespan=timedelta(hours=1))

    emulator.faults.add(kind="expired_token", endpoint="logs")
    with pytest.raises(HttpResponseError) as err:
        no_retry_client.query_workspace(ws, "AzureDiagnostics | count", timespan=timedelta(hours=1))
    assert err.value.status_code == 401

    emulator.faults.add(kind="slow", endpoint="logs", delay_s=0.5)
    t0 = time.monotonic()
    result = no_retry_client.query_workspace(
        ws, "AzureDiagnostics | count", timespan=timedelta(hours=1)
    )
    assert time.monotonic() - t0 >= 0.5
    assert _rows(result)[0]["Count"] >= 0


def test_additional_workspaces_widen_the_scope(emulator: Any, client: Any, window: Any) -> None:
    world = emulator.world
    ws0, ws1 = world.workspaces[0], world.workspaces[1]
    truth = _truth(world, world.resources, *window)
    result = client.query_workspace(
        ws0.customer_id,
        "AzureDiagnostics | count",
        timespan=window,
        additional_workspaces=[ws1.customer_id],
    )
    assert _rows(result)[0]["Count"] == len(truth)
