"""Log Analytics query API (``api.loganalytics.io/v1``) as ``azure-monitor-query`` 2.x calls it.

Wire facts (read in ``azure/monitor/query`` 2.0.0, ``_patch.py`` / ``_operations/_operations.py``
/ ``_helpers.py`` / ``_models.py`` / ``_exceptions.py``):

- The client's base URL is ``{endpoint}/{apiVersion}`` with ``apiVersion="v1"``, so with
  ``endpoint = base + "/logs"`` it calls ``POST /logs/v1/workspaces/{workspaceId}/query`` and
  ``POST /logs/v1/{resourceId}/query`` (the resource id's leading ``/`` collapses into one).
  The SDK never uses GET; the REST spec (``operationalinsights/data-plane/.../2022-10-27``) also
  defines ``GET ...?query=&timespan=`` and we serve it too.
- Body ``{"query", "timespan", "workspaces"}``; ``timespan`` is ``None``, ``"PT{seconds}S"``
  (a float, e.g. ``PT3600.0S``), ``"{start}/{end}"`` or ``"{start}/PT{seconds}S"``.
- ``Prefer``: comma-separated ``wait=N``, ``include-statistics=true``, ``include-render=true``.
- 200 with ``error`` in the body -> ``LogsQueryPartialResult`` (error code ``PartialError``,
  message from the top-level error, ``details`` passed through); non-200 -> a plain
  ``HttpResponseError`` (``process_error`` re-raises even 401/404 and invalid JSON that way:
  callers must look at ``status_code``/``error.code``, not the exception class).
- ``datetime`` cells are parsed with ``Deserializer.deserialize_iso`` (fractions beyond 6 digits
  are cut), so we send Kusto's ``...T12:00:00Z`` / ``...T12:00:00.1234567Z`` strings.

Azure's error bodies (one ``{"error": {...}}`` OneAPI object, with ``correlationId``):
- bad query: 400 ``BadArgumentError`` "The request had some invalid properties" with
  ``innererror`` ``SyntaxError`` ("A recognition error occurred in the query.") ->
  ``SYN0002`` ("Query could not be parsed at 'x' on line [l,p]", ``line``, ``pos``, ``token``)
  -- from an azure-sdk-for-js monitor-query recording; semantic errors: ``SemanticError``
  ("A semantic error occurred.") -> ``SEM0100`` (MicrosoftDocs issue threads).
- unknown workspace: 404 ``PathNotFoundError`` "The requested path does not exist"
  (Azure/azure-sdk-for-python#32798); no access: 403 ``InsufficientAccessError``.
- partial: 200, ``error.code == "PartialError"``, "There were some errors when processing your
  query.", ``details[*]`` ``EngineError`` (Azure/azure-sdk-for-python#25137); row limit 500,000
  and 64 MB per result (Kusto result truncation docs: E_QUERY_RESULT_SET_TOO_LARGE).

The table ``AzureDiagnostics`` is built from the world's requests: one ``RequestResponse`` row per
request, ``TimeGenerated`` = arrival + duration (when the response finished and the log event was
emitted).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from emulator import auth, errors, kql
from emulator import faults as faults_mod

__all__ = [
    "AUDIENCE",
    "COLUMNS",
    "LogsOptions",
    "diagnostics_row",
    "options",
    "parse_timespan",
    "routes",
]

AUDIENCE = "https://api.loganalytics.io"
TABLE = "AzureDiagnostics"

#: The AzureDiagnostics columns the emulator fills (types as Log Analytics reports them;
#: ``DurationMs`` is BigInt -> ``long``). Order is the response column order for ``T | take``.
COLUMNS: list[kql.Column] = [
    kql.Column("TenantId", "string"),
    kql.Column("TimeGenerated", "datetime"),
    kql.Column("ResourceId", "string"),
    kql.Column("Category", "string"),
    kql.Column("ResourceGroup", "string"),
    kql.Column("SubscriptionId", "string"),
    kql.Column("ResourceProvider", "string"),
    kql.Column("Resource", "string"),
    kql.Column("ResourceType", "string"),
    kql.Column("OperationName", "string"),
    kql.Column("ResultType", "string"),
    kql.Column("CorrelationId", "string"),
    kql.Column("ResultSignature", "string"),
    kql.Column("DurationMs", "long"),
    kql.Column("CallerIPAddress", "string"),
    kql.Column("properties_s", "string"),
    kql.Column("Region_s", "string"),
    kql.Column("SourceSystem", "string"),
    kql.Column("Type", "string"),
    kql.Column("_ResourceId", "string"),
]

_TICKS_AT_UNIX_EPOCH = 621_355_968_000_000_000  # .NET ticks (100 ns since 0001-01-01) at 1970
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: How far before a window's start a request may have arrived and still have its log row
#: (TimeGenerated = arrival + duration) inside the window; world durations stay well below.
_MAX_DURATION = timedelta(minutes=10)

_ROW_LIMIT_MSG = (
    "Query result set has exceeded the internal record count limit {n} "
    "(E_QUERY_RESULT_SET_TOO_LARGE; see https://aka.ms/kustoquerylimits)"
)
_SIZE_LIMIT_MSG = (
    "Query result set has exceeded the internal data size limit {n} "
    "(E_QUERY_RESULT_SET_TOO_LARGE; see https://aka.ms/kustoquerylimits)"
)


@dataclass
class LogsOptions:
    """Per-emulator switches for the logs endpoint (tests shrink the limits).

    ``row_limit``/``max_bytes`` are Log Analytics' result truncation limits (500,000 records,
    64 MB); ``ingestion_lag_s`` hides rows generated less than that long ago (Azure's typical
    ingestion latency is minutes; the default 0 keeps ground-truth comparisons simple).
    """

    row_limit: int = 500_000
    max_bytes: int = 64 * 1024 * 1024
    ingestion_lag_s: float = 0.0


_FALLBACK: dict[int, LogsOptions] = {}


def options(state: Any) -> LogsOptions:
    """The logs switches of one emulator state (created on first use, stored on the state)."""
    opts = getattr(state, "_logs_options", None)
    if opts is None:
        opts = _FALLBACK.get(id(state))
    if opts is None:
        opts = LogsOptions()
        limit = getattr(state, "logs_row_limit", None)
        if isinstance(limit, int) and limit > 0:
            opts.row_limit = limit
        try:
            state._logs_options = opts
        except (AttributeError, TypeError):
            _FALLBACK[id(state)] = opts
    return opts


# ---------------------------------------------------------------------------------------------
# The AzureDiagnostics table
# ---------------------------------------------------------------------------------------------


def _ticks(t: datetime) -> int:
    delta = t.astimezone(UTC) - _EPOCH
    return _TICKS_AT_UNIX_EPOCH + (delta // timedelta(microseconds=1)) * 10


def diagnostics_row(rec: Any) -> dict[str, Any]:
    """One ``RequestResponse`` AzureDiagnostics row for a world ``RequestRecord``.

    Field spellings follow the captured Azure OpenAI RequestResponse event (elastic/integrations
    fixture, see azure-facts.md 3c) and the AzureDiagnostics column reference.
    """
    dep = rec.deployment
    res = dep.resource
    end = rec.time + timedelta(milliseconds=rec.duration_ms)
    props = {
        "apiName": rec.api_name,
        "requestTime": _ticks(rec.time),
        "requestLength": rec.request_length,
        "responseTime": _ticks(end),
        "responseLength": rec.response_length,
        "objectId": "",
        "streamType": "Streaming" if rec.stream else "Non-Streaming",
        "modelDeploymentName": dep.name,
        "modelName": dep.model_name,
        "modelVersion": dep.model_version,
    }
    arm_id = res.arm_id
    return {
        "TenantId": res.workspace.customer_id,
        "TimeGenerated": end,
        "ResourceId": arm_id.upper(),
        "Category": "RequestResponse",
        "ResourceGroup": res.resource_group.upper(),
        "SubscriptionId": res.subscription_id,
        "ResourceProvider": "MICROSOFT.COGNITIVESERVICES",
        "Resource": res.name.upper(),
        "ResourceType": "ACCOUNTS",
        "OperationName": rec.operation_name,
        "ResultType": "Succeeded" if rec.status < 400 else "Failed",
        "CorrelationId": rec.correlation_id,
        "ResultSignature": str(rec.status),
        "DurationMs": rec.duration_ms,
        "CallerIPAddress": rec.caller_ip,
        "properties_s": json.dumps(props, separators=(",", ":")),
        "Region_s": res.location,
        "SourceSystem": "Azure",
        "Type": TABLE,
        "_ResourceId": arm_id.lower(),
    }


def _table_rows(
    world: Any, resources: list[Any], start: datetime, end: datetime
) -> Iterator[dict[str, Any]]:
    """Rows whose TimeGenerated lies in ``[start, end)`` (lazy, arrival order)."""
    if not resources or start >= end:
        return
    for rec in world.requests(start - _MAX_DURATION, end, resources=resources):
        row = diagnostics_row(rec)
        if start <= row["TimeGenerated"] < end:
            yield row


# ---------------------------------------------------------------------------------------------
# Request parsing
# ---------------------------------------------------------------------------------------------


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


_DURATION_RE = re.compile(
    r"^P(?:(?P<y>\d+(?:\.\d+)?)Y)?(?:(?P<mo>\d+(?:\.\d+)?)M)?(?:(?P<w>\d+(?:\.\d+)?)W)?"
    r"(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<mi>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)


def _parse_duration(text: str) -> timedelta | None:
    m = _DURATION_RE.match(text.strip())
    if not m or text.strip().upper() in ("P", "PT") or text.strip().upper().endswith("T"):
        return None
    g = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
    return timedelta(
        days=g["y"] * 365 + g["mo"] * 30 + g["w"] * 7 + g["d"],
        hours=g["h"],
        minutes=g["mi"],
        seconds=g["s"],
    )


def _parse_instant(text: str) -> datetime | None:
    return kql.parse_datetime(text)


def parse_timespan(value: Any, now: datetime) -> tuple[datetime, datetime] | None:
    """ISO-8601 ``duration`` | ``start/end`` | ``start/duration`` | ``duration/end`` -> window.

    ``None``/empty means no bound (the whole retention). A bare duration ends now.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise _ApiError(400, "BadArgumentError", f"Invalid timespan: {value!r}")
    parts = value.strip().split("/")
    if len(parts) == 1:
        d = _parse_duration(parts[0])
        if d is None:
            raise _ApiError(400, "BadArgumentError", f"Invalid timespan: '{value}'")
        return now - d, now
    if len(parts) == 2:
        a, b = parts
        start, end = _parse_instant(a), _parse_instant(b)
        da, db = _parse_duration(a), _parse_duration(b)
        if start is not None and end is not None:
            return start, end
        if start is not None and db is not None:
            return start, start + db
        if da is not None and end is not None:
            return end - da, end
    raise _ApiError(400, "BadArgumentError", f"Invalid timespan: '{value}'")


