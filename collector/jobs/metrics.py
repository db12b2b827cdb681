"""Metrics: Azure Monitor platform metrics of Claude deployments, per minute → ``metric_points``.

One ``MetricsClient.query_resources`` (``metrics:getBatch``) call per (subscription, region)
per metric group per time chunk, for up to 50 resources — so an incremental cycle costs
``scopes × 3`` calls whatever the number of deployments (DESIGN §7).

Why the choices below:

- **Metric groups by dimension set.** Azure refuses a call whose filter names a dimension one of
  the requested metrics does not have, so metrics are grouped by the dimensions they are split
  by: ``ModelRequests`` (deployment × status code), the two latency metrics (deployment) and the
  six token metrics (deployment). ``TimeToResponse`` & co. are PTU-only and never asked for.
- **ModelName and ModelVersion are split too.** They cost no extra series (a deployment has one
  model) and tell a deployment discovery deliberately skipped (a GPT deployment on the same
  account; ignored, logged) from a Claude deployment ARM does not list — deleted before
  discovery saw it, or newer than the last discovery. The latter's points are kept: in the
  chunk's transaction ``record_unlisted`` gives it a deployment row of its own (marked deleted;
  discovery clears the mark if it was merely new) and its points are stored under it, so its
  history is complete and the run is ok.
- **Bare points are skipped, not stored.** Azure returns every grain of every series; an empty
  grain is ``{"timeStamp": …}`` with no aggregate (null, not zero). Storing NULL rows would
  multiply the table by the series × minutes with no information; readers treat a missing
  minute as "no data" — exactly Azure's meaning.
- **top.** ``top`` is per metric per resource and defaults to 10 when a filter is given, which
  would silently cut deployments × status codes. We ask for
  ``max(MIN_TOP, TOP_PER_DEPLOYMENT × (deployments of the largest resource + 1))`` and treat a
  metric whose series count reaches ``top`` as cut: the chunk fails (watermark unmoved).
- **Window.** From the watermark minus ``OVERLAP`` (metrics arrive minutes late; re-read and
  upsert) to now floored to the minute minus ``SETTLE``. Split into chunks whose length keeps
  one response under ``POINT_BUDGET`` points (Azure returns a point per grain per series,
  bare or not), so memory stays flat however long a backfill is. Each chunk is one
  ``run_scope``: rows + watermark + run record in one transaction.
- **Bare points never become Python objects.** The SDK turns every point — bare or not — into
  two objects (a generated model, then a ``MetricValue``): ~40 µs a point, which made a 30-day
  backfill CPU-bound in the client. Each call passes azure-core's ``stream=True`` and a ``cls``
  hook (``RawAnswer``) that parses the body with ``json.loads`` and drops bare points before the
  SDK builds its ``MetricsQueryResult`` objects from what is left. Same wire format, same SDK
  call, a fraction of the work.
- **Retries.** ``metrics:getBatch`` is a read-only POST; azure-core only retries POSTs on
  500/503/504 (or with Retry-After), so each call passes ``retry_on_methods`` including POST to
  have 529 throttling retried with back-off.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select

from collector import coarse_rollups
from collector.azure import AzureClients
from collector.deployments import record_unlisted
from collector.jobs.base import JobContext, ScopeOutcome, Written, coverage_start, run_scope
from collector.runs import get_watermark, set_watermark
from models.db import upsert
from models.tables import Deployment, MetricPoint, Resource

log = logging.getLogger("foundry_watch.collector.metrics")

SOURCE = "metrics"
NAMESPACE = "Microsoft.CognitiveServices/accounts"
GRAIN = timedelta(minutes=1)
#: Re-read this much before the watermark: Azure metrics arrive a few minutes late.
OVERLAP = timedelta(minutes=10)
#: The newest minutes are still filling up; stop this far before now (the overlap re-reads them).
SETTLE = timedelta(minutes=1)
#: Azure Monitor keeps platform metrics 93 days; older queries are refused.
AZURE_RETENTION = timedelta(days=93)
#: At most this many resource ids per metrics:getBatch call (Azure's limit).
MAX_RESOURCES_PER_CALL = 50
#: Points (series × grains) one response may hold; bounds memory per call.
POINT_BUDGET = 100_000
MIN_CHUNK = timedelta(hours=1)
MAX_CHUNK = timedelta(days=1)
#: ``top`` sizing: enough series for every deployment × status code it may answer with.
MIN_TOP = 1000
TOP_PER_DEPLOYMENT = 50
#: Expected status codes per deployment, only to size chunks (not a limit).
STATUS_FANOUT = 3
#: Per-call retry options: retry the read-only POST on throttling (529) and transient errors.
RETRY_OPTIONS: dict[str, Any] = {
    "retry_on_methods": frozenset({"HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE", "POST"})
}

DEPLOYMENT_DIM = "ModelDeploymentName"
STATUS_DIM = "StatusCode"
MODEL_DIM = "ModelName"
VERSION_DIM = "ModelVersion"


@dataclass(frozen=True)
class MetricGroup:
    """Metrics asked together: same split dimensions, same aggregations."""

    name: str
    metrics: tuple[str, ...]
    aggregations: tuple[str, ...]
    by_status: bool

    @property
    def filter(self) -> str:
        dims = [DEPLOYMENT_DIM, *([STATUS_DIM] if self.by_status else []), MODEL_DIM, VERSION_DIM]
        return " and ".join(f"{d} eq '*'" for d in dims)

    @property
    def series_per_deployment(self) -> int:
        return len(self.metrics) * (STATUS_FANOUT if self.by_status else 1)


GROUPS: tuple[MetricGroup, ...] = (
    MetricGroup("requests", ("ModelRequests",), ("Total",), by_status=True),
    MetricGroup(
        "latency",
        ("TimeToLastByte", "NormalizedTimeToFirstToken"),
        ("Average", "Minimum", "Maximum", "Count"),
        by_status=False,
    ),
    MetricGroup(
        "tokens",
        (
            "InputTokens",
            "OutputTokens",
            "TotalTokens",
            "cacheReadInputTokens",
            "ephemeral5mInputTokens",
            "ephemeral1hInputTokens",
        ),
        ("Total",),
        by_status=False,
    ),
)
_CANONICAL_METRIC = {m.lower(): m for g in GROUPS for m in g.metrics}
_VALUE_COLUMNS = ("total", "count", "average", "minimum", "maximum")


class MetricsResultError(Exception):
    """The answer cannot be trusted as complete (cut by ``top``, or malformed)."""


# --------------------------------------------------------------------------- scopes


@dataclass
class ScopeResources:
    """The resources of one (subscription, region) and the deployments they hold."""

    subscription: str
    region: str
    #: lower-cased ARM id → deployment name (lower-cased) → deployments.id
    deployments: dict[str, dict[str, int]] = field(default_factory=dict)
    #: lower-cased ARM id → resources.id (to record deployments ARM does not list)
    resource_db_ids: dict[str, int] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        return f"/subscriptions/{self.subscription}/locations/{self.region}"

    @property
    def resource_ids(self) -> list[str]:
        return sorted(self.deployments)

    def batches(self) -> list[list[str]]:
        ids = self.resource_ids
        return [
            ids[i : i + MAX_RESOURCES_PER_CALL] for i in range(0, len(ids), MAX_RESOURCES_PER_CALL)
        ]

    def top(self, resource_ids: Sequence[str]) -> int:
        largest = max((len(self.deployments[r]) for r in resource_ids), default=0)
        return max(MIN_TOP, TOP_PER_DEPLOYMENT * (largest + 1))

    def chunk_length(self) -> timedelta:
        """Longest window whose largest response stays under ``POINT_BUDGET`` points."""
        worst = 0
        for batch in self.batches():
            deps = sum(max(1, len(self.deployments[r])) for r in batch)
            worst = max(worst, max(g.series_per_deployment for g in GROUPS) * deps)
        minutes = POINT_BUDGET // max(1, worst)
        length = timedelta(minutes=minutes)
        return max(MIN_CHUNK, min(MAX_CHUNK, length))


def load_scopes(conn: Connection, subscriptions: Iterable[str]) -> list[ScopeResources]:
    """Live resources of the configured subscriptions grouped by (subscription, region).

    Every deployment of a resource is mapped, deleted ones included: their minutes before the
    deletion still arrive in a backfill.
    """
    wanted = {s.lower(): s for s in subscriptions}
    resources = conn.execute(
        select(Resource.id, Resource.arm_id, Resource.subscription_id, Resource.location).where(
            Resource.deleted_at.is_(None)
        )
    ).all()
    by_id = {r.id: r for r in resources if r.subscription_id.lower() in wanted}
    scopes: dict[tuple[str, str], ScopeResources] = {}
    for r in by_id.values():
        sub = wanted[r.subscription_id.lower()]
        region = r.location.lower().replace(" ", "")
        s = scopes.setdefault((sub.lower(), region), ScopeResources(sub, region))
        s.deployments.setdefault(r.arm_id.lower(), {})
        s.resource_db_ids[r.arm_id.lower()] = r.id
    if not by_id:
        return []
    deps = conn.execute(
        select(Deployment.id, Deployment.resource_id, Deployment.name).where(
            Deployment.resource_id.in_(list(by_id))
        )
    ).all()
    for d in deps:
        r = by_id[d.resource_id]
        sub = wanted[r.subscription_id.lower()]
        region = r.location.lower().replace(" ", "")
        scopes[(sub.lower(), region)].deployments[r.arm_id.lower()][d.name.lower()] = d.id
    return sorted(scopes.values(), key=lambda s: (s.subscription.lower(), s.region))


# --------------------------------------------------------------------------- time


def floor_minute(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(second=0, microsecond=0)


def chunks(start: datetime, end: datetime, length: timedelta) -> list[tuple[datetime, datetime]]:
    out = []
    t = start
    while t < end:
        out.append((t, min(t + length, end)))
        t += length
    return out


def window_end(now: datetime) -> datetime:
    return floor_minute(now) - SETTLE


def window_start(watermark: datetime | None, default_start: datetime, now: datetime) -> datetime:
    """Watermark minus the overlap, else ``default_start``; never older than Azure keeps."""
    start = watermark - OVERLAP if watermark is not None else default_start
    oldest = floor_minute(now - AZURE_RETENTION) + timedelta(hours=1)
    return max(floor_minute(start), oldest)


# --------------------------------------------------------------------------- parsing


@dataclass
class Ignored:
    """Points of one non-Claude deployment the store does not know, on one resource."""

    model: str = ""
    points: int = 0


@dataclass
class Unlisted:
    """Points of one Claude-looking deployment the store does not know, on one resource.

    Kept until the write, which records the deployment and stores them under its new id.
    """

    name: str
    model: str = ""
    version: str = ""
    #: minute of the point the model/version were taken from (the newest wins)
    seen: datetime | None = None
    #: (minute, metric, status) → [total, count, average, minimum, maximum]
    points: dict[tuple[datetime, str, str], list[float | None]] = field(default_factory=dict)


@dataclass
class ChunkData:
    """What one chunk fetched: merged points, and what could not be mapped yet."""

    start: datetime
    end: datetime
    #: (deployment_id, minute, metric, status) → [total, count, average, minimum, maximum]
    points: dict[tuple[int, datetime, str, str], list[float | None]] = field(default_factory=dict)
    #: (lower-cased ARM id, lower-cased deployment name) → its points
    unlisted: dict[tuple[str, str], Unlisted] = field(default_factory=dict)
    ignored: dict[tuple[str, str], Ignored] = field(default_factory=dict)
    bare: int = 0

    def rows(self) -> Iterator[dict[str, Any]]:
        for (dep_id, minute, metric, status), values in self.points.items():
            row: dict[str, Any] = {
                "deployment_id": dep_id,
                "minute": minute,
                "metric": metric,
                "status_code": status,
            }
            row.update(zip(_VALUE_COLUMNS, values, strict=True))
            yield row


_METRIC_ID_RE = re.compile(r"^(.*?)/providers/microsoft\.insights/metrics(/|$)", re.IGNORECASE)


def resource_of(metric_id: str | None) -> str | None:
    """The resource id a metric id (``{resource}/providers/Microsoft.Insights/metrics/{name}``)
    belongs to, lower-cased; the SDK's result object does not carry ``resourceid`` itself."""
    if not metric_id:
        return None
    m = _METRIC_ID_RE.match(metric_id)
    return m.group(1).lower().rstrip("/") if m else None


