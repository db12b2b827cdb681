"""Latency rollups: per deployment, minute and status class, a count, a sum and a histogram.

Why histograms: the dashboard must answer "p95 of this deployment over the last 30 days" without
scanning millions of raw request rows, and percentiles do not add up; histograms do. A histogram
here is DDSketch's logarithmic bucketing (``ddsketch.mapping.LogarithmicMapping``) stored as a
plain JSON dict ``{bucket key: count}``, so any set of minutes merges by adding counts.

Accuracy: ``RELATIVE_ACCURACY = 0.005``. Every value in a bucket is within 0.5 % of the bucket's
representative value, so a percentile read from a (merged) histogram is within 0.5 % of the exact
percentile, half the 1 % the product promises, leaving room for floating-point edges. A minute
with requests of 1 ms to 10 min needs at most ~1,300 keys; in practice a minute holds a few
dozen.

Percentile definition (the "exact" one this matches): nearest rank, i.e. the smallest recorded
value ``v`` such that at least ``p`` % of the values are ``<= v`` (sorted index
``ceil(p / 100 * n) - 1``, clamped to 0); Kusto's ``percentile()`` uses the same rank.

Rollups are *recomputed* from the ``requests`` rows of the touched minutes, never incremented,
so a re-run, an overlapping window or a late row always ends in the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from ddsketch.mapping import LogarithmicMapping
from sqlalchemy import Connection, delete, select

from models.db import upsert
from models.tables import LatencyRollup, Request

#: Relative accuracy of the histogram buckets (alpha in the DDSketch paper).
RELATIVE_ACCURACY = 0.005
#: Key of the bucket holding zero (and, defensively, negative) durations: log buckets cannot.
ZERO_KEY = "z"
#: Status classes, in the order a reader lists them.
STATUS_CLASSES = ("2xx", "4xx", "429", "5xx", "other")
#: Deployments per ``IN (...)`` list, far below every backend's bind-parameter limit.
_ID_CHUNK = 500
_MINUTE = timedelta(minutes=1)

Histogram = dict[str, int]


@lru_cache(maxsize=1)
def _mapping() -> LogarithmicMapping:
    return LogarithmicMapping(RELATIVE_ACCURACY)


def bucket_key(value: float) -> str:
    """The histogram key of one value (a JSON object key, hence a string)."""
    mapping = _mapping()
    if not value > mapping.min_possible:  # also catches NaN
        return ZERO_KEY
    return str(mapping.key(value))


def bucket_value(key: str) -> float:
    """The representative value of a bucket: within ``RELATIVE_ACCURACY`` of all its values."""
    return 0.0 if key == ZERO_KEY else _mapping().value(int(key))


def _order(key: str) -> float:
    return -math.inf if key == ZERO_KEY else int(key)


def add(histogram: Mapping[str, int] | None, values: Iterable[float]) -> Histogram:
    """A new histogram: ``histogram`` (may be None/empty) plus ``values``."""
    out: Histogram = dict(histogram or {})
    for value in values:
        key = bucket_key(value)
        out[key] = out.get(key, 0) + 1
    return out


def histogram(values: Iterable[float]) -> Histogram:
    """The histogram of ``values``."""
    return add(None, values)


def merge(histograms: Iterable[Mapping[str, int] | None]) -> Histogram:
    """The histogram of the union of the histograms' values (counts add per bucket)."""
    out: Histogram = {}
    for hist in histograms:
        for key, count in (hist or {}).items():
            out[key] = out.get(key, 0) + int(count)
    return out


def total(histogram: Mapping[str, int] | None) -> int:
    return sum(int(c) for c in (histogram or {}).values())


def percentiles(
    histogram: Mapping[str, int] | None, ps: Sequence[float] = (50, 95, 99)
) -> dict[float, float | None]:
    """Nearest-rank percentiles ``{p: value}``; ``None`` for each ``p`` if the histogram is empty.

    Each value is within ``RELATIVE_ACCURACY`` of the exact nearest-rank percentile of the values
    the histogram was built from (see the module docstring).
    """
    items = sorted(((k, int(c)) for k, c in (histogram or {}).items() if int(c) > 0), key=_key0)
    n = sum(c for _, c in items)
    if n == 0:
        return {p: None for p in ps}
    result: dict[float, float | None] = {}
    for p in ps:
        if not 0 <= p <= 100:
            raise ValueError(f"percentile {p} is outside 0..100")
        rank = max(1, math.ceil(p / 100 * n))  # 1-based rank of the wanted value
        seen = 0
        for key, count in items:
            seen += count
            if seen >= rank:
                result[p] = bucket_value(key)
                break
    return result