def _parse_prefer(header: str | None) -> dict[str, str]:
    prefs: dict[str, str] = {}
    for part in (header or "").split(","):
        key, _, val = part.strip().partition("=")
        if key:
            prefs[key.strip().lower()] = val.strip()
    return prefs


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------


def _error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    err: dict[str, Any] = {"message": message, "code": code, "correlationId": str(uuid.uuid4())}
    err.update(extra)
    return {"error": err}


def _error_response(exc: _ApiError) -> Response:
    inner = exc.extra.get("innererror") or {}
    return errors.logs_error(
        exc.status,
        exc.code,
        exc.message,
        inner_code=inner.get("code"),
        inner_message=inner.get("message"),
    )


def kql_error_body(exc: kql.KqlError) -> dict[str, Any]:
    """Azure's 400 body for a query Kusto refuses."""
    if exc.kind == "SyntaxError":
        inner = {
            "code": "SyntaxError",
            "message": "A recognition error occurred in the query.",
            "innererror": {
                "code": exc.code,
                "message": exc.message,
                "line": exc.line,
                "pos": exc.pos,
                "token": exc.token,
            },
        }
    else:
        inner = {
            "code": "SemanticError",
            "message": "A semantic error occurred.",
            "innererror": {"code": exc.code, "message": exc.message},
        }
    return _error_body(
        "BadArgumentError", "The request had some invalid properties", innererror=inner
    )