def dimension(metadata: dict[str, Any] | None, name: str) -> str | None:
    """A dimension value by case-insensitive name (Azure answers ``modeldeploymentname``)."""
    if not metadata:
        return None
    wanted = name.lower()
    for key, value in metadata.items():
        if str(key).lower() == wanted:
            return "" if value is None else str(value)
    return None


def looks_like_claude(model: str | None) -> bool:
    """Whether a deployment discovery has not seen may be one it should have (a Claude one).

    An absent model name counts as Claude: better a deployment row too many than data dropped
    in silence.
    """
    return not model or "claude" in model.lower()


def merge(cell: list[float | None], values: Sequence[float | None]) -> None:
    """Combine two points of the same key (e.g. two series differing only by ModelName)."""
    total, count, average, minimum, maximum = values
    old_total, old_count, old_average = cell[0], cell[1], cell[2]
    if average is not None and old_average is not None:
        if count is not None and old_count is not None and count + old_count > 0:
            cell[2] = (old_average * old_count + average * count) / (old_count + count)
        else:
            cell[2] = None  # cannot weigh: better unknown than wrong
    elif average is not None:
        cell[2] = average
    cell[0] = _add(old_total, total)
    cell[1] = _add(old_count, count)
    cell[3] = (
        minimum if cell[3] is None else (cell[3] if minimum is None else min(cell[3], minimum))
    )
    cell[4] = (
        maximum if cell[4] is None else (cell[4] if maximum is None else max(cell[4], maximum))
    )


