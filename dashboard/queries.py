"""Read-only queries behind every dashboard page: plain functions, a Connection in, frames out.

Why they look like this:

- **Rollups, never raw rows, for ranges.** Counts and tokens come from ``metric_points``
  (Azure's own counters, complete within minutes); percentiles from the mergeable latency
  histograms of ``latency_rollups``. Where the hour/day rollups of ``collector.coarse_rollups``
  exist, a range is read as whole days + whole hours + the minutes at its edges (``plan``), so
  a 30-day view reads a few thousand rows instead of millions, with identical results. Only the
  request lookup touches ``requests``, by an indexed id.
- **Deployments are always named.** Every time-range query filters on an explicit
  ``deployment_id IN (...)``: both backends then walk the (deployment, time) primary key instead
  of scanning the table, whatever the number of deployments.
- **Latency is of successful requests** (status class 2xx), like Azure's latency metrics: a
  429 answered in 3 ms is not a model latency and would drag percentiles down exactly when
  things are worst.
- No function writes; the dashboard's engine refuses writes anyway (``dashboard.readonly``).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pandas as pd
from sqlalchemy import (
    BigInteger,
    Connection,
    Integer,
    String,
    Table,
    Text,
    case,
    cast,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
)

from alerts.budgets import SpendData, evaluate_budget, spend_range
from alerts.config import BudgetConfig
from collector import coarse_rollups as coarse
from collector import dense, rollups, spend
from models.tables import (
    Budget,
    CollectorRun,
    Cost,
    Deployment,
    LatencyRollup,
    MetricPoint,
    Price,
    Request,
    Resource,
    Watermark,
)

MINUTE = timedelta(minutes=1)
GRAIN_SIZE = {"minute": MINUTE, "hour": coarse.HOUR, "day": coarse.DAY}
REQUESTS = "ModelRequests"
TTLB = "TimeToLastByte"
NTTFT = "NormalizedTimeToFirstToken"
TOKEN_METRICS = {
    "InputTokens": "tokens_in",
    "OutputTokens": "tokens_out",
    "cacheReadInputTokens": "cache_read",
    "ephemeral5mInputTokens": "cache_write_5m",
    "ephemeral1hInputTokens": "cache_write_1h",
}
STATUS_CLASSES = ("2xx", "4xx", "429", "5xx", "other")
ERROR_CLASSES = ("401", "403", "404", "429", "4xx", "5xx")
#: What to check first for each error class (DESIGN §8: the fix, not just the code).
HINTS = {
    "401": "Credentials: the key or Entra ID token is wrong, expired, or for another audience "
    "(data plane tokens need https://cognitiveservices.azure.com).",
    "403": "Authorisation: the caller lacks an RBAC role on the Foundry resource "
    "(Cognitive Services User / Azure AI User), or network rules block it.",
    "404": "Deployment name or path: the request names a deployment that does not exist "
    "(deleted, renamed, typo) or a route Foundry does not serve.",
    "429": "Capacity: the deployment's rate limit was hit. Back off honouring Retry-After, "
    "spread load, or raise the quota / add deployments.",
    "4xx": "Request: malformed or unsupported request (model parameters, max_tokens, "
    "message shape). See the response body.",
    "5xx": "Service side: transient errors; retry with backoff. Persistent 5xx → check Azure "
    "status and open a support case with both request ids.",
}
_REQ_ID = re.compile(r"^req_[A-Za-z0-9]{8,64}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
#: Deployments per IN list.
_CHUNK = 500


# --------------------------------------------------------------------------- windows and plans


@dataclass(frozen=True)
class Window:
    """[start, end) in UTC. ``open_end``: end is "now", nothing later exists, so the bucket
    holding ``end`` may be read whole."""

    start: datetime
    end: datetime
    open_end: bool = False

    @property
    def span(self) -> timedelta:
        return self.end - self.start

    def previous(self) -> Window:
        """The same span just before: what KPI deltas compare against."""
        return Window(self.start - self.span, self.start, False)


def plan(window: Window, coarsest: str = "day") -> list[tuple[str, datetime, datetime]]:
    """Split a window into (grain, lo, hi) segments: whole days, whole hours, then minutes.

    Only buckets entirely inside the window are read at a coarse grain (or, with ``open_end``,
    the last bucket, which cannot hold anything after now); the ragged edges are minutes.
    """
    order = ["day", "hour", "minute"]
    grains = order[order.index(coarsest) :]
    start = coarse.floor_to(window.start, MINUTE)
    end = coarse.ceil_to(window.end, MINUTE)

    def split(lo: datetime, hi: datetime, open_end: bool, gs: list[str]) -> list[Any]:
        if lo >= hi:
            return []
        grain, rest = gs[0], gs[1:]
        if not rest:
            return [(grain, lo, hi)]
        size = GRAIN_SIZE[grain]
        a = coarse.ceil_to(lo, size)
        b = coarse.ceil_to(hi, size) if open_end else coarse.floor_to(hi, size)
        if a >= b:
            return split(lo, hi, open_end, rest)
        return [*split(lo, a, False, rest), (grain, a, b), *split(b, hi, open_end, rest)]

    return split(start, end, window.open_end, grains)


def coarsest_for(step: int | None) -> str:
    """The coarsest grain whose buckets fit whole in time steps of ``step`` seconds."""
    if step is None or step % 86400 == 0:
        return "day"
    if step % 3600 == 0:
        return "hour"
    return "minute"


#: Read whole hours/days from the coarse rollups (False: every range per minute). Both give
#: the same numbers; tests flip it to prove that.
READ_COARSE = True


def _epoch_bucket(conn: Connection, column: Any, step: int) -> Any:
    """SQL: start of the ``step``-second bucket of a timestamp, as epoch seconds."""
    if conn.dialect.name == "sqlite":
        # Integer division in SQL ("/" of two integers): SQLAlchemy's Python "/" would render
        # true division (x / (n + 0.0)) and leave every timestamp in a bucket of its own.
        epoch = cast(func.strftime("%s", column), Integer)
        size = literal_column(str(int(step)))
        return epoch.op("/")(size) * size
    # date_part is double precision; EXTRACT is numeric since PostgreSQL 14, and numeric
    # floor/divide per row made a 24-hour minute read (100 k+ rows) spend most of its time
    # here. Epoch seconds (~1.8e9, microsecond fractions) are exact enough in a double: an
    # exact multiple of ``step`` divides exactly, and no timestamp lies within rounding of one.
    epoch = func.date_part("epoch", column)
    return cast(func.floor(epoch / literal_column(f"{int(step)}.0")) * int(step), BigInteger)


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    ids = sorted(set(int(i) for i in ids))
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


def _segments(conn: Connection, window: Window, step: int | None) -> list[Any]:
    coarsest = coarsest_for(step) if READ_COARSE else "minute"
    return plan(window, coarsest)


# --------------------------------------------------------------------------- catalogue


def catalogue(conn: Connection) -> pd.DataFrame:
    """Every deployment with its resource: the filters' choices and the tables' labels."""
    rows = conn.execute(
        select(
            Deployment.id.label("deployment_id"),
            Deployment.name.label("deployment"),
            Deployment.model_name.label("model"),
            Deployment.model_version.label("version"),
            Deployment.sku_name.label("sku"),
            Deployment.capacity,
            Deployment.first_seen,
            Deployment.last_seen,
            Deployment.deleted_at,
            Resource.id.label("resource_id"),
            Resource.name.label("resource"),
            Resource.resource_group,
            Resource.subscription_id,
            Resource.location,
        )
        .join(Resource, Resource.id == Deployment.resource_id)
        .order_by(Resource.name, Deployment.name)
    ).all()
    columns = [
        "deployment_id",
        "deployment",
        "model",
        "version",
        "sku",
        "capacity",
        "first_seen",
        "last_seen",
        "deleted_at",
        "resource_id",
        "resource",
        "resource_group",
        "subscription_id",
        "location",
    ]
    frame = pd.DataFrame([tuple(r) for r in rows], columns=columns)
    if not frame.empty:
        # Two resources may both have a deployment "claude-sonnet-4-5": label with the resource.
        dup = frame["deployment"].duplicated(keep=False)
        frame["label"] = frame["deployment"].where(
            ~dup, frame["deployment"] + " (" + frame["resource"] + ")"
        )
    else:
        frame["label"] = pd.Series(dtype=str)
    return frame


def select_deployments(
    cat: pd.DataFrame,
    subscriptions: Sequence[str] = (),
    resource_ids: Sequence[int] = (),
    deployment_ids: Sequence[int] = (),
    models: Sequence[str] = (),
) -> list[int]:
    """Deployment ids matching every non-empty filter (empty filter = all)."""
    if cat.empty:
        return []
    mask = pd.Series(True, index=cat.index)
    if subscriptions:
        mask &= cat["subscription_id"].isin(list(subscriptions))
    if resource_ids:
        mask &= cat["resource_id"].isin(list(resource_ids))
    if deployment_ids:
        mask &= cat["deployment_id"].isin(list(deployment_ids))
    if models:
        mask &= cat["model"].isin(list(models))
    return [int(i) for i in cat.loc[mask, "deployment_id"]]


# --------------------------------------------------------------------------- metrics


def _metric_source(grain: str) -> tuple[Table, Any, list[Any]]:
    if grain == "minute":
        table = MetricPoint.__table__
        return table, table.c.minute, []
    table = coarse.metric_rollups
    return table, table.c.bucket, [table.c.grain == grain]


def metric_sums(
    conn: Connection,
    window: Window,
    ids: Sequence[int],
    metrics: Sequence[str],
    *,
    by_deployment: bool = True,
    by_status: bool = False,
    step: int | None = None,
) -> pd.DataFrame:
    """Per [deployment] × [time bucket] × metric × [status code]: total, count, average, min, max.

    ``average`` is count-weighted (so it is exact across minutes of different traffic); ``t`` is
    the UTC bucket start when ``step`` (seconds) is given.
    """
    keys = [
        *(["deployment_id"] if by_deployment else []),
        *(["t"] if step else []),
        "metric",
        *(["status_code"] if by_status else []),
    ]
    raw = ["total", "count", "wsum", "wcount", "asum", "an", "minimum", "maximum"]
    frames: list[pd.DataFrame] = []
    sqlite = conn.dialect.name == "sqlite"
    for grain, lo, hi in _segments(conn, window, step) if ids else []:
        table, time_col, extra = _metric_source(grain)
        # A step equal to the grain needs no bucketing: group by the stored time itself
        # (on SQLite, as text parsed once by pandas, instead of strftime on every row; on
        # PostgreSQL the timestamp, converted per group instead of an epoch per row).
        as_text = bool(step) and GRAIN_SIZE[grain].total_seconds() == step
        if not step:
            tcol = []
        elif as_text:
            tcol = [(type_coerce(time_col, String) if sqlite else time_col).label("t")]
        else:
            tcol = [_epoch_bucket(conn, time_col, step).label("t")]
        group = [
            *([table.c.deployment_id] if by_deployment else []),
            *tcol,
            table.c.metric,
            *([table.c.status_code] if by_status else []),
        ]
        has_avg = table.c.average.is_not(None)
        cols = [
            *group,
            func.sum(table.c.total),
            func.sum(table.c["count"]),
            func.sum(table.c.average * table.c["count"]),
            func.sum(case((has_avg, table.c["count"]))),
            func.sum(table.c.average),
            func.count(table.c.average),
            func.min(table.c.minimum),
            func.max(table.c.maximum),
        ]
        rows: list[Any] = []
        for chunk in _chunks(ids):
            query = (
                select(*cols)
                .where(
                    table.c.deployment_id.in_(chunk),
                    table.c.metric.in_(list(metrics)),
                    *extra,
                    time_col >= lo,
                    time_col < hi,
                )
                .group_by(*group)
            )
            rows.extend(conn.execute(query).all())
        if not rows:
            continue
        part = pd.DataFrame.from_records(rows, columns=[*keys, *raw], coerce_float=True)
        if as_text:
            fmt = "%Y-%m-%d %H:%M:%S.%f" if sqlite else None
            stamps = pd.to_datetime(part["t"], format=fmt, utc=True)
            part["t"] = (stamps - _EPOCH) // pd.Timedelta(seconds=1)
        frames.append(part)
    if not frames:
        frame = pd.DataFrame(columns=[*keys, *raw])
    elif len(frames) == 1:
        frame = frames[0]
    else:  # several segments (days + hours + minutes): fold rows with equal keys
        frame = pd.concat(frames, ignore_index=True)
        for col in raw:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
        frame = frame.groupby(keys, as_index=False, dropna=False).agg(
            **{c: (c, "sum") for c in raw[:6]},
            minimum=("minimum", "min"),
            maximum=("maximum", "max"),
        )
    for col in raw:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    weighted = frame["wsum"] / frame["wcount"].where(frame["wcount"] > 0)
    plain = frame["asum"] / frame["an"].where(frame["an"] > 0)
    frame["average"] = weighted.fillna(plain)
    if step:
        frame["t"] = pd.to_datetime(frame["t"].astype("int64"), unit="s", utc=True)
    return frame[[*keys, "total", "count", "average", "minimum", "maximum"]]


_EPOCH = pd.Timestamp(0, tz="UTC")


def status_totals(
    conn: Connection,
    window: Window,
    ids: Sequence[int],
    *,
    by_deployment: bool = True,
    step: int | None = None,
    top: int | None = None,
) -> pd.DataFrame:
    """requests, errors (4xx/5xx but 429), throttled (429) per [deployment] × [t], summed in SQL.

    For views that need the split but not every status code (30 days × 50 deployments × hours
    would otherwise return a quarter of a million rows). ``top``: only the ``top`` keys with
    the most failed (errors + 429) requests, ranked by the database when one segment suffices.
    """
    keys = [*(["deployment_id"] if by_deployment else []), *(["t"] if step else [])]
    segments = _segments(conn, window, step) if ids else []
    sqlite = conn.dialect.name == "sqlite"
    frames = []
    for grain, lo, hi in segments:
        table, time_col, extra = _metric_source(grain)
        # As in metric_sums: a step equal to the grain groups by the stored time itself (the
        # 24-hour top error minutes rank (deployment, minute) groups without per-row epochs).
        as_text = bool(step) and GRAIN_SIZE[grain].total_seconds() == step
        if not step:
            tcol = []
        elif as_text:
            tcol = [(type_coerce(time_col, String) if sqlite else time_col).label("t")]
        else:
            tcol = [_epoch_bucket(conn, time_col, step).label("t")]
        group = [*([table.c.deployment_id] if by_deployment else []), *tcol]
        code = table.c.status_code
        is_error = (code >= "400") & (code < "600") & (code != "429")
        errors = func.sum(case((is_error, table.c.total), else_=0))
        throttled = func.sum(case((code == "429", table.c.total), else_=0))
        cols = [*group, func.sum(table.c.total), errors, throttled]
        rows: list[Any] = []
        for chunk in _chunks(ids):
            where = [
                table.c.deployment_id.in_(chunk),
                table.c.metric == REQUESTS,
                *extra,
                time_col >= lo,
                time_col < hi,
            ]
            if top and len(segments) == 1 and group:
                rows.extend(_top_failed(conn, where, group, cols, code, table.c.total, top))
                continue
            query = select(*cols).where(*where)
            if group:
                query = query.group_by(*group)
            if top and len(segments) == 1:
                query = query.order_by((errors + throttled).desc(), *group).limit(top)
            rows.extend(conn.execute(query).all())
        if rows:
            part = pd.DataFrame.from_records(
                rows, columns=[*keys, "requests", "errors", "throttled"], coerce_float=True
            )
            if as_text:
                fmt = "%Y-%m-%d %H:%M:%S.%f" if sqlite else None
                stamps = pd.to_datetime(part["t"], format=fmt, utc=True)
                part["t"] = (stamps - _EPOCH) // pd.Timedelta(seconds=1)
            frames.append(part)
    values = ["requests", "errors", "throttled"]
    if not frames:
        frame = pd.DataFrame(columns=[*keys, *values])
    else:  # chunks hold disjoint deployments; segments may repeat a key: fold those
        frame = pd.concat(frames, ignore_index=True)
        for col in values:
            frame[col] = pd.to_numeric(frame[col]).fillna(0)
        if not keys:
            frame = pd.DataFrame([frame[values].sum()])
        elif len(frames) > 1:
            frame = frame.groupby(keys, as_index=False)[values].sum()
    for col in values:
        frame[col] = pd.to_numeric(frame[col]).fillna(0).round().astype("int64")
    frame["failed"] = frame["errors"] + frame["throttled"]
    denom = frame["requests"].where(frame["requests"] > 0)
    frame["error_pct"] = 100 * frame["errors"] / denom
    frame["throttled_pct"] = 100 * frame["throttled"] / denom
    if step and not frame.empty:
        frame["t"] = pd.to_datetime(frame["t"].astype("int64"), unit="s", utc=True)
    if top:
        frame = frame[frame["failed"] > 0].sort_values(
            ["failed", *keys], ascending=[False, *([True] * len(keys))]
        )
        frame = frame.head(top)
    return frame.reset_index(drop=True)


def _top_failed(
    conn: Connection,
    where: list[Any],
    group: list[Any],
    cols: list[Any],
    code: Any,
    total: Any,
    top: int,
) -> list[Any]:
    """``status_totals`` rows of the ``top`` groups with the most failed requests.

    Ranked in two steps: the database ranks the groups by the sum over their failed rows
    only (status 400–599, 429 included: errors + throttled), then totals the winners alone.
    Ranking every (deployment, minute) of a day with all three sums hashed ~70 k groups of
    ~110 k rows (spilling to disk); the failed rows alone are a third of that, in half the
    time. Groups without a failed request are never among the rows kept, as before.
    """
    failed = func.sum(total)
    ranked = conn.execute(
        select(*group, failed)
        .where(*where, code >= "400", code < "600")
        .group_by(*group)
        .having(failed > 0)
        .order_by(failed.desc(), *group)
        .limit(top)
    ).all()
    if not ranked:
        return []
    winners = {tuple(r[: len(group)]) for r in ranked}
    narrowed = [g.in_(sorted({w[i] for w in winners})) for i, g in enumerate(group)]
    rows = conn.execute(select(*cols).where(*where, *narrowed).group_by(*group)).all()
    return [r for r in rows if tuple(r[: len(group)]) in winners]


def status_class_of(code: Any) -> str:
    """Metric status codes are strings ('200', '429'); '' or junk is 'other'."""
    try:
        return rollups.status_class(int(str(code)))
    except ValueError:
        return "other"


def error_class_of(code: Any) -> str | None:
    """'401'/'403'/'404'/'429' by name, other 4xx/5xx as '4xx'/'5xx', successes None."""
    cls = status_class_of(code)
    if cls in ("2xx", "other"):
        return None
    text = str(code).strip()
    if text in ("401", "403", "404", "429"):
        return text
    return cls


def request_counts(
    conn: Connection,
    window: Window,
    ids: Sequence[int],
    *,
    by_deployment: bool = True,
    step: int | None = None,
) -> pd.DataFrame:
    """``ModelRequests`` per [deployment] × [t] × status code, with its status/error class."""
    totals = _metric_totals(
        conn, window, ids, [REQUESTS], by_deployment=by_deployment, by_status=True, step=step
    )
    if not totals:  # the empty frame (and dtypes) metric_sums gives, without a query
        frame = metric_sums(conn, window, [], [REQUESTS], by_deployment=by_deployment, step=step)
        return _counts(frame.assign(status_code=pd.Series(dtype=object)))
    return _counts_frame(totals, by_deployment, step)


def _metric_totals(
    conn: Connection,
    window: Window,
    ids: Sequence[int],
    metrics: Sequence[str],
    *,
    by_deployment: bool = True,
    by_status: bool = False,
    step: int | None = None,
) -> dict[tuple, float]:
    """{([deployment,] [t,] metric, [status code]): sum of ``total``}: ``metric_sums`` for
    the callers that only need totals (counts and tokens), folded in a plain dict.

    Why not ``metric_sums``: selecting only ``sum(total)`` keeps the rows the database groups
    narrow (the 24-hour 5-minute chart groups 110 k minute rows: with every aggregate column
    PostgreSQL sorted them on disk, with one it hashes them in memory), and a dict fold of a
    few thousand rows costs a fraction of building, concatenating and regrouping frames.
    ``t`` is the bucket start in epoch seconds. A group whose totals are all NULL is kept
    with 0.0 (``metric_sums`` gives NaN there, which its callers read as 0).
    """
    out: dict[tuple, float] = {}
    sqlite = conn.dialect.name == "sqlite"
    tpos = 1 if by_deployment else 0
    mpos = tpos + (1 if step else 0)
    for grain, lo, hi in _segments(conn, window, step) if ids else []:
        table, time_col, extra = _metric_source(grain)
        as_text = bool(step) and GRAIN_SIZE[grain].total_seconds() == step
        if not step:
            tcol = []
        elif as_text:  # as in metric_sums: group by the stored time, convert per group
            tcol = [type_coerce(time_col, String) if sqlite else time_col]
        else:
            tcol = [_epoch_bucket(conn, time_col, step)]
        # One metric: not a grouping column (PostgreSQL then estimates fewer groups and
        # hashes the chart's minute rows in memory where it sorted them on disk).
        single = metrics[0] if len(set(metrics)) == 1 else None
        group = [
            *([table.c.deployment_id] if by_deployment else []),
            *tcol,
            *([table.c.metric] if single is None else []),
            *([table.c.status_code] if by_status else []),
        ]
        stamps: dict[Any, int] = {}
        for chunk, a, b in _reads(ids, grain, lo, hi, step):
            where = [
                table.c.deployment_id.in_(chunk),
                table.c.metric.in_(list(metrics)),
                *extra,
                time_col >= a,
                time_col < b,
            ]
            if step and not as_text and not by_deployment:
                query = _bucketed_totals(conn, table, time_col, where, group[1:], step)
            else:
                query = select(*group, func.sum(table.c.total)).where(*where).group_by(*group)
            for row in conn.execute(query).all():
                key = list(row[:-1])
                if single is not None:
                    key.insert(mpos, single)
                if as_text:
                    raw = key[tpos]
                    t = stamps.get(raw)
                    if t is None:
                        t = stamps[raw] = _epoch_of(raw)
                    key[tpos] = t
                elif step:
                    key[tpos] = int(key[tpos])
                k = tuple(key)
                total = row[-1]
                out[k] = out.get(k, 0.0) + (0.0 if total is None else float(total))
    return out


#: Deployment-minutes one grouped read of minute rows covers at most (~45 k rows at the
#: usual two status codes a minute). The 24-hour chart of 50 deployments groups 110 k rows in
#: one read; whether PostgreSQL hashed them in memory or sorted them on disk (twice the time)
#: hung on its estimate of the groups, which moved from one ANALYZE to the next. In parts of
#: this size either plan fits the default work_mem.
_MINUTES_PER_READ = 20_000


def _reads(
    ids: Sequence[int], grain: str, lo: datetime, hi: datetime, step: int | None
) -> Iterable[tuple[list[int], datetime, datetime]]:
    """(deployments, lo, hi) of each read of a segment: deployments in chunks, and minutes
    in spans covering at most ``_MINUTES_PER_READ`` deployment-minutes (cut on step
    boundaries where a step fits, so a bucket is rarely split).
    Results are folded by key, so how a segment is cut does not change a sum."""
    for chunk in _chunks(ids):
        if grain != "minute":
            yield chunk, lo, hi
            continue
        span = max(MINUTE, _MINUTES_PER_READ // len(chunk) * MINUTE)
        align = timedelta(seconds=step) if step and timedelta(seconds=step) <= span else MINUTE
        size = span // align * align
        a = lo
        while a < hi:
            b = min(hi, coarse.floor_to(a + size, align))
            b = b if b > a else min(hi, a + size)
            yield chunk, a, b
            a = b


def _bucketed_totals(
    conn: Connection, table: Table, time_col: Any, where: list[Any], rest: list[Any], step: int
) -> Any:
    """SELECT bucket, *rest, sum(total) over all deployments, bucketed in two steps.

    The rows are first summed per stored time (× ``rest``), then those sums per step: the
    epoch of each of the 110 k minute rows of the 24-hour 5-minute chart cost more than the
    summing; per stored minute it is computed ~8 k times. Same sums (totals are counts).
    """
    inner_cols = [time_col.label("tt"), *rest]
    inner = select(*inner_cols, func.sum(table.c.total).label("s"))
    inner = inner.where(*where).group_by(*inner_cols).subquery()
    bucket = _epoch_bucket(conn, inner.c.tt, step)
    outer = [bucket, *(inner.c[c.name] for c in rest)]
    return select(*outer, func.sum(inner.c.s)).group_by(*outer)


def _epoch_of(value: Any) -> int:
    """A stored bucket time (PostgreSQL: aware datetime; SQLite: UTC text) as epoch seconds."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def _counts_frame(
    totals: dict[tuple, float], by_deployment: bool, step: int | None
) -> pd.DataFrame:
    """``_metric_totals`` of ``ModelRequests`` (by status) → the ``request_counts`` frame."""
    keys = [*(["deployment_id"] if by_deployment else []), *(["t"] if step else [])]
    n = len(keys)
    classes: dict[str, tuple[str, str | None]] = {}
    rows = []
    for k in sorted(totals):
        if k[n] != REQUESTS:
            continue
        code = k[n + 1]
        cls = classes.get(code)
        if cls is None:
            cls = classes[code] = (status_class_of(code), error_class_of(code))
        rows.append((*k[:n], code, *cls, round(totals[k])))
    frame = pd.DataFrame(
        rows, columns=[*keys, "status_code", "status_class", "error_class", "requests"]
    )
    frame["requests"] = frame["requests"].astype("int64")
    if step:
        frame["t"] = pd.to_datetime(frame["t"].astype("int64"), unit="s", utc=True)
    return frame