def _partial_error(detail_message: str) -> dict[str, Any]:
    return {
        "message": "There were some errors when processing your query.",
        "code": "PartialError",
        "correlationId": str(uuid.uuid4()),
        "details": [
            {
                "code": "EngineError",
                "message": "Something went wrong processing your query on the server.",
                "innererror": {
                    "code": "E_QUERY_RESULT_SET_TOO_LARGE"
                    if "E_QUERY_RESULT_SET_TOO_LARGE" in detail_message
                    else "E_PARTIAL_QUERY_FAILURE",
                    "message": detail_message,
                    "severity": 2,
                    "severityName": "Error",
                },
            }
        ],
    }


@dataclass
class _Run:
    body: bytes
    rows: int


def _run_query(
    world: Any,
    opts: LogsOptions,
    query: str,
    resources: list[Any],
    window: tuple[datetime, datetime] | None,
    *,
    partial_fault: bool,
    statistics: bool,
) -> _Run:
    """Parse, execute and serialise; raises kql.KqlError for a refused query."""
    t0 = time.perf_counter()
    parsed = kql.parse(query)
    now = world.now()
    newest = now - timedelta(seconds=opts.ingestion_lag_s)
    start = world.start
    end = newest + timedelta(microseconds=1)  # rows at exactly `newest` count
    if window is not None:
        start, end = max(start, window[0]), min(end, window[1])

    def source() -> Iterable[dict[str, Any]]:
        return _table_rows(world, resources, start, end)

    result = kql.execute(parsed, {TABLE: kql.Table(COLUMNS, source)}, now=now)
    types = [c.type for c in result.columns]
    limit = max(0, opts.row_limit)
    chunks: list[str] = []
    size = 0
    count = 0
    error: dict[str, Any] | None = None
    wire = kql.to_wire
    for row in result.rows:
        if count >= limit:
            error = _partial_error(_ROW_LIMIT_MSG.format(n=limit))
            break
        text = json.dumps([wire(v, t) for v, t in zip(row, types, strict=True)], ensure_ascii=False)
        size += len(text) + 1
        if size > opts.max_bytes:
            error = _partial_error(_SIZE_LIMIT_MSG.format(n=opts.max_bytes))
            break
        chunks.append(text)
        count += 1
    if partial_fault and error is None:
        keep = count // 2
        chunks = chunks[:keep]
        count = keep
        error = _partial_error(
            "Partial query failure: Low memory condition (E_LOW_MEMORY_CONDITION). "
            "(message: 'bad allocation', details: '')"
        )
    columns = json.dumps(
        [{"name": c.name, "type": c.type} for c in result.columns], ensure_ascii=False
    )
    parts = [
        '{"tables":[{"name":"PrimaryResult","columns":',
        columns,
        ',"rows":[',
        ",".join(chunks),
        "]}]",
    ]
    if statistics:
        stats = {
            "query": {
                "executionTime": round(time.perf_counter() - t0, 6),
                "resourceUsage": {"cache": {}, "cpu": {}, "memory": {}},
                "datasetStatistics": [{"tableRowCount": count, "tableSize": size}],
            }
        }
        parts += [',"statistics":', json.dumps(stats)]
    if error is not None:
        parts += [',"error":', json.dumps(error)]
    parts.append("}")
    return _Run("".join(parts).encode(), count)