def put(cells: dict[Any, list[float | None]], key: Any, values: Sequence[float | None]) -> None:
    """Store ``values`` under ``key``, merged with what is already there."""
    cell = cells.get(key)
    if cell is None:
        cells[key] = list(values)
    else:
        merge(cell, values)


def _add(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def collect_result(
    data: ChunkData,
    group: MetricGroup,
    result: Any,
    resource_id: str,
    deployments: dict[str, int],
    top: int,
) -> None:
    """Fold one resource's ``MetricsQueryResult`` into ``data``."""
    for metric in result.metrics:
        name = _CANONICAL_METRIC.get((metric.name or "").lower())
        if name is None or name not in group.metrics:
            raise MetricsResultError(
                f"unexpected metric {metric.name!r} in the {group.name} answer"
            )
        series_list = metric.timeseries or []
        if len(series_list) >= top:
            raise MetricsResultError(
                f"{name} of {resource_id} returned {len(series_list)} series = top {top}: "
                "the answer may be cut; raise MIN_TOP/TOP_PER_DEPLOYMENT"
            )
        for series in series_list:
            meta = series.metadata_values
            dep_name = dimension(meta, DEPLOYMENT_DIM)
            if dep_name is None:
                raise MetricsResultError(
                    f"{name} of {resource_id}: a series without {DEPLOYMENT_DIM}"
                )
            status = ""
            if group.by_status:
                status = dimension(meta, STATUS_DIM)
                if status is None:
                    raise MetricsResultError(
                        f"{name} of {resource_id}: a series without {STATUS_DIM}"
                    )
                status = status.strip()[:8]
            dep_id = deployments.get(dep_name.lower())
            unlisted: Unlisted | None = None
            if dep_id is None:
                model = dimension(meta, MODEL_DIM) or ""
                if not looks_like_claude(model):
                    ignored = data.ignored.setdefault(
                        (resource_id, dep_name.lower()), Ignored(model=model)
                    )
                    ignored.points += sum(1 for _ in series.data or [])
                    continue
                unlisted = data.unlisted.setdefault(
                    (resource_id, dep_name.lower()), Unlisted(name=dep_name)
                )
            for point in series.data or []:
                values = (point.total, point.count, point.average, point.minimum, point.maximum)
                if all(v is None for v in values):
                    data.bare += 1
                    continue
                if point.timestamp is None:
                    raise MetricsResultError(f"{name} of {resource_id}: a point without timeStamp")
                minute = floor_minute(point.timestamp)
                if not data.start <= minute < data.end:
                    continue
                floats = [float(v) if v is not None else None for v in values]
                if unlisted is None:
                    put(data.points, (dep_id, minute, name, status), floats)
                    continue
                put(unlisted.points, (minute, name, status), floats)
                if unlisted.seen is None or minute >= unlisted.seen:
                    unlisted.seen = minute
                    unlisted.model = dimension(meta, MODEL_DIM) or unlisted.model
                    unlisted.version = dimension(meta, VERSION_DIM) or unlisted.version


_AGGREGATE_KEYS = ("total", "count", "average", "minimum", "maximum")


class RawAnswer:
    """azure-core ``cls`` hook: the batch answer as plain JSON with the bare points removed.

    Used with ``stream=True`` so the SDK hands over the undecoded body; ``query_resources``
    then builds its result objects from the dict this returns (it accepts dicts and JSON text).
    """

    def __init__(self) -> None:
        self.bare = 0

    def __call__(self, pipeline_response: Any, _deserialized: Any, _headers: Any) -> dict:
        response = pipeline_response.http_response
        response.read()
        try:
            doc = json.loads(response.content)
            if isinstance(doc, str):  # the SDK tolerates a JSON-encoded document; so do we
                doc = json.loads(doc)
        except ValueError as exc:
            raise MetricsResultError(f"malformed metrics answer: {exc}") from None
        values = doc.get("values") if isinstance(doc, dict) else None
        if not isinstance(values, list):
            raise MetricsResultError("malformed metrics answer: no 'values' list")
        for per_resource in values:
            for metric in per_resource.get("value") or []:
                for series in metric.get("timeseries") or []:
                    data = series.get("data") or []
                    kept = [p for p in data if any(p.get(k) is not None for k in _AGGREGATE_KEYS)]
                    self.bare += len(data) - len(kept)
                    series["data"] = kept
        return doc


def fetch_chunk(
    clients: AzureClients, scope: ScopeResources, start: datetime, end: datetime
) -> ChunkData:
    """All metric groups × resource batches of one scope for one window."""
    data = ChunkData(start=start, end=end)
    raw = RawAnswer()
    client = clients.metrics(scope.region)
    try:
        for batch in scope.batches():
            top = scope.top(batch)
            for group in GROUPS:
                results = client.query_resources(
                    resource_ids=batch,
                    metric_namespace=NAMESPACE,
                    metric_names=list(group.metrics),
                    timespan=(start, end),
                    granularity=GRAIN,
                    aggregations=list(group.aggregations),
                    max_results=top,
                    filter=group.filter,
                    stream=True,
                    cls=raw,
                    **RETRY_OPTIONS,
                )
                _fold(data, group, results, batch, scope, top)
        data.bare += raw.bare
    finally:
        client.close()
    return data


def _fold(
    data: ChunkData,
    group: MetricGroup,
    results: Sequence[Any],
    batch: Sequence[str],
    scope: ScopeResources,
    top: int,
) -> None:
    if len(results) != len(batch):
        raise MetricsResultError(
            f"{group.name}: {len(results)} results for {len(batch)} resources requested"
        )
    for i, result in enumerate(results):
        metrics = list(result.metrics)
        rid = next((resource_of(m.id) for m in metrics if resource_of(m.id)), None)
        if rid is None:
            rid = batch[i]  # no metric ids to tell: Azure answers in request order
        if rid not in scope.deployments:
            raise MetricsResultError(f"{group.name}: an answer for unrequested resource {rid}")
        collect_result(data, group, result, rid, scope.deployments[rid], top)


# --------------------------------------------------------------------------- writing


def _short(arm_id: str) -> str:
    return arm_id.rstrip("/").rsplit("/", 1)[-1]


def link_unlisted(
    conn: Connection, scope: ScopeResources, data: ChunkData, now: datetime
) -> tuple[int, list[str]]:
    """Record the chunk's unlisted deployments and move their points under their ids.

    Returns (deployments linked, names that could not be linked — a nameless series).
    """
    seen = {
        (scope.resource_db_ids[rid], u.name, u.model, u.version)
        for (rid, _), u in data.unlisted.items()
        if rid in scope.resource_db_ids and u.points
    }
    ids = record_unlisted(conn, seen, now) if seen else {}
    linked, lost = 0, []
    for (rid, lower), u in data.unlisted.items():
        if not u.points:
            continue
        dep_id = ids.get((scope.resource_db_ids.get(rid, -1), lower))
        if dep_id is None:
            lost.append(f"{_short(rid)}/{u.name or '(no name)'}")
            continue
        linked += 1
        for (minute, metric, status), values in u.points.items():
            put(data.points, (dep_id, minute, metric, status), values)
    return linked, lost


def write_chunk(conn: Connection, scope: ScopeResources, data: ChunkData, now: datetime) -> Written:
    """Upsert the chunk's points (those of unlisted deployments included) and the watermark."""
    linked, lost = link_unlisted(conn, scope, data, now)
    rows = upsert(conn, MetricPoint, data.rows()) if data.points else 0
    if data.points:
        touched = {dep_id for dep_id, *_ in data.points}
        coarse_rollups.refresh(conn, data.start, data.end, touched, parts=("metrics",))
    status, error = "ok", ""
    if linked:
        log.info(
            "%s on %s: recorded %d deployment(s) ARM does not list: %s",
            SOURCE,
            scope.scope,
            linked,
            sorted(f"{_short(r)}/{u.name}" for (r, _), u in data.unlisted.items() if u.points),
        )
    if lost:
        # never mappable (no deployment name): reported, not retried
        status = "partial"
        error = f"{SOURCE} on {scope.scope}: points of unnamed deployments dropped ({lost[0]})"
    if data.ignored:
        log.info(
            "%s on %s: ignored %d points of non-Claude deployments %s",
            SOURCE,
            scope.scope,
            sum(u.points for u in data.ignored.values()),
            sorted(f"{_short(r)}/{d} ({u.model})" for (r, d), u in data.ignored.items()),
        )
    previous = get_watermark(conn, SOURCE, scope.scope)
    if previous is None or data.end > previous:
        set_watermark(conn, SOURCE, scope.scope, data.end)
    return Written(
        rows=rows,
        status=status,
        error=error,
        window=(data.start, data.end),
        extra={"bare_points": data.bare, "unlisted_deployments": linked},
    )


# --------------------------------------------------------------------------- jobs


def _collect(
    ctx: JobContext,
    default_start: Callable[[datetime], datetime],
    progress: Callable[[int, int], None] | None,
    fill_back: bool = False,
) -> list[ScopeOutcome]:
    """Each scope from its watermark (minus the overlap) to now, chunk by chunk.

    ``fill_back`` (backfill): also fill what lies between ``default_start`` and the start of
    the stretch already collected (:func:`coverage_start`), newest chunk first, so the covered
    stretch stays one piece and a killed run resumes where it stopped.
    """
    now = ctx.clock()
    end = window_end(now)
    with ctx.engine.connect() as conn:
        scopes = load_scopes(conn, ctx.settings.subscriptions)
        plans = []
        for scope in scopes:
            wm = get_watermark(conn, SOURCE, scope.scope)
            start = window_start(wm, default_start(now), now)
            length = scope.chunk_length()
            plans.append((scope, chunks(start, end, length)))
            if fill_back and wm is not None:
                wanted = window_start(None, default_start(now), now)
                low = coverage_start(conn, SOURCE, scope.scope, wm)
                if low is not None and wanted < low:
                    plans.append((scope, list(reversed(chunks(wanted, low, length)))))
    total = sum(len(c) for _s, c in plans)
    done = 0
    if progress:
        progress(done, total)
    outcomes: list[ScopeOutcome] = []
    for scope, pieces in plans:
        for i, (c_start, c_end) in enumerate(pieces):
            if ctx.stopping():  # between chunks only: the one before committed whole
                return outcomes

            def write(conn: Connection, fetched: object, s: ScopeResources = scope) -> Written:
                return write_chunk(conn, s, fetched, ctx.clock())  # type: ignore[arg-type]

            outcome = run_scope(
                ctx,
                SOURCE,
                scope.scope,
                lambda clients, s=scope, a=c_start, b=c_end: fetch_chunk(clients, s, a, b),
                write,
                window=(c_start, c_end),
            )
            outcomes.append(outcome)
            done += 1
            if outcome.status == "failed":
                # the watermark did not reach this chunk's end (or, filling back, the covered
                # stretch did not reach back to its start): later chunks would leave a gap
                done += len(pieces) - i - 1
                if progress:
                    progress(done, total)
                break
            if progress:
                progress(done, total)
    return outcomes


def run(ctx: JobContext) -> list[ScopeOutcome]:
    """One incremental cycle: every (subscription, region) from its watermark to now."""
    return _collect(
        ctx, lambda now: floor_minute(now - timedelta(days=ctx.settings.retention_days)), None
    )


def backfill(
    ctx: JobContext, start: datetime, progress: Callable[[int, int], None] | None = None
) -> list[ScopeOutcome]:
    """Fill from ``start`` to now: forward from the watermarks (resumable), and back to
    ``start`` where the collected stretch begins later (no gaps, nothing read twice)."""
    return _collect(ctx, lambda _now: floor_minute(start), progress, fill_back=True)
