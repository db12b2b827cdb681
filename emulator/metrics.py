"""Azure Monitor metrics batch endpoint (``metrics:getBatch``, api-version 2024-02-01).

Serves ``POST /metrics/{region}/subscriptions/{sub}/metrics:getBatch`` so that
``azure.monitor.querymetrics.MetricsClient.query_resources`` runs unmodified against the emulator
(endpoint ``{base}/metrics/{region}``). Wire format from the SDK (``_operations.py`` builds the
query string ``starttime, endtime, interval, metricnamespace, metricnames, aggregation, top,
orderby, filter, rollupby``; body ``{"resourceids": [...]}``) and from the REST spec
``specification/monitor/data-plane/Microsoft.Insights/stable/2024-02-01/metricBatch.json`` with
``examples/MetricBatchExample.json``; behaviour from MicrosoftDocs ``migrate-to-batch-api.md`` and
``rest-api-walkthrough.md``.

What a client sees, and why:
- Values come from ``world.requests_in_minute`` of each resource's deployments, the same records the
  logs endpoint serves, so metrics and logs agree. Per-minute and per-hour aggregates are cached
  (only for minutes that can no longer change) so a 30-day PT1H query stays cheap.
- ``ModelRequests`` counts every request (Total/Count), any status.
- Latency metrics (``TimeToLastByte`` = ``duration_ms``, ``NormalizedTimeToFirstToken`` =
  ``ttft_ms``) count **successful (2xx) requests only**: a 429 answered in 3 ms is not a model
  latency, and Azure describes them as model response times. Records without ``ttft_ms`` emit no
  first-token sample.
- Token metrics emit one sample per request with a non-zero count of that kind. ``InputTokens`` is
  Anthropic's ``input_tokens`` (cache reads/writes excluded, they have their own lower-camel
  metrics); ``TotalTokens`` = input + output (uncertain in Azure; see
  ``TOTAL_TOKENS_INCLUDE_CACHE``).
- ``TimeToResponse``, ``TokensPerSecond`` and ``NormalizedTimeBetweenTokens`` are PTU-only:
  accepted, never any sample (unsplit → one series of bare points, split → ``"timeseries": []``).
- Grains are aligned to ``starttime`` floored to the minute (as in the spec example and the
  walkthrough's PT6H sample); ``ceil((end - start) / interval)`` points; a grain without samples is
  ``{"timeStamp": ...}`` with no aggregate keys.
- ``filter``: ``Dim eq 'v'`` / ``eq '*'`` / ``ne 'v'`` joined by ``and``; ``or`` only between
  conditions on the same dimension (the documented rule). Every dimension named in the filter splits
  the result (minus ``rollupby``); names come back lower-cased in ``metadatavalues``. A filter
  dimension a requested metric does not have fails the whole call with Azure's "does not support
  requested dimension combination" message (so the collector must group metrics by dimension set).
- ``top``: per metric per resource, only with a filter, **default 10** (spec: "Valid only if
  filter is specified. Defaults to 10."). Ordering: ``orderby``
  (``total|sum|average|count|minimum|maximum`` ``asc|desc``, evaluated over the whole range),
  default the metric's primary aggregation descending; ties by dimension values.
- Limits answered ``400 {"error": {"code": "BadRequest", ...}}`` (batch error shape): more than 50
  unique resource ids, ids from several subscriptions or not in the path's subscription, ids of
  another resource type, unknown metric (Azure's "Failed to find metric configuration ..." text),
  unsupported interval (Azure's "Commonly allowed time grains ..." text), endtime not after
  starttime, a span over ``MAX_SPAN`` (30 days; Azure's documented per-query limit of metrics
  explorer, taken as the API limit), an end older than the 93-day retention, missing
  ``metricnamespace``/``metricnames``, bad ``top``/``orderby``/``aggregation``.
- A resource whose location differs from the path region, or that the world does not know, gets
  ``"timeseries": []`` for every metric (documented for wrong regions; unknown resources are
  treated alike rather than failing the batch).
- Faults (``faults.take("metrics")``): ``throttle`` → HTTP 529 (the batch API's throttling status;
  ``Retry-After`` only when the rule has ``retry_after_s`` — azure-core retries a POST on 529 only
  when that header is present); ``expired_token`` via ``auth.check_bearer``; ``truncated`` via
  ``faults.finish``; the other kinds via ``faults.apply_generic``.
- Results keep the order of the request's (de-duplicated) ``resourceids``: the SDK's
  ``MetricsQueryResult`` has no resource id, so callers pair results with ids by position.
- ``options(state)`` (or ``GET|POST /_emulator/metrics/options``): ``lag_s`` (default 0) hides the
  newest minutes, modelling ingestion latency; ``default_top``; ``max_span``.
"""

from __future__ import annotations

import json
import math
import re
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from typing import Any, ClassVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from emulator import auth, errors
from emulator import faults as faults_mod