# ---------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------


async def _read_request(request: Request) -> tuple[str, Any, list[str]]:
    if request.method == "GET":
        q = request.query_params
        workspaces = [w for w in (q.get("workspaces") or "").split(",") if w.strip()]
        if "query" not in q:
            raise _ApiError(400, "BadArgumentError", "The request had some invalid properties")
        return q["query"], q.get("timespan"), workspaces
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except ValueError as exc:
        raise _ApiError(400, "BadArgumentError", "The request body is not valid JSON.") from exc
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        raise _ApiError(
            400,
            "BadArgumentError",
            "The request had some invalid properties",
            innererror={"code": "QueryMissing", "message": "The body must contain a query."},
        )
    workspaces = body.get("workspaces") or []
    if not isinstance(workspaces, list):
        raise _ApiError(400, "BadArgumentError", "The request had some invalid properties")
    return body["query"], body.get("timespan"), [str(w) for w in workspaces]


def _workspace_resources(world: Any, ws: Any) -> list[Any]:
    return [r for r in world.resources if r.workspace.customer_id == ws.customer_id]


def _lookup_workspace(world: Any, key: str) -> Any:
    ws = world.workspace(key)
    if ws is None:
        low = key.strip().lower()
        ws = next((w for w in world.workspaces if w.name.lower() == low), None)
    return ws