def _counts(frame: pd.DataFrame) -> pd.DataFrame:
    """``metric_sums`` rows of ``ModelRequests`` → request counts with their classes."""
    frame = frame[frame["metric"] == REQUESTS].rename(columns={"total": "requests"})
    frame["requests"] = frame["requests"].fillna(0).round().astype("int64")
    codes = frame["status_code"].unique()
    frame["status_class"] = frame["status_code"].map({c: status_class_of(c) for c in codes})
    frame["error_class"] = frame["status_code"].map({c: error_class_of(c) for c in codes})
    keys = [c for c in ("deployment_id", "t") if c in frame.columns]
    return frame[[*keys, "status_code", "status_class", "error_class", "requests"]]


def _token_totals(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``metric_sums`` rows of token metrics → one column per token kind, per key."""
    kinds = list(TOKEN_METRICS.values())
    tok = frame[frame["metric"].isin(list(TOKEN_METRICS))]
    if tok.empty:
        return pd.DataFrame(columns=[*keys, *kinds])
    tok = tok.assign(kind=tok["metric"].map(TOKEN_METRICS))
    if keys:  # groupby + unstack: the table pivot_table(aggfunc="sum") gives, with less overhead
        wide = tok.groupby([*keys, "kind"])["total"].sum().unstack("kind").reset_index()
    else:
        wide = pd.DataFrame([tok.groupby("kind")["total"].sum()])
    for kind in kinds:
        if kind not in wide.columns:
            wide[kind] = 0.0
    wide[kinds] = wide[kinds].fillna(0).round().astype("int64")
    wide.columns.name = None
    return wide[[*keys, *kinds]]


def summarize_counts(counts: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """requests, errors (4xx/5xx other than 429), throttled (429), error % and 429 % per key."""
    keys = list(keys)
    if counts.empty:
        return pd.DataFrame(
            columns=[*keys, "requests", "errors", "throttled", "error_pct", "throttled_pct"]
        )
    c = counts.assign(
        errors=counts["requests"].where(counts["status_class"].isin(["4xx", "5xx"]), 0),
        throttled=counts["requests"].where(counts["status_class"] == "429", 0),
    )
    if keys:
        out = c.groupby(keys, as_index=False)[["requests", "errors", "throttled"]].sum()
    else:
        out = pd.DataFrame([c[["requests", "errors", "throttled"]].sum()])
    denom = out["requests"].where(out["requests"] > 0)
    out["error_pct"] = 100 * out["errors"] / denom
    out["throttled_pct"] = 100 * out["throttled"] / denom
    return out


def token_sums(
    conn: Connection,
    window: Window,
    ids: Sequence[int],
    *,
    by_deployment: bool = True,
    step: int | None = None,
) -> pd.DataFrame:
    """Token totals (in, out, cache read/write) per [deployment] × [t], one column per kind."""
    frame = metric_sums(
        conn, window, ids, list(TOKEN_METRICS), by_deployment=by_deployment, step=step
    )
    keys = [c for c in ("deployment_id", "t") if c in frame.columns]
    return _token_totals(frame, keys)


def latency_metrics(
    conn: Connection, window: Window, ids: Sequence[int], *, step: int | None = None
) -> pd.DataFrame:
    """Azure's TimeToLastByte and NormalizedTimeToFirstToken: count-weighted mean, min, max."""
    frame = metric_sums(conn, window, ids, [TTLB, NTTFT], by_deployment=False, step=step)
    return frame


# --------------------------------------------------------------------------- latency histograms


def _latency_source(grain: str) -> tuple[Table, list[Any]]:
    if grain == "minute":
        return LatencyRollup.__table__, []
    table = coarse.latency_rollups_coarse
    return table, [table.c.grain == grain]


def latency(
    conn: Connection,
    window: Window,
    ids: Sequence[int],
    *,
    classes: Sequence[str] = ("2xx",),
    by_deployment: bool = True,
    step: int | None = None,
    ps: Sequence[float] = (50, 95, 99),
    hist_classes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Merged latency histograms per [deployment] × [t]: count, mean, min, max and percentiles.

    Columns ``p50``, ``p95``, ``p99`` (ms) are nearest-rank percentiles within
    ``collector.rollups.RELATIVE_ACCURACY`` of exact. ``count`` covers ``classes``; the
    latency columns only ``hist_classes`` (default: the same), so one read gives "requests
    logged" and "latency of successes" together.
    """
    keys = [*(["deployment_id"] if by_deployment else []), *(["t"] if step else [])]
    acc = _latency_acc(conn, window, ids, classes, hist_classes, by_deployment, step)
    return _latency_frame(acc, keys, ps, step)


def _latency_acc(
    conn: Connection,
    window: Window,
    ids: Sequence[int],
    classes: Sequence[str],
    hist_classes: Sequence[str] | None,
    by_deployment: bool,
    step: int | None,
) -> dict[tuple, list[Any]]:
    """key → [count, sum_ms, min_ms, max_ms, histogram parts], reading each row once.

    Histogram parts: one ``{key: count}`` dict merging the minute rows (JSON) and a list of
    ``dense.Dense`` from hour/day rows; ``_merged`` combines them.
    """
    hist_set = set(hist_classes if hist_classes is not None else classes)
    acc: dict[tuple, list[Any]] = {}
    if not ids:
        return acc
    counted_only = [c for c in classes if c not in hist_set]
    for grain, lo, hi in _segments(conn, window, step):
        if grain == "minute" and not step:
            _minute_latency(conn, lo, hi, ids, counted_only, hist_set, by_deployment, acc)
            continue
        table, extra = _latency_source(grain)
        cols = [
            table.c.deployment_id,
            table.c.bucket,
            table.c["count"],
            table.c.sum_ms,
            table.c.min_ms,
            table.c.max_ms,
            table.c.histogram,
        ]
        for chunk in _chunks(ids):
            where = [
                table.c.deployment_id.in_(chunk),
                *extra,
                table.c.bucket >= lo,
                table.c.bucket < hi,
            ]
            if counted_only:  # classes only counted: summed by the database, no histograms
                group = [table.c.deployment_id, *([table.c.bucket] if step else [])]
                counted = (
                    select(*group, func.sum(table.c["count"]))
                    .where(*where, table.c.status_class.in_(counted_only))
                    .group_by(*group)
                )
                for dep, *rest in conn.execute(counted).all():
                    bucket, count = rest if step else (None, rest[0])
                    key = ((dep,) if by_deployment else ()) + (
                        (int(bucket.timestamp()) // step * step,) if step else ()
                    )
                    a = acc.get(key)
                    if a is None:
                        a = acc[key] = [0, 0.0, None, None, ({}, [])]
                    a[0] += count
            query = select(*cols).where(*where, table.c.status_class.in_(sorted(hist_set)))
            # fetchall: iterating the result would fetch it row by row through the driver.
            for dep, bucket, count, sum_ms, min_ms, max_ms, hist in conn.execute(query).all():
                key: tuple = ()
                if by_deployment:
                    key += (dep,)
                if step:
                    key += (int(bucket.timestamp()) // step * step,)
                a = acc.get(key)
                if a is None:
                    a = acc[key] = [0, 0.0, None, None, ({}, [])]
                a[0] += count
                a[1] += sum_ms or 0.0
                if min_ms is not None:
                    a[2] = min_ms if a[2] is None else min(a[2], min_ms)
                if max_ms is not None:
                    a[3] = max_ms if a[3] is None else max(a[3], max_ms)
                if not hist:
                    continue
                if grain != "minute":
                    a[4][1].append(hist)
                    continue
                merged = a[4][0]
                get = merged.get
                for k, c in hist.items():
                    merged[k] = get(k, 0) + c
    return acc


def _minute_latency(
    conn: Connection,
    lo: datetime,
    hi: datetime,
    ids: Sequence[int],
    counted_only: Sequence[str],
    hist_set: set[str],
    by_deployment: bool,
    acc: dict[tuple, list[Any]],
) -> None:
    """``_latency_acc`` of minute rows without time steps: one row per [deployment].

    The database sums counts (every class asked for), sums and extremes (histogram classes)
    and joins the minute histograms' JSON texts, parsed here in one ``json.loads`` per
    deployment. Row by row, decoding ~1,400 small JSON documents per hour of 50 deployments
    was most of the time of the windows' ragged edges (and of the last hour's "worst now").
    """
    table = LatencyRollup.__table__
    sqlite = conn.dialect.name == "sqlite"
    hist_only = table.c.status_class.in_(sorted(hist_set))

    def only_hist(col: Any) -> Any:
        return case((hist_only, col))

    text = type_coerce(table.c.histogram, String) if sqlite else cast(table.c.histogram, Text)
    joined = (
        func.group_concat(only_hist(text), literal_column("','"), type_=String)
        if sqlite
        else func.string_agg(only_hist(text), literal_column("','"), type_=String)
    )
    group = [table.c.deployment_id] if by_deployment else []
    cols = [
        *group,
        func.sum(table.c["count"]),
        func.sum(only_hist(table.c.sum_ms)),
        func.min(only_hist(table.c.min_ms)),
        func.max(only_hist(table.c.max_ms)),
        joined,
    ]
    wanted = sorted(hist_set | set(counted_only))
    for chunk in _chunks(ids):
        query = select(*cols).where(
            table.c.deployment_id.in_(chunk),
            table.c.bucket >= lo,
            table.c.bucket < hi,
            table.c.status_class.in_(wanted),
        )
        if group:
            query = query.group_by(*group)
        for row in conn.execute(query).all():
            *key, count, sum_ms, min_ms, max_ms, hists = row
            if count is None:  # no rows (an ungrouped aggregate still answers one row)
                continue
            k = tuple(key)
            a = acc.get(k)
            if a is None:
                a = acc[k] = [0, 0.0, None, None, ({}, [])]
            a[0] += int(count)
            a[1] += sum_ms or 0.0
            if min_ms is not None:
                a[2] = min_ms if a[2] is None else min(a[2], min_ms)
            if max_ms is not None:
                a[3] = max_ms if a[3] is None else max(a[3], max_ms)
            if not hists:
                continue
            merged = a[4][0]
            get = merged.get
            for hist in json.loads(f"[{hists}]"):
                if hist:
                    for b, c in hist.items():
                        merged[b] = get(b, 0) + c


def _merged(parts: tuple[dict[str, int], list[bytes]]) -> dense.Dense:
    """One key's histogram: its minute rows' merged dict and its hour/day rows' packed
    ``collector.dense`` blobs."""
    minutes, blobs = parts
    hours = dense.merge_packed(blobs)
    return dense.merge([hours, dense.from_dict(minutes)] if minutes else [hours])


def _latency_frame(
    acc: dict[tuple, list[Any]], keys: list[str], ps: Sequence[float], step: int | None
) -> pd.DataFrame:
    pcols = [f"p{p:g}" for p in ps]
    rows = []
    for key, (count, sum_ms, min_ms, max_ms, parts) in acc.items():
        merged = _merged(parts)
        pcts = dense.percentiles(merged, ps) if ps else {}
        n = merged.total
        rows.append(
            (*key, count, sum_ms / n if n else None, min_ms, max_ms, *(pcts[p] for p in ps))
        )
    frame = pd.DataFrame(rows, columns=[*keys, "count", "mean_ms", "min_ms", "max_ms", *pcols])
    if step and not frame.empty:
        frame["t"] = pd.to_datetime(frame["t"], unit="s", utc=True)
    return frame.sort_values(keys).reset_index(drop=True) if keys else frame


# --------------------------------------------------------------------------- page summaries


def kpis(conn: Connection, window: Window, ids: Sequence[int]) -> dict[str, float | None]:
    """The Overview tiles for one window (call twice for the change vs the previous period)."""
    totals = _metric_totals(
        conn, window, ids, [REQUESTS, *TOKEN_METRICS], by_deployment=False, by_status=True
    )
    lat = latency(conn, window, ids, by_deployment=False)
    tiles = _tiles(_fold_totals(totals, by_deployment=False).get((), _EMPTY_FOLD))
    tiles["p95_ms"] = _num(lat["p95"].iloc[0]) if not lat.empty else None
    return tiles


#: ``_fold_totals`` of a key with no metric rows at all.
_EMPTY_FOLD = (0, 0, 0, 0, 0, False)


def _fold_totals(
    totals: dict[tuple, float], *, by_deployment: bool
) -> dict[tuple, tuple[int, int, int, int, int, bool]]:
    """``_metric_totals`` (by status) → per [deployment]: (requests, errors, throttled,
    tokens in, tokens out, has request rows), rounded as ``_counts``/``_token_totals`` round
    (each status code's request count, each token kind's total over its status codes)."""
    n = 1 if by_deployment else 0
    tokens: dict[tuple, float] = {}
    out: dict[tuple, list[Any]] = {}
    for k, total in totals.items():
        key, metric, code = k[:n], k[n], k[n + 1]
        if metric == REQUESTS:
            a = out.get(key)
            if a is None:
                a = out[key] = [0, 0, 0, 0, 0, True]
            c = round(total)
            a[0] += c
            cls = status_class_of(code)
            if cls in ("4xx", "5xx"):
                a[1] += c
            elif cls == "429":
                a[2] += c
        elif metric in ("InputTokens", "OutputTokens"):
            tk = (*key, metric)
            tokens[tk] = tokens.get(tk, 0.0) + total
    for tk, total in tokens.items():
        a = out.get(tk[:-1])
        if a is None:
            a = out[tk[:-1]] = [0, 0, 0, 0, 0, False]
        a[3 if tk[-1] == "InputTokens" else 4] += round(total)
    return {k: tuple(v) for k, v in out.items()}  # type: ignore[misc]


def _tiles(fold: tuple[int, int, int, int, int, bool]) -> dict[str, float | None]:
    """KPI tiles (without p95) from one ``_fold_totals`` value, as ``summarize_counts`` does."""
    requests, errors, throttled, tin, tout, has_rows = fold
    share = has_rows and requests > 0
    return {
        "requests": float(requests),
        "error_pct": 100 * errors / requests if share else None,
        "throttled_pct": 100 * throttled / requests if share else None,
        "p95_ms": None,
        "tokens_in": float(tin),
        "tokens_out": float(tout),
    }


def _num(value: Any) -> float | None:
    if value is None or pd.isna(value):
        return None
    return float(value)


def overview(
    conn: Connection, window: Window, ids: Sequence[int], cat: pd.DataFrame
) -> tuple[dict[str, float | None], pd.DataFrame]:
    """The Overview's tiles and per-deployment table for one window, each row read once.

    Table: one row per selected deployment (traffic, p50/p95/p99, error and 429 %, tokens).
    Deployments without metric counts fall back to the number of logged requests (``source``
    says which), so a store fed only by logs still shows traffic. The tiles' p95 merges the
    same per-deployment histograms.
    """
    totals = _metric_totals(conn, window, ids, [REQUESTS, *TOKEN_METRICS], by_status=True)
    return _overview(conn, window, ids, cat, totals)


def _overview(
    conn: Connection,
    window: Window,
    ids: Sequence[int],
    cat: pd.DataFrame,
    totals: dict[tuple, float],
) -> tuple[dict[str, float | None], pd.DataFrame]:
    """``overview`` from the window's ``_metric_totals`` (per deployment, by status), which
    ``overview_page`` shares with the spend estimate. Plain dicts, one frame built at the end:
    merging five small frames cost more than reading the rows."""
    per = _fold_totals(totals, by_deployment=True)
    acc = _latency_acc(conn, window, ids, STATUS_CLASSES, ("2xx",), True, None)
    lat: dict[int, tuple] = {}
    merged_all = []  # each deployment's histogram merged once, for its row and the tile
    for (dep,), a in acc.items():
        merged = _merged(a[4])
        merged_all.append(merged)
        p = dense.percentiles(merged, (50, 95, 99))
        lat[dep] = (a[0], p[50], p[95], p[99])
    base = cat[cat["deployment_id"].isin(ids)][
        ["deployment_id", "label", "deployment", "resource", "model"]
    ]
    nan = float("nan")
    cols: dict[str, list[Any]] = {
        c: []
        for c in (
            "requests",
            "errors",
            "throttled",
            "error_pct",
            "throttled_pct",
            "logged",
            "p50",
            "p95",
            "p99",
            "tokens_in",
            "tokens_out",
            "source",
        )
    }
    for dep in base["deployment_id"].tolist():
        requests, errors, throttled, tin, tout, has_rows = per.get((dep,), _EMPTY_FOLD)
        logged, p50, p95, p99 = lat.get(dep, (0, nan, nan, nan))
        share = has_rows and requests > 0
        cols["error_pct"].append(100 * errors / requests if share else nan)
        cols["throttled_pct"].append(100 * throttled / requests if share else nan)
        if requests == 0 and logged > 0:
            requests, source = logged, "logs"
        else:
            source = "metrics" if requests else "no data"
        for c, v in (
            ("requests", requests),
            ("errors", errors),
            ("throttled", throttled),
            ("logged", logged),
            ("p50", p50),
            ("p95", p95),
            ("p99", p99),
            ("tokens_in", tin),
            ("tokens_out", tout),
            ("source", source),
        ):
            cols[c].append(v)
    out = base.reset_index(drop=True)
    for c, values in cols.items():
        if c in ("requests", "errors", "throttled", "logged", "tokens_in", "tokens_out"):
            out[c] = pd.Series(values, dtype="int64")
        elif c == "source":
            out[c] = pd.Series(values)
        else:
            out[c] = pd.Series(values, dtype="float64")
    # Frame-built tables had these columns as objects when no row had a value (kept so).
    if not any(v[5] for v in per.values()):
        out[["error_pct", "throttled_pct"]] = out[["error_pct", "throttled_pct"]].astype(object)
    if not lat:
        out[["p50", "p95", "p99"]] = out[["p50", "p95", "p99"]].astype(object)
    table = out.sort_values(["requests", "label"], ascending=[False, True]).reset_index(drop=True)
    sums = [sum(x) for x in zip(*per.values(), strict=True)] if per else list(_EMPTY_FOLD)
    tiles = _tiles((*sums[:5], any(v[5] for v in per.values())))  # type: ignore[arg-type]
    tiles["p95_ms"] = dense.percentiles(dense.merge(merged_all), (95,))[95]
    return tiles, table


def deployment_table(
    conn: Connection, window: Window, ids: Sequence[int], cat: pd.DataFrame
) -> pd.DataFrame:
    """The per-deployment table of ``overview``."""
    return overview(conn, window, ids, cat)[1]


def top_error_times(
    conn: Connection, window: Window, ids: Sequence[int], n: int = 10
) -> tuple[str, pd.DataFrame]:
    """The busiest error minutes (windows up to 26 h), hours (up to 8 days) or days.

    Returns (unit, frame with t, deployment_id, requests, errors, throttled, failed, error_pct).
    Longer windows rank coarser buckets because ranking minutes over 30 days would mean
    reading every minute; the database does the ranking (ORDER BY … LIMIT).
    """
    if window.span <= timedelta(hours=26):
        step, unit = 60, "minute"
    elif window.span <= timedelta(days=8):
        step, unit = 3600, "hour"
    else:
        step, unit = 86400, "day"
    return unit, status_totals(conn, window, ids, step=step, top=n)


def throttle_bursts(series: pd.DataFrame, min_pct: float = 5.0, min_count: int = 3) -> list:
    """Contiguous runs of buckets whose 429 share is at least ``min_pct``: [(start, end)].

    ``series`` has ``t`` (sorted), ``throttled`` and ``throttled_pct``; the end of a run is the
    start of the first bucket after it (the caller's step added to the last bucket).
    """
    runs: list[list[Any]] = []
    hot = series[(series["throttled_pct"] >= min_pct) & (series["throttled"] >= min_count)]
    for t in hot["t"]:
        if runs and t - runs[-1][1] <= runs[-1][2]:
            runs[-1][1] = t
        else:
            runs.append([t, t, _gap(series)])
    return [(a, b) for a, b, _ in runs]


def _gap(series: pd.DataFrame) -> timedelta:
    ts = series["t"].sort_values()
    if len(ts) < 2:
        return timedelta(minutes=1)
    return (ts.diff().dropna().min()).to_pytimedelta()


# --------------------------------------------------------------------------- spend


def _day_bounds(first: date, last: date) -> Window:
    return Window(
        datetime(first.year, first.month, first.day, tzinfo=UTC),
        datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1),
    )


def _daily_totals(
    conn: Connection, window: Window, ids: Sequence[int], metrics: Sequence[str]
) -> dict[tuple[int, date, str], float]:
    """{(deployment, UTC day, metric): total} — ``metric_sums`` without pandas, for the few
    thousand rows a month of daily spend needs (its frame building would cost more than the
    query)."""
    out: dict[tuple[int, date, str], float] = defaultdict(float)
    for grain, lo, hi in _segments(conn, window, 86400) if ids else []:
        table, time_col, extra = _metric_source(grain)
        day = _epoch_bucket(conn, time_col, 86400).label("t")
        for chunk in _chunks(ids):
            query = (
                select(table.c.deployment_id, day, table.c.metric, func.sum(table.c.total))
                .where(
                    table.c.deployment_id.in_(chunk),
                    table.c.metric.in_(list(metrics)),
                    *extra,
                    time_col >= lo,
                    time_col < hi,
                )
                .group_by(table.c.deployment_id, day, table.c.metric)
            )
            for dep, t, metric, total in conn.execute(query).all():
                if total is not None:
                    d = datetime.fromtimestamp(int(t), UTC).date()
                    out[(int(dep), d, metric)] += float(total)
    return out


def estimated_spend(
    conn: Connection, first: date, last: date, ids: Sequence[int]
) -> list[spend.EstimatedSpend]:
    """``collector.spend.estimated_spend`` computed from day rollups instead of minutes.

    Same rows, same pricing (``spend.price_tokens``), but a 30-day range reads day buckets.
    """
    totals = _daily_totals(conn, _day_bounds(first, last), ids, list(TOKEN_METRICS))
    if not totals:
        return []
    deps = spend.deployment_facts(conn, (dep_id for dep_id, _day, _metric in totals))
    prices = _prices(conn)
    per: dict[tuple[int, date], dict[str, int]] = defaultdict(dict)
    for (dep_id, day, metric), total in totals.items():
        kind = spend.TOKEN_METRICS[metric.lower()]
        counts = per[(dep_id, day)]
        counts[kind] = counts.get(kind, 0) + round(total)
    return spend.price_token_counts(per, deps, prices)


def spend_data(conn: Connection, first: date, last: date) -> SpendData:
    """Estimated (from day rollups) and billed spend of every deployment, as the budget
    alerts see it (``alerts.budgets.SpendData``): one read serves charts and budgets."""
    all_ids = list(conn.execute(select(Deployment.id)).scalars())
    est = estimated_spend(conn, first, last, all_ids)
    billed = spend.billed_spend(conn, first, last, estimated=est)
    return SpendData(first, last, est, billed)


def daily_spend(conn: Connection, first: date, last: date, ids: Sequence[int]) -> pd.DataFrame:
    """``spend_frame`` of ``spend_data`` for the days ``first``..``last``."""
    all_ids = list(conn.execute(select(Deployment.id)).scalars())
    return spend_frame(spend_data(conn, first, last), ids, len(set(ids)) == len(all_ids))


def spend_frame(
    data: SpendData,
    ids: Sequence[int],
    everything: bool,
    first: date | None = None,
    last: date | None = None,
) -> pd.DataFrame:
    """Per day and deployment: estimated, billed (split of the group's bill), gap, and ``spend``
    (billed where the bill has arrived, else estimated) with ``basis`` saying which.

    Bills are split over *all* deployments of a group (the split needs every member), then
    the selection is kept. Unattributed bills (a group with no tokens that day) have
    ``deployment_id`` NaN and are kept only when ``everything`` is selected.
    """
    first = first or data.first
    last = last or data.last
    e = pd.DataFrame(
        [
            (
                x.day,
                x.deployment_id,
                _f(x.cost),
                x.currency,
                x.tokens,
                x.input_tokens,
                x.output_tokens,
            )
            for x in data.estimated
            if first <= x.day <= last
        ],
        columns=[
            "day",
            "deployment_id",
            "estimated",
            "currency",
            "tokens",
            "tokens_in",
            "tokens_out",
        ],
    )
    b = pd.DataFrame(
        [
            (x.day, x.deployment_id, _f(x.cost), x.currency, x.resource_group, x.model_name)
            for x in data.billed
            if first <= x.day <= last
        ],
        columns=["day", "deployment_id", "billed", "bill_currency", "bill_group", "bill_model"],
    )
    b = b.groupby(["day", "deployment_id"], as_index=False, dropna=False).agg(
        billed=("billed", "sum"),
        bill_currency=("bill_currency", "first"),
        bill_group=("bill_group", "first"),
        bill_model=("bill_model", "first"),
    )
    out = e.merge(b, on=["day", "deployment_id"], how="outer")
    out["currency"] = out["currency"].fillna(out["bill_currency"]).fillna("")
    out.loc[out["currency"] == "", "currency"] = out["bill_currency"].fillna("")
    out["gap"] = out["billed"] - out["estimated"]
    out["spend"] = out["billed"].fillna(out["estimated"])
    out["basis"] = out["billed"].notna().map({True: "billed", False: "estimated"})
    keep = out["deployment_id"].isin([int(i) for i in ids])
    if everything:
        keep |= out["deployment_id"].isna()
    out = out[keep].drop(columns=["bill_currency"])
    for col in ("tokens", "tokens_in", "tokens_out"):
        out[col] = out[col].fillna(0).astype("int64")
    return out.sort_values(["day", "deployment_id"]).reset_index(drop=True)


def budget_configs(conn: Connection) -> tuple[list[BudgetConfig], list[str]]:
    """The budgets the alerts mirrored into the ``budgets`` table, as ``BudgetConfig``."""
    configs, problems = [], []
    for row in conn.execute(select(*Budget.__table__.columns).order_by(Budget.name)):
        thresholds = row.thresholds or {}
        try:
            configs.append(
                BudgetConfig(
                    name=row.name,
                    scope=row.scope_kind,
                    pattern=row.scope_pattern or "*",
                    amount=Decimal(row.amount),
                    currency=row.currency,
                    thresholds=thresholds.get("percent") or [50.0, 80.0, 100.0],
                    forecast_thresholds=thresholds.get("forecast", [100.0]),
                    spend=row.spend_basis,
                    timezone=row.timezone or "UTC",
                )
            )
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            problems.append(f"budget {row.name}: {str(exc).splitlines()[0]}")
    return configs, problems


def budget_frame(configs: Sequence[BudgetConfig], data: SpendData, now: datetime) -> pd.DataFrame:
    """Month to date and forecast per budget, exactly as the budget alerts evaluate them."""
    rows = []
    for budget in configs:
        status = evaluate_budget(budget, data, now)
        f = status.forecast
        rows.append(
            {
                "name": budget.name,
                "scope": f"{budget.scope}: {budget.pattern}",
                "basis": budget.spend,
                "amount": float(budget.amount),
                "currency": budget.currency,
                "mtd": float(f.month_to_date),
                "forecast": None if f.month_end is None else float(f.month_end),
                "mtd_pct": status.actual_pct,
                "forecast_pct": status.forecast_pct,
                "known_through": f.known_through,
                "notes": "; ".join(status.notes),
            }
        )
    columns = ["name", "scope", "basis", "amount", "currency", "mtd", "forecast", "mtd_pct"]
    return pd.DataFrame(rows, columns=[*columns, "forecast_pct", "known_through", "notes"])


def spend_view(
    conn: Connection, first: date, last: date, ids: Sequence[int], now: datetime
) -> dict[str, Any]:
    """Everything the Spend page shows from one read of spend: the days ``first``..``last`` of
    the selection, and every budget (which may cover other deployments and days)."""
    configs, problems = budget_configs(conn)
    b_first, b_last = budget_range(configs, now)
    data = spend_data(conn, min(first, b_first), max(last, b_last))
    all_ids = list(conn.execute(select(Deployment.id)).scalars())
    everything = len(set(ids)) == len(all_ids)
    return {
        "daily": spend_frame(data, ids, everything, first, last),
        "budgets": budget_frame(configs, data, now),
        "problems": problems,
    }


def budget_range(configs: Sequence[BudgetConfig], now: datetime) -> tuple[date, date]:
    """Days a budget evaluation reads (its month and forecast lookback), up to today."""
    first, _last = spend_range(list(configs), now)
    return first, now.date()


def _f(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def top_meters(conn: Connection, first: date, last: date, n: int = 10) -> pd.DataFrame:
    """Cost per meter over the days (ActualCost), largest first."""
    rows = conn.execute(
        select(
            Cost.meter,
            Cost.meter_category,
            Cost.model_name,
            Cost.currency,
            func.sum(Cost.cost).label("cost"),
        )
        .where(Cost.cost_type == "ActualCost", Cost.day >= first, Cost.day <= last)
        .group_by(Cost.meter, Cost.meter_category, Cost.model_name, Cost.currency)
        .order_by(func.sum(Cost.cost).desc())
        .limit(n)
    ).all()
    frame = pd.DataFrame(
        [tuple(r) for r in rows], columns=["meter", "category", "model", "currency", "cost"]
    )
    frame["cost"] = frame["cost"].astype(float)
    return frame


# --------------------------------------------------------------------------- collector health


#: How old a source's last good run may be before every page warns (seconds).
def stale_after(source: str, interval_s: int) -> int:
    """A source is stale after 3 missed cycles (at least 10 minutes)."""
    return max(3 * interval_s, 600)


def last_runs(conn: Connection) -> pd.DataFrame:
    """The newest run per job and scope, with its numbers."""
    latest = (
        select(CollectorRun.job, CollectorRun.scope, func.max(CollectorRun.id).label("id"))
        .group_by(CollectorRun.job, CollectorRun.scope)
        .subquery()
    )
    rows = conn.execute(
        select(
            CollectorRun.job,
            CollectorRun.scope,
            CollectorRun.status,
            CollectorRun.started_at,
            CollectorRun.finished_at,
            CollectorRun.window_start,
            CollectorRun.window_end,
            CollectorRun.rows,
            CollectorRun.api_calls,
            CollectorRun.duration_ms,
            CollectorRun.error,
        )
        .join(latest, CollectorRun.id == latest.c.id)
        .order_by(CollectorRun.job, CollectorRun.scope)
    ).all()
    frame = pd.DataFrame(
        [tuple(r) for r in rows],
        columns=[
            "job",
            "scope",
            "status",
            "started_at",
            "finished_at",
            "window_start",
            "window_end",
            "rows",
            "api_calls",
            "duration_ms",
            "error",
        ],
    )
    frame["error"] = frame["error"].fillna("").map(lambda e: e.splitlines()[0] if e else "")
    return frame


def runs(conn: Connection, since: datetime, limit: int = 2000) -> pd.DataFrame:
    """Runs started since ``since``, newest first (rows and API calls per run)."""
    rows = conn.execute(
        select(
            CollectorRun.id,
            CollectorRun.job,
            CollectorRun.scope,
            CollectorRun.status,
            CollectorRun.started_at,
            CollectorRun.rows,
            CollectorRun.api_calls,
            CollectorRun.duration_ms,
            CollectorRun.error,
        )
        .where(CollectorRun.started_at >= since)
        .order_by(CollectorRun.started_at.desc())
        .limit(limit)
    ).all()
    frame = pd.DataFrame(
        [tuple(r) for r in rows],
        columns=[
            "id",
            "job",
            "scope",
            "status",
            "started_at",
            "rows",
            "api_calls",
            "duration_ms",
            "error",
        ],
    )
    frame["error"] = frame["error"].fillna("").map(lambda e: e.splitlines()[0] if e else "")
    return frame


def watermarks(conn: Connection, now: datetime) -> pd.DataFrame:
    rows = conn.execute(
        select(
            Watermark.source, Watermark.scope, Watermark.high_water, Watermark.updated_at
        ).order_by(Watermark.source, Watermark.scope)
    ).all()
    return pd.DataFrame(
        [
            {
                "source": w.source,
                "scope": w.scope,
                "high_water": w.high_water,
                "lag_s": (now - w.high_water).total_seconds(),
                "updated_at": w.updated_at,
            }
            for w in rows
        ],
        columns=["source", "scope", "high_water", "lag_s", "updated_at"],
    )


def freshness(conn: Connection, now: datetime, intervals: dict[str, int]) -> pd.DataFrame:
    """Per source: last successful finish over its scopes, and which scopes are stale.

    A source is stale when any of its scopes has not finished a good (ok/partial) run within
    ``stale_after`` — one failing workspace is worth a banner even if the others are fine. A
    source that never ran at all is ``never`` (the banner explains how to start collecting).
    ``stale_scopes`` lists the stale scopes with their last status, error line and age.
    """
    ok = (
        select(
            CollectorRun.job,
            CollectorRun.scope,
            func.max(CollectorRun.finished_at).label("last_ok"),
        )
        .where(CollectorRun.status.in_(["ok", "partial"]))
        .group_by(CollectorRun.job, CollectorRun.scope)
    )
    last_ok = {(r.job, r.scope): r.last_ok for r in conn.execute(ok)}
    latest = last_runs(conn)
    rows = []
    for source, interval in intervals.items():
        limit = stale_after(source, interval)
        mine = latest[latest["job"] == source]
        if mine.empty:
            rows.append((source, None, None, limit, "never", []))
            continue
        stale, newest = [], None
        for run in mine.itertuples():
            t = last_ok.get((source, run.scope))
            if t is not None and (newest is None or t > newest):
                newest = t
            if t is None or (now - t).total_seconds() > limit:
                stale.append(
                    {
                        "scope": run.scope or "(all)",
                        "status": run.status,
                        "error": run.error,
                        "age_s": None if t is None else (now - t).total_seconds(),
                    }
                )
        oldest_ok = [last_ok.get((source, s)) for s in mine["scope"]]
        ages = [(now - t).total_seconds() if t else None for t in oldest_ok]
        age = None if any(a is None for a in ages) else max(ages)
        rows.append((source, newest, age, limit, "stale" if stale else "fresh", stale))
    return pd.DataFrame(
        rows, columns=["source", "last_ok", "age_s", "stale_after_s", "state", "stale_scopes"]
    )


# --------------------------------------------------------------------------- request lookup


def id_kind(text: str) -> str | None:
    """'request-id' (req_…), 'apim-request-id' (UUID) or None when it is neither."""
    text = text.strip()
    if _REQ_ID.match(text):
        return "request-id"
    if _UUID.match(text):
        return "apim-request-id"
    return None


def find_request(conn: Connection, text: str) -> pd.DataFrame:
    """The stored request(s) with this Anthropic request id or Azure correlation id."""
    text = text.strip()
    kind = id_kind(text)
    if kind is None:
        return pd.DataFrame()
    cond = (
        Request.request_id == text
        if kind == "request-id"
        else or_(Request.correlation_id == text.lower(), Request.correlation_id == text)
    )
    rows = conn.execute(
        select(
            *Request.__table__.columns,
            Resource.name.label("resource"),
            Resource.location.label("region"),
        )
        .outerjoin(Resource, Resource.id == Request.resource_id)
        .where(cond)
        .order_by(Request.time)
        .limit(20)
    ).all()
    out = [dict(r._mapping) for r in rows]
    for d in out:
        d["resource"] = d["resource"] or ""
        d["region"] = d["region"] or ""
    return pd.DataFrame(out)


def request_context(
    conn: Connection, deployment_id: int, at: datetime, minutes: int = 15
) -> dict[str, pd.DataFrame]:
    """Around a request: its deployment's counts and p95 ±``minutes`` vs the previous 24 h."""
    around = Window(at - timedelta(minutes=minutes), at + timedelta(minutes=minutes + 1))
    usual = Window(at - timedelta(days=1), at - timedelta(minutes=minutes))
    out = {}
    for name, w in (("around", around), ("usual", usual)):
        counts = summarize_counts(request_counts(conn, w, [deployment_id]), [])
        lat = latency(conn, w, [deployment_id], by_deployment=False)
        row = counts.iloc[0].to_dict() if not counts.empty else {}
        row["p95"] = _num(lat["p95"].iloc[0]) if not lat.empty else None
        row["minutes"] = w.span.total_seconds() / 60
        out[name] = row
    return out


def with_labels(frame: pd.DataFrame, cat: pd.DataFrame) -> pd.DataFrame:
    """Add the deployment label (and model/resource) to a frame keyed by ``deployment_id``."""
    if frame.empty or "deployment_id" not in frame.columns:
        return frame.assign(label=pd.Series(dtype=str))
    return frame.merge(
        cat[["deployment_id", "label", "model", "resource"]], on="deployment_id", how="left"
    )


def overview_page(
    conn: Connection, window: Window, ids: Sequence[int], cat: pd.DataFrame, now: datetime
) -> dict[str, Any]:
    """Everything the Overview page reads, on one connection: ``overview`` (``tiles``,
    ``table``), ``kpis`` of the previous period (``previous``) and ``overview_spend``
    (``money``). The window's request and token totals are read once and shared: the
    table's tokens and the spend estimate of a window that is not whole days are the same
    rows, and reading them twice was a fifth of the page."""
    totals = _metric_totals(conn, window, ids, [REQUESTS, *TOKEN_METRICS], by_status=True)
    tiles, table = _overview(conn, window, ids, cat, totals)
    return {
        "tiles": tiles,
        "table": table,
        "previous": kpis(conn, window.previous(), ids),
        "money": overview_spend(conn, window, ids, now, token_totals=totals),
    }


def overview_spend(
    conn: Connection,
    window: Window,
    ids: Sequence[int],
    now: datetime,
    *,
    token_totals: dict[tuple, float] | None = None,
) -> dict[str, Any]:
    """Spend for the Overview from one read: month to date of the selection, per deployment
    the estimated cost of the window's tokens and the billed cost of the UTC days it touches,
    and the status of the budgets that cover everything (scope ``all``).

    ``token_totals``: the window's ``_metric_totals`` per deployment (by status or not) when
    the caller has read them already (``overview_page``). Returns ``{"mtd", "currency",
    "per_deployment", "budgets"}``.
    """
    today = now.date()
    first = window.start.date()
    last = (window.end - timedelta(microseconds=1)).date()
    month = today.replace(day=1)
    configs, _problems = budget_configs(conn)
    overall = [c for c in configs if c.scope == "all"]
    b_first, _ = budget_range(overall, now) if overall else (month, today)
    data = spend_data(conn, min(first, month, b_first), max(last, today))
    all_ids = list(conn.execute(select(Deployment.id)).scalars())
    days = _spend_days(data, ids, len(set(ids)) == len(all_ids))
    whole_days = window.start == coarse.floor_to(window.start, coarse.DAY) and (
        window.open_end or window.end == coarse.floor_to(window.end, coarse.DAY)
    )
    est_in: dict[int, list[float]] = defaultdict(list)
    billed_in: dict[int, list[float]] = defaultdict(list)
    mtd: list[float] = []
    currency = ""
    for (day, dep), (est, billed, cur) in days:
        if not currency and cur:
            currency = cur
        if first <= day <= last and dep is not None:
            if est is not None:
                est_in[dep].append(est)
            if billed is not None:
                billed_in[dep].append(billed)
        if month <= day <= today:
            value = billed if billed is not None else est
            if value is not None:
                mtd.append(value)
    if whole_days:  # the daily estimates are the window's estimate: no second read
        frame = pd.DataFrame(
            {
                "deployment_id": [int(i) for i in ids],
                "estimated": [math.fsum(est_in[i]) if est_in.get(i) else None for i in ids],
            }
        )
    else:
        frame = _window_estimate(conn, window, ids, token_totals)
    nan = float("nan")
    frame["billed"] = pd.Series(
        [math.fsum(billed_in[i]) if billed_in.get(i) else nan for i in frame["deployment_id"]],
        index=frame.index,
        dtype="float64",
    )
    return {
        "mtd": math.fsum(mtd),
        "currency": currency or "USD",
        "per_deployment": frame,
        "budgets": budget_frame(overall, data, now),
    }


def _spend_days(
    data: SpendData, ids: Sequence[int], everything: bool
) -> list[tuple[tuple[date, int | None], tuple[float | None, float | None, str]]]:
    """``spend_frame``'s rows as plain tuples, for the Overview's few sums: ((day,
    deployment), (estimated, billed, currency)) sorted by day then deployment (unattributed
    bills, deployment None, last), the same rows kept and the same currency per row."""
    est: dict[tuple[date, int | None], tuple[float | None, str]] = {}
    for x in data.estimated:
        est[(x.day, x.deployment_id)] = (_f(x.cost), x.currency)
    billed: dict[tuple[date, int | None], list[Any]] = {}
    for b in data.billed:
        key = (b.day, b.deployment_id)
        part = billed.get(key)
        if part is None:
            billed[key] = [[float(b.cost)], b.currency]
        else:
            part[0].append(float(b.cost))
    wanted = {int(i) for i in ids}
    rows = []
    for key in est.keys() | billed.keys():
        dep = key[1]
        if not (dep in wanted or (dep is None and everything)):
            continue
        e, e_cur = est.get(key, (None, None))
        bill = billed.get(key)
        b_cur = bill[1] if bill is not None else ""
        cur = e_cur if e_cur else (b_cur or "")
        rows.append((key, (e, math.fsum(bill[0]) if bill is not None else None, cur)))
    rows.sort(key=lambda r: (r[0][0], r[0][1] is None, r[0][1] or 0))
    return rows


def _prices(conn: Connection) -> dict[str, SimpleNamespace]:
    """``prices`` rows by normalised model, as plain objects (cheap attribute access)."""
    return {
        spend.normalize_model(r.model_name): SimpleNamespace(**r._mapping)
        for r in conn.execute(select(*Price.__table__.columns))
    }


def _window_estimate(
    conn: Connection,
    window: Window,
    ids: Sequence[int],
    totals: dict[tuple, float] | None = None,
) -> pd.DataFrame:
    """Estimated cost of the window's own tokens per deployment (tokens × price).

    ``totals``: ``_metric_totals`` per deployment of the window (by status or not), if read.
    """
    if totals is None:
        totals = _metric_totals(conn, window, ids, list(TOKEN_METRICS))
    per_metric: dict[tuple[int, str], float] = {}
    for key, total in totals.items():  # (dep, metric[, status code]): sum over status codes
        if key[1] in TOKEN_METRICS:
            k = (int(key[0]), key[1])
            per_metric[k] = per_metric.get(k, 0.0) + total
    models = dict(conn.execute(select(Deployment.id, Deployment.model_name)).all())
    prices = _prices(conn)
    per: dict[int, dict[str, int]] = defaultdict(dict)
    for (dep_id, metric), total in per_metric.items():
        kind = spend.TOKEN_METRICS[metric.lower()]
        per[dep_id][kind] = per[dep_id].get(kind, 0) + round(total)
    rows = []
    for dep_id in ids:
        price = prices.get(spend.normalize_model(models.get(dep_id, "")))
        counts = per.get(int(dep_id), {})
        est = float(spend.price_tokens(counts, price)) if price is not None else None
        rows.append((int(dep_id), est))
    return pd.DataFrame(rows, columns=["deployment_id", "estimated"])


def worst_now(conn: Connection, window: Window, ids: Sequence[int]) -> pd.DataFrame:
    """Per deployment over a short window: requests, error %, 429 %, p95 (the "worst now")."""
    totals = status_totals(conn, window, ids)
    lat = latency(conn, window, ids, ps=(95,))[["deployment_id", "p95"]]
    return totals.merge(lat, on="deployment_id", how="left")


def schema_state(conn: Connection) -> tuple[str | None, str]:
    """(current Alembic revision of the store, the revision this code expects)."""
    from alembic.runtime.migration import MigrationContext

    from models.migrations import head_revision

    return MigrationContext.configure(conn).get_current_revision(), head_revision()


# --------------------------------------------------------------------------- stored alerts
#
# Every alert the checker recorded is a row of ``alert_events`` (what: ``rule``/``kind``/
# ``threshold``; when: ``fired_at``; ``value``) with one ``alert_deliveries`` row per channel.
# The pages show them as stored: budget crossings on Spend, operational episodes and failed
# deliveries on Collector health. A delivery's ``last_error`` was scrubbed of channel secrets
# when it was written; it is scrubbed again here (URL paths and queries masked, secrets the
# process registered removed) and cut to one line, and only channel *names* are shown, never a
# channel's URL or login.

#: Delivery states in which a channel did not get its alert (see ``alerts.delivery``).
FAILED_DELIVERY = ("failed", "interrupted")
_ALERT_LIMIT = 500
_UNITS = {"rate_429": "%", "error_rate": "%", "latency_p95": "ms", "staleness": "s"}


def _anum(value: Any) -> float | None:
    """A stored number (or numeric text such as ``"80"`` or ``"190.00"``) as a float."""
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _deliveries(conn: Connection, event_ids: Sequence[int]) -> dict[int, list[Any]]:
    """``alert_event_id`` → its deliveries (channel, status, attempts, last_error), by channel."""
    from models.tables import AlertDelivery

    out: dict[int, list[Any]] = defaultdict(list)
    for chunk in _chunks(sorted(set(event_ids))):
        rows = conn.execute(
            select(
                AlertDelivery.alert_event_id,
                AlertDelivery.channel,
                AlertDelivery.status,
                AlertDelivery.attempts,
                AlertDelivery.last_error,
                AlertDelivery.delivered_at,
            )
            .where(AlertDelivery.alert_event_id.in_(chunk))
            .order_by(AlertDelivery.channel)
        )
        for row in rows:
            out[int(row.alert_event_id)].append(row)
    return out


def delivery_text(deliveries: Sequence[Any], details: dict[str, Any] | None = None) -> str:
    """``mail: sent · slack: failed (3 attempts)``; why nothing was sent when no channel got it."""
    if not deliveries:
        superseded = (details or {}).get("superseded_by")
        if superseded:
            return f"not sent (superseded by the {superseded} % alert of the same check)"
        return "not sent (no channel)"
    parts = []
    for d in deliveries:
        status = d.status
        if status in FAILED_DELIVERY:
            status += f" ({d.attempts} attempt{'s' if d.attempts != 1 else ''})"
        parts.append(f"{d.channel}: {status}")
    return " · ".join(parts)


def safe_error(text: str | None) -> str:
    """A delivery error as one line without secrets (see ``alerts.secrets.scrub``)."""
    from alerts.secrets import scrub

    first = (text or "").strip().splitlines()
    return scrub(first[0])[:300] if first else ""


def _alert_events(conn: Connection, *where: Any) -> list[Any]:
    from models.tables import AlertEvent

    return list(
        conn.execute(
            select(
                AlertEvent.id,
                AlertEvent.rule,
                AlertEvent.period,
                AlertEvent.threshold,
                AlertEvent.kind,
                AlertEvent.fired_at,
                AlertEvent.value,
                AlertEvent.message,
                AlertEvent.details,
            )
            .where(*where)
            .order_by(AlertEvent.fired_at.desc(), AlertEvent.id.desc())
            .limit(_ALERT_LIMIT)
        ).all()
    )


def budget_count(conn: Connection) -> int:
    """Budgets the alerts job mirrored into the store (``alerts.budgets.sync_budget_table``)."""
    return int(conn.execute(select(func.count()).select_from(Budget)).scalar_one())


def _budgets_covering(conn: Connection, ids: Sequence[int]) -> set[str]:
    """Names of the stored budgets whose scope covers at least one of the deployments."""
    from alerts.budgets import in_scope

    configs, _problems = budget_configs(conn)
    deps = []
    for chunk in _chunks(list(ids)):
        for row in conn.execute(
            select(
                Deployment.name,
                Deployment.model_name,
                Resource.subscription_id,
                Resource.resource_group,
                Resource.arm_id,
            )
            .join(Resource, Resource.id == Deployment.resource_id)
            .where(Deployment.id.in_(chunk))
        ):
            deps.append(
                SimpleNamespace(
                    deployment_name=row.name,
                    model_name=row.model_name,
                    subscription_id=row.subscription_id,
                    resource_group=row.resource_group,
                    resource_arm_id=row.arm_id,
                )
            )
    return {b.name for b in configs if any(in_scope(b, d) for d in deps)}


def budget_alerts(
    conn: Connection, start: datetime, end: datetime, ids: Sequence[int] | None = None
) -> pd.DataFrame:
    """Budget alerts fired in ``[start, end)``, newest first, with per-channel delivery.

    ``ids``: the sidebar's deployments when it filters (None = everything): then only the
    budgets whose scope covers one of them are kept (scope ``all`` covers every deployment; a
    budget no longer configured is shown only unfiltered, its scope being unknown).
    ``value_pct`` is the month-to-date (``actual``) or forecast month-end (``forecast``) share
    of the budget when it fired; ``spend`` the amount behind it, in the budget's currency.
    """
    from models.tables import AlertEvent

    columns = [
        "fired_at",
        "budget",
        "kind",
        "threshold_pct",
        "value_pct",
        "spend",
        "budget_amount",
        "currency",
        "month",
        "delivery",
        "message",
    ]
    events = _alert_events(
        conn,
        AlertEvent.rule.like("budget:%"),
        AlertEvent.fired_at >= start,
        AlertEvent.fired_at < end,
    )
    keep = None if ids is None else _budgets_covering(conn, ids)
    deliveries = _deliveries(conn, [e.id for e in events])
    rows = []
    for e in events:
        name = e.rule.split(":", 1)[1]
        if keep is not None and name not in keep:
            continue
        details = e.details or {}
        spent = details.get("forecast") if e.kind == "forecast" else details.get("month_to_date")
        rows.append(
            (
                e.fired_at,
                name,
                e.kind,
                _anum(e.threshold),
                e.value,
                _anum(spent),
                _anum(details.get("amount")),
                details.get("currency") or "",
                e.period,
                delivery_text(deliveries.get(e.id, []), details),
                e.message,
            )
        )
    return pd.DataFrame(rows, columns=columns)


def operational_alerts(conn: Connection, start: datetime, end: datetime) -> pd.DataFrame:
    """Operational alert episodes (one firing, at most one resolve) active in ``[start, end)``:
    fired before ``end`` and open, or resolved at or after ``start``. Open ones first.

    ``value`` is the reading that fired (``unit``: % for rates, ms for p95, s for staleness);
    ``resolved_value`` the one that cleared it (None when its subject disappeared).
    """
    from alerts.config import RULE_LABELS
    from models.tables import AlertEvent

    columns = [
        "state",
        "rule",
        "check",
        "subject",
        "threshold",
        "value",
        "unit",
        "fired_at",
        "resolved_at",
        "resolved_value",
        "delivery",
        "message",
    ]
    events = _alert_events(
        conn,
        AlertEvent.rule.like("rule:%"),
        AlertEvent.kind.in_(["firing", "resolved"]),
        AlertEvent.fired_at < end,
    )
    firing = {(e.rule, e.period): e for e in events if e.kind == "firing"}
    resolved = {(e.rule, e.period): e for e in events if e.kind == "resolved"}
    deliveries = _deliveries(conn, [e.id for e in events])
    rows = []
    for key, f in firing.items():
        r = resolved.get(key)
        if r is not None and r.fired_at < start:
            continue  # over before the range began
        details = f.details or {}
        kind = details.get("rule_kind", "")
        parts = f.rule.split(":", 2)
        delivery = delivery_text(deliveries.get(f.id, []))
        if r is not None and deliveries.get(r.id):
            delivery += f" | resolve: {delivery_text(deliveries[r.id])}"
        rows.append(
            (
                "open" if r is None else "resolved",
                parts[1] if len(parts) > 1 else f.rule,
                RULE_LABELS.get(kind, kind),
                details.get("subject") or (parts[2] if len(parts) > 2 else ""),
                f.threshold,
                f.value,
                _UNITS.get(kind, ""),
                f.fired_at,
                None if r is None else r.fired_at,
                None if r is None else r.value,
                delivery,
                f.message,
            )
        )
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return frame
    frame["_open"] = frame["state"] == "open"
    frame = frame.sort_values(["_open", "fired_at"], ascending=False, kind="stable")
    return frame.drop(columns=["_open"]).reset_index(drop=True)


def failed_deliveries(conn: Connection, start: datetime, end: datetime) -> pd.DataFrame:
    """Deliveries that did not reach their channel, of alerts fired in ``[start, end)``.

    Only the channel's name and a scrubbed one-line error: never its URL, token or login.
    """
    from models.tables import AlertDelivery, AlertEvent

    rows = conn.execute(
        select(
            AlertEvent.fired_at,
            AlertEvent.rule,
            AlertEvent.kind,
            AlertEvent.threshold,
            AlertDelivery.channel,
            AlertDelivery.status,
            AlertDelivery.attempts,
            AlertDelivery.last_error,
        )
        .join(AlertEvent, AlertEvent.id == AlertDelivery.alert_event_id)
        .where(
            AlertDelivery.status.in_(FAILED_DELIVERY),
            AlertEvent.fired_at >= start,
            AlertEvent.fired_at < end,
        )
        .order_by(AlertEvent.fired_at.desc(), AlertDelivery.channel)
        .limit(_ALERT_LIMIT)
    ).all()
    out = []
    for r in rows:
        parts = r.rule.split(":", 2)
        what = " ".join(p for p in (parts[0], parts[1] if len(parts) > 1 else "") if p)
        subject = f" on {parts[2]}" if len(parts) > 2 else ""
        out.append(
            (
                r.fired_at,
                f"{what}{subject}: {r.kind} {r.threshold}",
                r.channel,
                r.status,
                int(r.attempts or 0),
                safe_error(r.last_error),
            )
        )
    return pd.DataFrame(
        out, columns=["fired_at", "alert", "channel", "status", "attempts", "error"]
    )