def _key0(item: tuple[str, int]) -> float:
    return _order(item[0])


def status_class(status: int | None) -> str:
    """'2xx', '4xx' (except 429), '429', '5xx', else 'other' (1xx, 3xx, unknown)."""
    if status is None:
        return "other"
    if status == 429:
        return "429"
    if 200 <= status < 300:
        return "2xx"
    if 400 <= status < 500:
        return "4xx"
    if 500 <= status < 600:
        return "5xx"
    return "other"


def floor_minute(t: datetime) -> datetime:
    t = t.astimezone(UTC)
    return t.replace(second=0, microsecond=0)


def ceil_minute(t: datetime) -> datetime:
    floored = floor_minute(t)
    return floored if floored == t.astimezone(UTC) else floored + _MINUTE


@dataclass
class _Acc:
    count: int = 0
    sum_ms: float = 0.0
    min_ms: float | None = None
    max_ms: float | None = None
    hist: Histogram = field(default_factory=dict)

    def add(self, duration: float | None) -> None:
        self.count += 1
        if duration is None:
            return  # counted as a request, but there is no latency to bucket
        self.sum_ms += duration
        self.min_ms = duration if self.min_ms is None else min(self.min_ms, duration)
        self.max_ms = duration if self.max_ms is None else max(self.max_ms, duration)
        key = bucket_key(duration)
        self.hist[key] = self.hist.get(key, 0) + 1


def recompute_rollups(
    conn: Connection,
    deployment_ids: Iterable[int],
    start: datetime,
    end: datetime,
) -> int:
    """Rebuild ``latency_rollups`` of ``deployment_ids`` for the minutes touching [start, end).

    The minute buckets from ``floor(start)`` to ``ceil(end)`` are deleted and recomputed from the
    ``requests`` rows (request ``time`` = when the request started), so a minute that lost its
    requests loses its rollup rows too. Requests without a deployment id are not rolled up.
    A request without a duration counts in ``count`` but not in the sum or the histogram.
    The hour and day rows of ``collector.coarse_rollups`` covering them are rebuilt too.
    Runs in the caller's transaction; returns the number of rollup rows written.
    """
    ids = sorted({int(i) for i in deployment_ids if i is not None})
    if not ids:
        return 0
    lo, hi = floor_minute(start), ceil_minute(end)
    if hi <= lo:
        hi = lo + _MINUTE
    written = 0
    for i in range(0, len(ids), _ID_CHUNK):
        chunk = ids[i : i + _ID_CHUNK]
        accs: dict[tuple[int, datetime, str], _Acc] = {}
        rows = conn.execute(
            select(Request.deployment_id, Request.time, Request.status_code, Request.duration_ms)
            .where(Request.deployment_id.in_(chunk), Request.time >= lo, Request.time < hi)
            .execution_options(stream_results=True, yield_per=10_000)
        )
        for dep_id, time, status, duration in rows:
            key = (dep_id, floor_minute(time), status_class(status))
            acc = accs.get(key)
            if acc is None:
                acc = accs[key] = _Acc()
            acc.add(duration)
        conn.execute(
            delete(LatencyRollup).where(
                LatencyRollup.deployment_id.in_(chunk),
                LatencyRollup.bucket >= lo,
                LatencyRollup.bucket < hi,
            )
        )
        if accs:
            written += upsert(
                conn,
                LatencyRollup,
                (
                    {
                        "deployment_id": dep_id,
                        "bucket": bucket,
                        "status_class": cls,
                        "count": acc.count,
                        "sum_ms": acc.sum_ms,
                        "min_ms": acc.min_ms,
                        "max_ms": acc.max_ms,
                        "histogram": acc.hist,
                    }
                    for (dep_id, bucket, cls), acc in sorted(accs.items())
                ),
            )
    # The hour/day rows these minutes feed are rebuilt here too, in the same transaction, so
    # no writer of minute rollups (logs, capture, adopted deployments) can leave them stale.
    from collector import coarse_rollups  # imports this module

    coarse_rollups.refresh(conn, lo, hi, ids, parts=("latency",))
    return written