def _scope(world: Any, request: Request, extra: list[str]) -> list[Any]:
    """The resources whose logs the query sees (primary scope + additional workspaces)."""
    resources: list[Any] = []
    if "workspace_id" in request.path_params:
        ws = _lookup_workspace(world, request.path_params["workspace_id"])
        if ws is None:
            raise _ApiError(404, "PathNotFoundError", "The requested path does not exist")
        resources = _workspace_resources(world, ws)
    else:
        rid = "/" + request.path_params["resource_id"].strip("/")
        res = world.resource(rid)
        ws = world.workspace(rid)
        if res is not None and res.arm_id.lower() == rid.lower():
            resources = [res]
        elif ws is not None:
            resources = _workspace_resources(world, ws)
        else:
            raise _ApiError(
                403,
                "InsufficientAccessError",
                "The provided credentials have insufficient access to perform the requested "
                "operation",
            )
    for key in extra:
        extra_ws = _lookup_workspace(world, key)
        if extra_ws is None:
            extra_res = world.resource(key)
            if extra_res is None:
                raise _ApiError(
                    403,
                    "InsufficientAccessError",
                    "The provided credentials have insufficient access to perform the "
                    "requested operation",
                )
            more = [extra_res]
        else:
            more = _workspace_resources(world, extra_ws)
        resources += [r for r in more if r not in resources]
    return resources


async def query(request: Request) -> Response:
    """``POST|GET /logs/v1/workspaces/{id}/query`` and ``/logs/v1/{resourceId}/query``."""
    state = request.app.state.emulator
    denied = auth.check_bearer(request, AUDIENCE, api="logs")
    if denied is not None:
        return denied
    # throttle/error/slow/timeout/malformed are answered by intercept; truncated wraps our
    # answer below; partial is ours (a PartialError with half the rows).
    answer, rule = await faults_mod.intercept(request, "logs")
    if answer is not None:
        return answer
    partial = rule is not None and rule.kind == "partial"
    world = state.world
    opts = options(state)
    try:
        text, timespan, extra = await _read_request(request)
        resources = _scope(world, request, extra)
        window = parse_timespan(timespan, world.now())
        prefs = _parse_prefer(request.headers.get("prefer"))
        run = await run_in_threadpool(
            _run_query,
            world,
            opts,
            text,
            resources,
            window,
            partial_fault=partial,
            statistics=prefs.get("include-statistics", "").lower() == "true",
        )
    except _ApiError as exc:
        return _error_response(exc)
    except kql.KqlError as exc:
        body = kql_error_body(exc)
        return JSONResponse(
            body,
            status_code=400,
            headers={"x-ms-request-id": body["error"]["correlationId"]},
        )
    response = Response(
        run.body,
        media_type="application/json; charset=utf-8",
        headers={"x-ms-request-id": str(uuid.uuid4())},
    )
    return faults_mod.finish(rule, response)


async def admin_options(request: Request) -> Response:
    """``GET|POST /_emulator/logs/options``: read or change :class:`LogsOptions`."""
    opts = options(request.app.state.emulator)
    if request.method == "POST":
        body = await request.json()
        if "row_limit" in body:
            opts.row_limit = int(body["row_limit"])
        if "max_bytes" in body:
            opts.max_bytes = int(body["max_bytes"])
        if "ingestion_lag_s" in body:
            opts.ingestion_lag_s = float(body["ingestion_lag_s"])
    return JSONResponse(
        {
            "row_limit": opts.row_limit,
            "max_bytes": opts.max_bytes,
            "ingestion_lag_s": opts.ingestion_lag_s,
        }
    )


def routes() -> list[BaseRoute]:
    """Routes mounted by ``emulator.app.build_app`` (workspace form first: the resource form's
    ``path`` parameter would otherwise swallow it)."""
    return [
        Route("/logs/v1/workspaces/{workspace_id}/query", query, methods=["GET", "POST"]),
        Route("/logs/v1/{resource_id:path}/query", query, methods=["GET", "POST"]),
        Route("/_emulator/logs/options", admin_options, methods=["GET", "POST"]),
    ]