AUDIENCE = "https://metrics.monitor.azure.com"
NAMESPACE = "Microsoft.CognitiveServices/accounts"
API_VERSIONS = frozenset({"2024-02-01", "2023-10-01", "2023-05-01-preview"})
MAX_RESOURCES = 50
FAULT_KINDS = ("throttle", "error", "slow", "timeout", "malformed", "truncated")
DEFAULT_TOP = 10
MAX_SPAN = timedelta(days=30)
RETENTION = timedelta(days=93)
TOTAL_TOKENS_INCLUDE_CACHE = False
# Minutes/hours younger than this may still receive records (live traffic): never cached.
_SETTLE = timedelta(minutes=5)
_MINUTE_CACHE_MAX = 50_000

_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)
_GRAINS: dict[int, str] = {
    60: "PT1M",
    300: "PT5M",
    900: "PT15M",
    1800: "PT30M",
    3600: "PT1H",
    21600: "PT6H",
    43200: "PT12H",
    86400: "P1D",
}
_GRAIN_TEXT = "00:01:00,00:05:00,00:15:00,00:30:00,01:00:00,06:00:00,12:00:00,1.00:00:00"

# Sample slots in a per-minute aggregate: each slot holds [count, sum, min, max].
_REQ, _TTLB, _TTFT, _IN, _OUT, _TOT, _CR, _W5, _W1 = range(9)
_NSLOTS = 9
_WIDTH = 4 * _NSLOTS

# Dimensions: those constant per deployment, then those per request record.
_DEP_DIMS = ("modeldeploymentname", "modelname", "modelversion", "region")
_REC_DIMS = ("statuscode", "streamtype", "apiname", "operationname")
_CANON = {
    "modeldeploymentname": "ModelDeploymentName",
    "modelname": "ModelName",
    "modelversion": "ModelVersion",
    "region": "Region",
    "statuscode": "StatusCode",
    "streamtype": "StreamType",
    "apiname": "ApiName",
    "operationname": "OperationName",
}
_REQUEST_DIMS = (
    "ApiName",
    "OperationName",
    "Region",
    "StreamType",
    "ModelDeploymentName",
    "ModelName",
    "ModelVersion",
    "StatusCode",
)
_LATENCY_DIMS = tuple(d for d in _REQUEST_DIMS if d != "StatusCode")
_TOKEN_DIMS = ("ApiName", "Region", "ModelDeploymentName", "ModelName", "ModelVersion")
_TOTAL_KEYS = ("requests", "input", "output", "cache_read", "cache_write_5m", "cache_write_1h")
_AGGS = ("average", "count", "maximum", "minimum", "total")


@dataclass(frozen=True)
class MetricDef:
    """One metric of the namespace: its unit, primary aggregation, dimensions and sample slot."""

    name: str
    display: str
    description: str
    unit: str
    primary: str
    dims: tuple[str, ...]
    slot: int | None  # None: accepted but never emitted for Global Standard deployments

    @property
    def dim_keys(self) -> frozenset[str]:
        return frozenset(d.lower() for d in self.dims)


_METRICS: tuple[MetricDef, ...] = (
    MetricDef(
        "ModelRequests",
        "Model Requests",
        "Number of calls made to the model API over a period of time.",
        "Count",
        "total",
        _REQUEST_DIMS,
        _REQ,
    ),
    MetricDef(
        "TimeToLastByte",
        "Time To Last Byte",
        "Time taken for the last byte of the response to be returned, in milliseconds.",
        "MilliSeconds",
        "average",
        _LATENCY_DIMS,
        _TTLB,
    ),
    MetricDef(
        "NormalizedTimeToFirstToken",
        "Normalized Time to First Byte",
        "Time taken for the first byte of the response, normalized, in milliseconds.",
        "MilliSeconds",
        "average",
        _LATENCY_DIMS,
        _TTFT,
    ),
    MetricDef(
        "InputTokens",
        "Input Tokens",
        "Number of prompt tokens processed (input) on a model.",
        "Count",
        "total",
        _TOKEN_DIMS,
        _IN,
    ),
    MetricDef(
        "OutputTokens",
        "Output Tokens",
        "Number of generated tokens (output) from a model.",
        "Count",
        "total",
        _TOKEN_DIMS,
        _OUT,
    ),
    MetricDef(
        "TotalTokens",
        "Total Tokens",
        "Number of inference tokens processed on a model.",
        "Count",
        "total",
        _TOKEN_DIMS,
        _TOT,
    ),
    MetricDef(
        "cacheReadInputTokens",
        "Cache Read Input Tokens",
        "Number of input tokens read from the prompt cache. Applies to Anthropic model "
        "deployments.",
        "Count",
        "total",
        _TOKEN_DIMS,
        _CR,
    ),
    MetricDef(
        "ephemeral5mInputTokens",
        "Ephemeral 5m Input Tokens",
        "Number of input tokens written to the 5-minute prompt cache. Applies to Anthropic model "
        "deployments.",
        "Count",
        "total",
        _TOKEN_DIMS,
        _W5,
    ),
    MetricDef(
        "ephemeral1hInputTokens",
        "Ephemeral 1h Input Tokens",
        "Number of input tokens written to the 1-hour prompt cache. Applies to Anthropic model "
        "deployments.",
        "Count",
        "total",
        _TOKEN_DIMS,
        _W1,
    ),
    MetricDef(
        "TimeToResponse",
        "Time To Response",
        "Recommended latency (responsiveness) measure for streaming requests. Applies to PTU and "
        "PTU-managed deployments.",
        "MilliSeconds",
        "average",
        _REQUEST_DIMS,
        None,
    ),
    MetricDef(
        "TokensPerSecond",
        "Tokens Per Second",
        "Enumerates the generation speed for a given model response. Applies to PTU and "
        "PTU-managed deployments.",
        "Count",
        "average",
        _LATENCY_DIMS,
        None,
    ),
    MetricDef(
        "NormalizedTimeBetweenTokens",
        "Time Between Tokens",
        "For streaming requests; model token generation rate, in milliseconds. Applies to PTU and "
        "PTU-managed deployments.",
        "MilliSeconds",
        "average",
        _LATENCY_DIMS,
        None,
    ),
)
METRICS: dict[str, MetricDef] = {m.name.lower(): m for m in _METRICS}


