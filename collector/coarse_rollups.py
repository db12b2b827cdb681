"""Hour and day rollups of ``metric_points`` and ``latency_rollups``: what makes 30-day views fast.

Why: the store keeps metrics and latency histograms per *minute*. A 30-day view of 50
deployments would read ~2 M histogram rows and ~20 M metric rows, seconds of work on any
backend. The same rows summed per hour and per day are ~700× fewer, and they sum exactly:
totals and counts add, minima/maxima take min/max, averages are count-weighted, histograms
merge by adding bucket counts. A range is served by whole days, then whole hours, then minutes
at its ragged edges (``dashboard.queries.plan``), so results equal a minute-level scan.

Ownership: the collector calls ``refresh`` in the same transaction as each metrics or logs slice
it summarises (after ``collector.rollups.recompute_rollups``); the dashboard only reads. Tables:
``models.tables.MetricRollup`` and ``LatencyRollupCoarse`` (migration 0002).

Tables (same value columns as their minute sources, plus ``grain`` = ``'hour'`` | ``'day'``;
``bucket`` = the UTC start of the hour/day):

- ``metric_rollups``: deployment × grain × bucket × metric × status code → total, count,
  average (count-weighted), minimum, maximum.
- ``latency_rollups_coarse``: deployment × grain × bucket × status class → count, sum_ms, min_ms,
  max_ms, histogram (the merged histogram in ``collector.dense``'s binary form: a day holds
  hundreds of buckets, and numpy reads that form without parsing).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
)

from collector import dense, rollups
from models.db import upsert
from models.tables import Deployment, LatencyRollup, LatencyRollupCoarse, MetricPoint, MetricRollup

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
#: grain name → bucket length; minutes are the source tables themselves.
GRAINS = {"hour": HOUR, "day": DAY}
_ID_CHUNK = 200

metric_rollups = MetricRollup.__table__
latency_rollups_coarse = LatencyRollupCoarse.__table__


def floor_to(t: datetime, size: timedelta) -> datetime:
    """``t`` floored to a multiple of ``size`` since the epoch (UTC)."""
    t = t.astimezone(UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((t - epoch) // size) * size


def ceil_to(t: datetime, size: timedelta) -> datetime:
    floored = floor_to(t, size)
    return floored if floored == t.astimezone(UTC) else floored + size


def bucket_start(conn: Connection, column: Any, grain: str) -> Any:
    """SQL: the UTC start of the hour/day of a timestamp column, in the column's own storage.

    SQLite stores UTC text ``YYYY-MM-DD HH:MM:SS.ffffff``, so the bucket is a text prefix padded
    back to that format (so it compares and round-trips like any stored time). PostgreSQL's
    ``date_trunc`` on a ``timestamptz`` would use the session time zone, hence the UTC detour.
    """
    if conn.dialect.name == "sqlite":
        if grain == "hour":
            return func.substr(column, 1, 13).op("||")(literal_column("':00:00.000000'"))
        return func.substr(column, 1, 10).op("||")(literal_column("' 00:00:00.000000'"))
    utc = literal_column("'UTC'")
    return func.timezone(
        utc, func.date_trunc(literal_column(f"'{grain}'"), func.timezone(utc, column))
    )


def _ids(conn: Connection, deployment_ids: Iterable[int] | None) -> list[int]:
    if deployment_ids is not None:
        return sorted({int(i) for i in deployment_ids})
    return list(conn.execute(select(Deployment.id).order_by(Deployment.id)).scalars())


def refresh(
    conn: Connection,
    start: datetime,
    end: datetime,
    deployment_ids: Iterable[int] | None = None,
    parts: Iterable[str] = ("metrics", "latency"),
) -> int:
    """Recompute the hour and day rollups touching [start, end) from the minute tables.

    ``parts``: ``"metrics"`` (after the metrics job wrote ``metric_points``) and/or
    ``"latency"`` (after the logs job recomputed ``latency_rollups``).

    Hours are rebuilt from minutes, days from hours, so a cycle touching the current minute
    costs one hour (≤ 60 rows per series) and one day (≤ 24 rows per series). Days are only
    right if their other hours were refreshed before: run once over the whole retention window
    when the tables are introduced. Deleting then inserting makes it idempotent. Runs in the
    caller's transaction; returns rows written.
    """
    wanted = set(parts)
    ids = _ids(conn, deployment_ids)
    if not ids or end <= start:
        return 0
    written = 0
    hour_lo, hour_hi = floor_to(start, HOUR), ceil_to(end, HOUR)
    day = floor_to(start, DAY)
    # One day at a time, so a 30-day backfill holds one day of histograms in memory.
    while day < hour_hi:
        next_day = day + DAY
        lo, hi = max(hour_lo, day), min(hour_hi, next_day)
        for i in range(0, len(ids), _ID_CHUNK):
            chunk = ids[i : i + _ID_CHUNK]
            if "metrics" in wanted:
                written += _refresh_metrics(conn, chunk, "hour", lo, hi)
                written += _refresh_metrics(conn, chunk, "day", day, next_day)
            if "latency" in wanted:
                written += _refresh_latency(conn, chunk, "hour", lo, hi)
                written += _refresh_latency(conn, chunk, "day", day, next_day)
        day = next_day
    return written


def _refresh_metrics(
    conn: Connection, ids: list[int], grain: str, lo: datetime, hi: datetime
) -> int:
    target = metric_rollups
    conn.execute(
        delete(target).where(
            target.c.deployment_id.in_(ids),
            target.c.grain == grain,
            target.c.bucket >= lo,
            target.c.bucket < hi,
        )
    )
    if grain == "hour":
        src = MetricPoint.__table__
        time_col, where = src.c.minute, []
    else:
        src = target.alias("hours")
        time_col, where = src.c.bucket, [src.c.grain == "hour"]
    bucket = bucket_start(conn, time_col, grain)
    weighted = func.sum(src.c.average * src.c["count"])
    counted = func.sum(case((src.c.average.is_not(None), src.c["count"])))
    average = case((counted > 0, weighted / counted), else_=func.avg(src.c.average))
    query = (
        select(
            src.c.deployment_id,
            literal(grain),
            bucket,
            src.c.metric,
            src.c.status_code,
            func.sum(src.c.total),
            func.sum(src.c["count"]),
            average,
            func.min(src.c.minimum),
            func.max(src.c.maximum),
        )
        .where(src.c.deployment_id.in_(ids), time_col >= lo, time_col < hi, *where)
        .group_by(src.c.deployment_id, bucket, src.c.metric, src.c.status_code)
    )
    columns = [
        "deployment_id",
        "grain",
        "bucket",
        "metric",
        "status_code",
        "total",
        "count",
        "average",
        "minimum",
        "maximum",
    ]
    result = conn.execute(insert(target).from_select(columns, query))
    return max(result.rowcount or 0, 0)


def _refresh_latency(
    conn: Connection, ids: list[int], grain: str, lo: datetime, hi: datetime
) -> int:
    target = latency_rollups_coarse
    size = GRAINS[grain]
    if grain == "hour":
        src = LatencyRollup.__table__
        where = [src.c.bucket >= lo, src.c.bucket < hi]
    else:
        src = target
        where = [src.c.grain == "hour", src.c.bucket >= lo, src.c.bucket < hi]
    rows = conn.execute(
        select(
            src.c.deployment_id,
            src.c.bucket,
            src.c.status_class,
            src.c["count"],
            src.c.sum_ms,
            src.c.min_ms,
            src.c.max_ms,
            src.c.histogram,
        ).where(src.c.deployment_id.in_(ids), *where)
    )
    acc: dict[tuple[int, datetime, str], dict[str, Any]] = {}
    for dep, bucket, cls, count, sum_ms, min_ms, max_ms, hist in rows:
        key = (dep, floor_to(bucket, size), cls)
        a = acc.get(key)
        if a is None:
            a = acc[key] = {"count": 0, "sum_ms": 0.0, "min_ms": None, "max_ms": None, "h": []}
        a["count"] += count
        a["sum_ms"] += sum_ms or 0.0
        if min_ms is not None:
            a["min_ms"] = min_ms if a["min_ms"] is None else min(a["min_ms"], min_ms)
        if max_ms is not None:
            a["max_ms"] = max_ms if a["max_ms"] is None else max(a["max_ms"], max_ms)
        # Minute rows are small JSON dicts (merged as dicts, packed once per hour); hour rows
        # are dense already.
        a["h"].append(hist if grain == "hour" else dense.unpack(hist))
    conn.execute(
        delete(target).where(
            and_(
                target.c.deployment_id.in_(ids),
                target.c.grain == grain,
                target.c.bucket >= lo,
                target.c.bucket < hi,
            )
        )
    )
    if not acc:
        return 0
    return upsert(
        conn,
        target,
        (
            {
                "deployment_id": dep,
                "grain": grain,
                "bucket": bucket,
                "status_class": cls,
                "count": a["count"],
                "sum_ms": a["sum_ms"],
                "min_ms": a["min_ms"],
                "max_ms": a["max_ms"],
                "histogram": dense.pack(
                    dense.from_dict(rollups.merge(a["h"]))
                    if grain == "hour"
                    else dense.merge(a["h"])
                ),
            }
            for (dep, bucket, cls), a in sorted(acc.items())
        ),
    )