class BatchError(Exception):
    """A request Azure would refuse: becomes ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, message: str, *, status: int = 400, code: str = "BadRequest") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# --------------------------------------------------------------------------- options / runtime


@dataclass
class MetricsOptions:
    """Switches a test or the demo may flip at run time (``options(state)``)."""

    lag_s: int = 0
    default_top: int = DEFAULT_TOP
    max_span: timedelta = MAX_SPAN


@dataclass
class _Runtime:
    options: MetricsOptions = field(default_factory=MetricsOptions)


@dataclass
class _AggCache:
    """Aggregates of one world; shared by every state serving it and by ``emulator.costs``.

    A late call (``World.on_live``) drops the minute, hour and day it lands in and marks them
    with a new ``generation``: an aggregate of one of them computed before that may miss the
    call, so :meth:`keep` refuses it. Other keys keep caching under steady live traffic.
    ``touched`` is bounded (a long live run adds a minute key per deployment per minute): its
    oldest half is dropped at ``TOUCHED_MAX`` keys, and ``floor`` rises to the newest generation
    dropped, so that any aggregate computed before it is refused, whatever its key.
    """

    TOUCHED_MAX: ClassVar[int] = 4096

    minutes: OrderedDict[tuple[str, str, datetime], dict[tuple, list]] = field(
        default_factory=OrderedDict
    )
    hours: dict[tuple[str, str, datetime], dict[tuple, list]] = field(default_factory=dict)
    days: dict[date, dict[str, dict[str, float]]] = field(default_factory=dict)
    generation: int = 0
    touched: dict[Any, int] = field(default_factory=dict)  # key -> generation of its late call
    floor: int = 0  # aggregates computed before this generation are not kept
    lock: threading.Lock = field(default_factory=threading.Lock)

    def keep(self, table: dict, key: Any, value: Any, generation: int) -> bool:
        """Store ``value`` (computed at ``generation``) unless a late call touched ``key``
        since."""
        with self.lock:
            if generation < self.floor or self.touched.get(key, -1) > generation:
                return False
            table[key] = value
            return True

    def forget(self, dep: Any, minute: datetime) -> None:
        """Drop the minute, hour and day holding a late call, so the next query counts it."""
        dep_key = _dep_key(dep)
        with self.lock:
            self.generation += 1
            for table, key in (
                (self.minutes, (*dep_key, minute)),
                (self.hours, (*dep_key, minute.replace(minute=0))),
                (self.days, minute.date()),
            ):
                table.pop(key, None)
                self.touched.pop(key, None)  # re-inserted: the oldest keys stay first
                self.touched[key] = self.generation
            if len(self.touched) > self.TOUCHED_MAX:
                for key in list(islice(self.touched, len(self.touched) // 2)):
                    self.floor = max(self.floor, self.touched.pop(key))


_FALLBACK_RUNTIMES: dict[int, _Runtime] = {}
_CACHES: weakref.WeakKeyDictionary[Any, _AggCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def _runtime(state: Any) -> _Runtime:
    rt = getattr(state, "_metrics_runtime", None)
    if rt is None:
        rt = _FALLBACK_RUNTIMES.get(id(state))
    if rt is None:
        rt = _Runtime()
        try:
            state._metrics_runtime = rt
        except (AttributeError, TypeError):
            _FALLBACK_RUNTIMES[id(state)] = rt
    return rt


def _cache(world: Any) -> _AggCache:
    with _CACHES_LOCK:
        c = _CACHES.get(world)
        if c is None:
            c = _CACHES[world] = _AggCache()
            world.on_live(c.forget)
        return c


def options(state: Any) -> MetricsOptions:
    """The metrics switches of one emulator state (created on first use)."""
    return _runtime(state).options


# --------------------------------------------------------------------------- aggregation


def _empty_stats() -> list:
    return [0, 0, math.inf, -math.inf] * _NSLOTS


def _add(st: list, slot: int, value: float) -> None:
    i = slot * 4
    st[i] += 1
    st[i + 1] += value
    if value < st[i + 2]:
        st[i + 2] = value
    if value > st[i + 3]:
        st[i + 3] = value


def _merge_into(dst: dict[tuple, list], src: dict[tuple, list]) -> None:
    for key, s in src.items():
        d = dst.get(key)
        if d is None:
            dst[key] = list(s)
            continue
        for i in range(0, _WIDTH, 4):
            n = s[i]
            if n:
                d[i] += n
                d[i + 1] += s[i + 1]
                if s[i + 2] < d[i + 2]:
                    d[i + 2] = s[i + 2]
                if s[i + 3] > d[i + 3]:
                    d[i + 3] = s[i + 3]


def aggregate_records(records: Iterable[Any]) -> dict[tuple, list]:
    """Per-record-dimension key → flat stats list ([count, sum, min, max] per sample slot)."""
    acc: dict[tuple, list] = {}
    for r in records:
        stream = "Streaming" if r.stream else "Non-Streaming"
        key = (str(r.status), stream, r.api_name, r.operation_name)
        st = acc.get(key)
        if st is None:
            st = acc[key] = _empty_stats()
        _add(st, _REQ, 1)
        if 200 <= r.status < 300:
            _add(st, _TTLB, r.duration_ms)
            if r.ttft_ms is not None:
                _add(st, _TTFT, r.ttft_ms)
        cache = r.cache_read_tokens + r.cache_write_5m_tokens + r.cache_write_1h_tokens
        total = r.input_tokens + r.output_tokens + (cache if TOTAL_TOKENS_INCLUDE_CACHE else 0)
        for slot, value in (
            (_IN, r.input_tokens),
            (_OUT, r.output_tokens),
            (_TOT, total),
            (_CR, r.cache_read_tokens),
            (_W5, r.cache_write_5m_tokens),
            (_W1, r.cache_write_1h_tokens),
        ):
            if value:
                _add(st, slot, value)
    return acc


def _dep_key(dep: Any) -> tuple[str, str]:
    return (dep.resource.arm_id.lower(), dep.name)


class Aggregator:
    """Per-minute and per-hour aggregates of a world's deployments, cached once they cannot change.

    ``emulator.costs`` prices the same hourly aggregates, so metrics and bills agree and either
    query warms the cache for the other.
    """

    def __init__(self, world: Any) -> None:
        self.world = world
        self.cache = _cache(world)
        self.settled = world.now() - _SETTLE

    def minute(self, dep: Any, minute: datetime, *, cache: bool = True) -> dict[tuple, list]:
        key = (*_dep_key(dep), minute)
        c = self.cache
        with c.lock:
            hit = c.minutes.get(key)
            if hit is not None:
                c.minutes.move_to_end(key)
                return hit
            generation = c.generation
        agg = aggregate_records(self.world.requests_in_minute(dep, minute))
        if cache and minute + _MINUTE <= self.settled and c.keep(c.minutes, key, agg, generation):
            with c.lock:
                while len(c.minutes) > _MINUTE_CACHE_MAX:
                    c.minutes.popitem(last=False)
        return agg

    def hour(self, dep: Any, hour: datetime) -> dict[tuple, list]:
        key = (*_dep_key(dep), hour)
        c = self.cache
        with c.lock:
            hit = c.hours.get(key)
            if hit is not None:
                return hit
            generation = c.generation
        minutes = [(*_dep_key(dep), hour + i * _MINUTE) for i in range(60)]
        with c.lock:
            cached = [c.minutes.get(k) for k in minutes]
        if any(x is not None for x in cached):
            agg: dict[tuple, list] = {}
            for k, hit in zip(minutes, cached, strict=True):
                _merge_into(agg, hit if hit is not None else self.minute(dep, k[2], cache=False))
        else:
            rq = self.world.requests_in_minute
            agg = aggregate_records(r for i in range(60) for r in rq(dep, hour + i * _MINUTE))
        if hour + _HOUR <= self.settled:
            c.keep(c.hours, key, agg, generation)
        return agg

    def hour_totals(self, dep: Any, hour: datetime) -> dict[str, float]:
        """Summed counters of one deployment-hour: requests and each token kind."""
        out = dict.fromkeys(_TOTAL_KEYS, 0)
        for stats in self.hour(dep, hour).values():
            out["requests"] += stats[_REQ * 4]
            out["input"] += stats[_IN * 4 + 1]
            out["output"] += stats[_OUT * 4 + 1]
            out["cache_read"] += stats[_CR * 4 + 1]
            out["cache_write_5m"] += stats[_W5 * 4 + 1]
            out["cache_write_1h"] += stats[_W1 * 4 + 1]
        return out


# --------------------------------------------------------------------------- parsing


@dataclass
class Constraint:
    """What the filter says about one dimension."""

    name: str  # lower-case key
    wildcard: bool = False
    allowed: set[str] | None = None  # lower-cased values; None = any
    excluded: set[str] = field(default_factory=set)

    def accepts(self, value: str) -> bool:
        v = value.lower()
        if self.allowed is not None and v not in self.allowed:
            return False
        return v not in self.excluded


_TOKEN_RE = re.compile(r"\s*(\(|\)|'(?:[^']|'')*'|[^\s()']+)")


def parse_filter(text: str) -> dict[str, Constraint]:
    """Parse an Azure metrics filter into per-dimension constraints, in order of appearance."""
    tokens: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise BatchError(f"Invalid filter: {text}")
        tokens.append(m.group(1))
        pos = m.end()
    depth = 0
    for t in tokens:
        depth += t == "("
        depth -= t == ")"
        if depth < 0:
            break
    if depth != 0:
        raise BatchError(f"Invalid filter, unbalanced parentheses: {text}")
    words = [t for t in tokens if t not in "()"]
    # conditions separated by conjunctions: NAME OP VALUE (and|or NAME OP VALUE)*
    groups: list[list[tuple[str, str, str]]] = [[]]
    i = 0
    while i < len(words):
        if i + 2 >= len(words):
            raise BatchError(f"Invalid filter: {text}")
        name, op, value = words[i], words[i + 1].lower(), words[i + 2]
        if op not in ("eq", "ne") or not (len(value) >= 2 and value[0] == value[-1] == "'"):
            raise BatchError(f"Invalid filter condition '{name} {words[i + 1]} {value}': {text}")
        groups[-1].append((name, op, value[1:-1].replace("''", "'")))
        i += 3
        if i < len(words):
            conj = words[i].lower()
            if conj == "and":
                groups.append([])
            elif conj != "or":
                raise BatchError(f"Invalid filter, expected 'and' or 'or': {text}")
            i += 1
            if i >= len(words):
                raise BatchError(f"Invalid filter: {text}")
    result: dict[str, Constraint] = {}
    for group in groups:
        names = {n.lower() for n, _, _ in group}
        if len(names) != 1:
            raise BatchError(
                "Invalid filter: the logical 'or' operator cannot separate two different "
                f"metadata names: {text}"
            )
        key = names.pop()
        c = result.setdefault(key, Constraint(name=key))
        eq_values = {v.lower() for _, op, v in group if op == "eq"}
        c.excluded |= {v.lower() for _, op, v in group if op == "ne"}
        if "*" in eq_values:
            c.wildcard = True
        elif eq_values:
            c.allowed = eq_values if c.allowed is None else (c.allowed & eq_values)
    return result


def parse_time(text: str, what: str) -> datetime:
    """ISO 8601 time as the SDK sends it (``2024-01-01T00:00:00.000Z``); naive means UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace(" ", "+"))
    except ValueError as exc:
        raise BatchError(
            f"Detected invalid time interval input: {what}={text}, supported Iso 8601 time "
            "format is yyyy-MM-ddTHH:mm:ss.fffZ"
        ) from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _parse_duration_s(text: str) -> int | None:
    m = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", text.strip().upper())
    if not m or not any(m.groups()):
        return None
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


def _fmt(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _floor_minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def _region_key(region: str) -> str:
    return region.replace(" ", "").lower()


_RID_RE = re.compile(
    r"^/subscriptions/([^/]+)/resourcegroups/([^/]+)/providers/([^/]+)/([^/]+)/([^/]+)/?$",
    re.IGNORECASE,
)


@dataclass
class Query:
    """A validated batch query."""

    region: str
    subscription: str
    resource_ids: list[str]
    metrics: list[MetricDef]
    start: datetime
    end: datetime
    start_text: str
    end_text: str
    interval_s: int
    aggregations: list[str] | None  # None: each metric's primary aggregation
    filters: dict[str, Constraint]
    rollup: set[str]
    top: int
    orderby: tuple[str, bool] | None  # (aggregation, descending)

    @property
    def split(self) -> list[str]:
        return [d for d in self.filters if d not in self.rollup]


def parse_query(
    region: str, subscription: str, params: Any, body: Any, now: datetime, opts: MetricsOptions
) -> Query:
    """Validate everything Azure validates before running a batch query."""
    api_version = params.get("api-version")
    if not api_version:
        raise BatchError("The api-version query parameter (?api-version=) is required.")
    if api_version not in API_VERSIONS:
        raise BatchError(
            f"The api-version '{api_version}' is not supported. Supported versions: "
            + ", ".join(sorted(API_VERSIONS))
        )
    namespace = params.get("metricnamespace")
    if not namespace:
        raise BatchError("The metricnamespace query parameter is required for metrics:getBatch.")
    if namespace.lower() != NAMESPACE.lower():
        raise BatchError(
            f"Metric namespace '{namespace}' does not match the resource type "
            f"'{NAMESPACE}' of the requested resource ids."
        )

    if not isinstance(body, dict) or not isinstance(body.get("resourceids"), list):
        raise BatchError(
            "The request body must be a JSON object with a lower-case 'resourceids' array."
        )
    ids: list[str] = []
    seen: set[str] = set()
    for rid in body["resourceids"]:
        if not isinstance(rid, str) or not rid.strip():
            raise BatchError(f"Invalid resource id: {rid!r}")
        if rid.lower().rstrip("/") not in seen:
            seen.add(rid.lower().rstrip("/"))
            ids.append(rid)
    if not ids:
        raise BatchError("At least one resource id must be specified in 'resourceids'.")
    if len(ids) > MAX_RESOURCES:
        raise BatchError(
            f"The number of resource ids ({len(ids)}) exceeds the maximum of {MAX_RESOURCES} "
            "unique resource ids per metrics:getBatch call."
        )
    subs: set[str] = set()
    for rid in ids:
        m = _RID_RE.match(rid)
        if not m:
            raise BatchError(f"Invalid resource id: '{rid}'.")
        if f"{m.group(3)}/{m.group(4)}".lower() != NAMESPACE.lower():
            raise BatchError(
                f"Resource '{rid}' is not of type '{NAMESPACE}'. All resources in a batch must be "
                "the same resource type as the metric namespace."
            )
        subs.add(m.group(1).lower())
    if len(subs) > 1:
        raise BatchError(
            "All resources in a metrics:getBatch call must be in the same subscription; found "
            f"{len(subs)} subscriptions."
        )
    if subs != {subscription.lower()}:
        raise BatchError(
            f"The resource ids are not in subscription '{subscription}' of the request path."
        )

    names_param = params.get("metricnames")
    if not names_param:
        raise BatchError("The metricnames query parameter is required.")
    metrics: list[MetricDef] = []
    for raw in names_param.split(","):
        name = raw.strip().replace("%2", ",")
        m = METRICS.get(name.lower())
        if m is None:
            raise BatchError(
                "Failed to find metric configuration for provider: Microsoft.CognitiveServices, "
                f"resource Type: accounts, metric: {name}, Valid metrics: "
                + ",".join(x.name for x in _METRICS)
            )
        if m not in metrics:
            metrics.append(m)

    interval_text = params.get("interval") or "PT1M"
    interval_s = _parse_duration_s(interval_text)
    if interval_s not in _GRAINS:
        raise BatchError(
            f"Commonly allowed time grains: {_GRAIN_TEXT} between metrics: "
            + ",".join(m.name for m in metrics)
            + f", can not support requested time grain: {interval_text} please adjust your "
            "interval parameter to use one of the common grains"
        )

    start_text, end_text = params.get("starttime"), params.get("endtime")
    if end_text and not start_text:
        raise BatchError("The starttime parameter is required when endtime is specified.")
    end = parse_time(end_text, "endtime") if end_text else now
    start = parse_time(start_text, "starttime") if start_text else end - timedelta(hours=1)
    if end <= start:
        raise BatchError(
            f"Detected invalid time interval input: starttime {_fmt(start)} must be earlier than "
            f"endtime {_fmt(end)}."
        )
    if end - start > opts.max_span:
        raise BatchError(
            f"The requested time range ({end - start}) exceeds the maximum allowed time range of "
            f"{opts.max_span.days}.00:00:00 for a single query."
        )
    if end < now - RETENTION:
        raise BatchError(
            f"Query endTime: {end:%m/%d/%Y %I:%M:%S %p} is out of the Max metrics retention "
            "period: 93.00:00:00"
        )

    aggregations: list[str] | None = None
    if params.get("aggregation"):
        aggregations = []
        for raw in params["aggregation"].split(","):
            a = raw.strip().lower()
            a = "total" if a == "sum" else a
            if a not in _AGGS:
                raise BatchError(
                    f"Invalid aggregation type '{raw.strip()}'. Valid values: Average, Count, "
                    "Maximum, Minimum, Total."
                )
            if a not in aggregations:
                aggregations.append(a)

    filters = parse_filter(params["filter"]) if params.get("filter") else {}
    rollup = {d.strip().lower() for d in (params.get("rollupby") or "").split(",") if d.strip()}
    for m in metrics:
        wanted = set(filters) | rollup
        if not wanted <= m.dim_keys:
            raise BatchError(
                f"Metric: {m.name} does not support requested dimension combination: "
                + ",".join(sorted(wanted))
                + ", supported ones are: "
                + ",".join(m.dims)
            )

    top = opts.default_top
    if params.get("top") is not None:
        try:
            top = int(params["top"])
        except ValueError as exc:
            raise BatchError(
                f"Detected invalid TopN value {params['top']}, should be Int value."
            ) from exc
        if top <= 0:
            raise BatchError(f"Detected invalid TopN value {top}, should be a positive value.")

    orderby = None
    if params.get("orderby"):
        parts = params["orderby"].strip().lower().split()
        agg = "total" if parts and parts[0] == "sum" else (parts[0] if parts else "")
        direction = parts[1] if len(parts) > 1 else "asc"
        if agg not in _AGGS or direction not in ("asc", "desc") or len(parts) > 2:
            raise BatchError(
                f"Invalid orderby '{params['orderby']}': expected '<aggregation> [asc|desc]'."
            )
        orderby = (agg, direction == "desc")

    return Query(
        region=region,
        subscription=subscription,
        resource_ids=ids,
        metrics=metrics,
        start=start,
        end=end,
        start_text=start_text or _fmt(start),
        end_text=end_text or _fmt(end),
        interval_s=interval_s,
        aggregations=aggregations,
        filters=filters,
        rollup=rollup,
        top=top,
        orderby=orderby,
    )


# --------------------------------------------------------------------------- execution


def _plan(
    start: datetime, end: datetime, interval: timedelta, cutoff: datetime, world_start: datetime
) -> tuple[int, list[tuple[int, bool, datetime]]]:
    """Grain count, and (grain index, is_hour, time) pieces covering the data window."""
    n = math.ceil((end - start) / interval)
    pieces: list[tuple[int, bool, datetime]] = []
    data_end = min(end, cutoff)
    first = max(start, _floor_minute(world_start))
    for g in range(n):
        gs = start + g * interval
        ge = min(gs + interval, data_end)
        t = max(gs, first)
        while t < ge:
            if t.minute == 0 and t + _HOUR <= ge:
                pieces.append((g, True, t))
                t += _HOUR
            else:
                pieces.append((g, False, t))
                t += _MINUTE
    return n, pieces


def _point_value(stats: list[float], slot: int, agg: str) -> float:
    i = slot * 4
    n, s, mn, mx = stats[i], stats[i + 1], stats[i + 2], stats[i + 3]
    if agg == "total":
        return s
    if agg == "count":
        return n
    if agg == "average":
        return s / n
    if agg == "minimum":
        return mn
    return mx


def _merge_slot(dst: list, src: list, slot: int) -> None:
    i = slot * 4
    dst[0] += src[i]
    dst[1] += src[i + 1]
    if src[i + 2] < dst[2]:
        dst[2] = src[i + 2]
    if src[i + 3] > dst[3]:
        dst[3] = src[i + 3]


def _metadata(split: list[str], values: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {"name": {"value": d, "localizedValue": d}, "value": v}
        for d, v in zip(split, values, strict=True)
    ]


def _data(
    grains: dict[int, list], n: int, start: datetime, interval: timedelta, aggs: list[str]
) -> list[dict[str, Any]]:
    out = []
    for g in range(n):
        point: dict[str, Any] = {"timeStamp": _fmt(start + g * interval)}
        st = grains.get(g)
        if st is not None and st[0]:
            for a in aggs:
                point[a] = _point_value(st, 0, a)
        out.append(point)
    return out


def _order_key(grains: dict[int, list], agg: str) -> float:
    total = [0, 0, math.inf, -math.inf]
    for st in grains.values():
        _merge_slot(total, st, 0)
    if not total[0]:
        return -math.inf
    return _point_value(total, 0, agg)


def _resource_values(
    q: Query, resource: Any, deployments: list[Any], agg: Aggregator, plan: list, n: int
) -> dict[str, list[dict[str, Any]]]:
    """Metric name → timeseries list for one resource."""
    interval = timedelta(seconds=q.interval_s)
    split = q.split
    dep_filters = [(i, c) for i, d in enumerate(_DEP_DIMS) for c in [q.filters.get(d)] if c]
    rec_filters = [(i, c) for i, d in enumerate(_REC_DIMS) for c in [q.filters.get(d)] if c]
    # (source, index) for each split dimension: 0 = deployment-level, 1 = record-level
    where = [(0, _DEP_DIMS.index(d)) if d in _DEP_DIMS else (1, _REC_DIMS.index(d)) for d in split]
    emitting = [m for m in q.metrics if m.slot is not None]
    # metric name -> series key -> grain -> [count, sum, min, max]
    acc: dict[str, dict[tuple[str, ...], dict[int, list]]] = {m.name: {} for m in q.metrics}

    for dep in deployments:
        dep_vals = (dep.name, dep.model_name, dep.model_version, resource.location)
        if any(not c.accepts(dep_vals[i]) for i, c in dep_filters):
            continue
        born = _floor_minute(dep.created_at)
        gone = dep.deleted_at
        for g, is_hour, t in plan:
            span_end = t + (_HOUR if is_hour else _MINUTE)
            if span_end <= born or (gone is not None and t >= gone):
                continue
            data = agg.hour(dep, t) if is_hour else agg.minute(dep, t)
            for rec_key, stats in data.items():
                if any(not c.accepts(rec_key[i]) for i, c in rec_filters):
                    continue
                skey = tuple(dep_vals[i] if src == 0 else rec_key[i] for src, i in where)
                for m in emitting:
                    i = m.slot * 4  # type: ignore[operator]
                    if not stats[i]:
                        continue
                    series = acc[m.name].setdefault(skey, {})
                    cell = series.get(g)
                    if cell is None:
                        series[g] = [stats[i], stats[i + 1], stats[i + 2], stats[i + 3]]
                    else:
                        _merge_slot(cell, stats, m.slot)  # type: ignore[arg-type]

    out: dict[str, list[dict[str, Any]]] = {}
    for m in q.metrics:
        aggs = q.aggregations or [m.primary]
        series = acc[m.name]
        if not split:
            out[m.name] = [
                {
                    "metadatavalues": [],
                    "data": _data(series.get((), {}), n, q.start, interval, aggs),
                }
            ]
            continue
        order_agg, desc = q.orderby or (m.primary, True)
        ranked = sorted(
            series.items(),
            key=lambda kv, a=order_agg: (
                -_order_key(kv[1], a) if desc else _order_key(kv[1], a),
                tuple(v.lower() for v in kv[0]),
            ),
        )
        out[m.name] = [
            {"metadatavalues": _metadata(split, skey), "data": _data(g, n, q.start, interval, aggs)}
            for skey, g in ranked[: q.top]
        ]
    return out


def execute(world: Any, rt: _Runtime, q: Query) -> dict[str, Any]:
    """Run a validated query against the world; the response body of ``metrics:getBatch``."""
    now = world.now()
    interval = timedelta(seconds=q.interval_s)
    start, end = _floor_minute(q.start), _floor_minute(q.end)
    if end <= start:
        end = start + _MINUTE
    cutoff = _floor_minute(now - timedelta(seconds=rt.options.lag_s))
    n, plan = _plan(start, end, interval, cutoff, world.start)
    q.start = start
    aggregator = Aggregator(world)
    by_resource: dict[str, list[Any]] = {}
    for dep in world.deployments:
        by_resource.setdefault(dep.resource.arm_id.lower(), []).append(dep)
    values = []
    for rid in q.resource_ids:
        resource = world.resource(rid)
        known = (
            resource is not None
            and resource.arm_id.lower() == rid.lower().rstrip("/")
            and _region_key(resource.location) == _region_key(q.region)
        )
        if known:
            series = _resource_values(
                q, resource, by_resource.get(resource.arm_id.lower(), []), aggregator, plan, n
            )
        else:
            series = {m.name: [] for m in q.metrics}
        values.append(
            {
                "starttime": q.start_text,
                "endtime": q.end_text,
                "interval": _GRAINS[q.interval_s],
                "value": [
                    {
                        "id": f"{rid}/providers/Microsoft.Insights/metrics/{m.name}",
                        "type": "Microsoft.Insights/metrics",
                        "name": {"value": m.name, "localizedValue": m.display},
                        "displayDescription": m.description,
                        "unit": m.unit,
                        "timeseries": series[m.name],
                        "errorCode": "Success",
                    }
                    for m in q.metrics
                ],
                "namespace": NAMESPACE.lower(),
                "resourceregion": resource.location if known else q.region,
                "resourceid": rid,
            }
        )
    return {"values": values}


# --------------------------------------------------------------------------- HTTP


def _error(status: int, code: str, message: str) -> Response:
    trace = uuid.uuid4()
    return errors.arm_error(status, code, f"{message}, TraceId: {{{trace}}}")


def throttled(retry_after_s: float | None) -> Response:
    """HTTP 529, the batch API's throttling answer."""
    headers = {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(0, math.ceil(retry_after_s)))
    return errors.arm_error(
        529,
        "TooManyRequests",
        "The metrics backend is throttling your requests. Retry with exponential backoff.",
        headers=headers,
    )


async def get_batch(request: Request) -> Response:
    """``POST /metrics/{region}/subscriptions/{sub}/metrics:getBatch``."""
    state = request.app.state.emulator
    denied = auth.check_bearer(request, AUDIENCE, api="metrics")
    if denied is not None:
        return denied
    path = request.url.path
    rule = state.faults.take(faults_mod.endpoint_for_path(path), path=path, kinds=FAULT_KINDS)
    if rule is not None:
        if rule.kind == "throttle":
            return throttled(rule.retry_after_s)
        generic = await faults_mod.apply_generic(rule, api="metrics")
        if generic is not None:
            return generic
    rt = _runtime(state)
    world = state.world
    try:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            raise BatchError("The request body is not valid JSON.") from exc
        q = parse_query(
            request.path_params["region"],
            request.path_params["sub"],
            request.query_params,
            body,
            world.now(),
            rt.options,
        )
        result = await run_in_threadpool(execute, world, rt, q)
    except BatchError as exc:
        return _error(exc.status, exc.code, str(exc))
    response = JSONResponse(result, headers={"x-ms-request-id": str(uuid.uuid4())})
    return faults_mod.finish(rule, response)


async def admin_options(request: Request) -> Response:
    """``GET|POST /_emulator/metrics/options``: read or change ``MetricsOptions``."""
    opts = options(request.app.state.emulator)
    if request.method == "POST":
        body = await request.json()
        if "lag_s" in body:
            opts.lag_s = int(body["lag_s"])
        if "default_top" in body:
            opts.default_top = int(body["default_top"])
        if "max_span_days" in body:
            opts.max_span = timedelta(days=float(body["max_span_days"]))
    return JSONResponse(
        {
            "lag_s": opts.lag_s,
            "default_top": opts.default_top,
            "max_span_days": opts.max_span.total_seconds() / 86400,
        }
    )


def routes() -> list[BaseRoute]:
    """Routes mounted by ``emulator.app.build_app``."""
    return [
        Route(
            "/metrics/{region}/subscriptions/{sub}/metrics:getBatch",
            get_batch,
            methods=["POST"],
        ),
        Route("/_emulator/metrics/options", admin_options, methods=["GET", "POST"]),
    ]
