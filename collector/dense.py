"""Dense latency histograms: the coarse rollups' storage format, merged with numpy.

Why not the JSON ``{bucket key: count}`` of the minute rollups: a day of a busy deployment
fills ~600 buckets, and a 30-day Overview of 50 deployments would parse and add ~900 k JSON
entries in Python (a quarter of a second). Stored densely — the lowest key, the zero-bucket
count, then one little-endian uint32 count per key up to the highest — a row is parsed by
``np.frombuffer`` and merged by array addition. Keys and bucket values are exactly those of
``collector.rollups`` (same mapping), so percentiles are identical to the JSON path.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from collector import rollups

_HEADER = struct.Struct("<iq")  # lowest key, zero-bucket count


@dataclass
class Dense:
    """Counts of keys ``lo .. lo + len(counts) - 1`` plus the zero bucket."""

    lo: int
    zero: int
    counts: np.ndarray  # int64

    @property
    def total(self) -> int:
        return int(self.zero + self.counts.sum())


EMPTY = Dense(0, 0, np.zeros(0, dtype=np.int64))


def from_dict(hist: Mapping[str, int] | None) -> Dense:
    """A JSON histogram of ``collector.rollups`` as a dense one."""
    if not hist:
        return Dense(0, 0, np.zeros(0, dtype=np.int64))
    zero = int(hist.get(rollups.ZERO_KEY, 0))
    items = [(int(k), int(c)) for k, c in hist.items() if k != rollups.ZERO_KEY]
    if not items:
        return Dense(0, zero, np.zeros(0, dtype=np.int64))
    keys = np.fromiter((k for k, _ in items), dtype=np.int64, count=len(items))
    vals = np.fromiter((c for _, c in items), dtype=np.int64, count=len(items))
    lo = int(keys.min())
    counts = np.zeros(int(keys.max()) - lo + 1, dtype=np.int64)
    np.add.at(counts, keys - lo, vals)
    return Dense(lo, zero, counts)


def to_dict(dense: Dense) -> dict[str, int]:
    """Back to ``{bucket key: count}`` (tests, exports)."""
    out = {str(dense.lo + int(i)): int(dense.counts[i]) for i in np.flatnonzero(dense.counts)}
    if dense.zero:
        out[rollups.ZERO_KEY] = int(dense.zero)
    return out


def pack(dense: Dense) -> bytes:
    counts = dense.counts
    if counts.size and int(counts.max()) > np.iinfo(np.uint32).max:
        raise ValueError("bucket count above 2**32 - 1")
    return _HEADER.pack(dense.lo, dense.zero) + counts.astype("<u4").tobytes()


def unpack(blob: bytes) -> Dense:
    lo, zero = _HEADER.unpack_from(blob)
    counts = np.frombuffer(blob, dtype="<u4", offset=_HEADER.size).astype(np.int64)
    return Dense(lo, zero, counts)


def merge(parts: Iterable[Dense]) -> Dense:
    """The histogram of the union: counts add key by key."""
    parts = [p for p in parts if p.counts.size or p.zero]
    if not parts:
        return Dense(0, 0, np.zeros(0, dtype=np.int64))
    zero = sum(p.zero for p in parts)
    sized = [p for p in parts if p.counts.size]
    if not sized:
        return Dense(0, zero, np.zeros(0, dtype=np.int64))
    lo = min(p.lo for p in sized)
    hi = max(p.lo + p.counts.size for p in sized)
    out = np.zeros(hi - lo, dtype=np.int64)
    for p in sized:
        out[p.lo - lo : p.lo - lo + p.counts.size] += p.counts
    return Dense(lo, zero, out)


def merge_packed(blobs: Sequence[bytes]) -> Dense:
    """``merge(map(unpack, blobs))`` without a ``Dense`` per blob: each blob's counts are
    added straight from its bytes into one array (the dashboard merges thousands of hour
    rows per page)."""
    heads = [_HEADER.unpack_from(b) for b in blobs]
    zero = sum(z for _lo, z in heads)
    sized = [
        (lo, b, n)
        for (lo, _z), b in zip(heads, blobs, strict=True)
        if (n := (len(b) - _HEADER.size) // 4)
    ]
    if not sized:
        return Dense(0, zero, np.zeros(0, dtype=np.int64))
    lo = min(at for at, _b, _n in sized)
    counts = np.zeros(max(at + n for at, _b, n in sized) - lo, dtype=np.int64)
    for at, b, n in sized:
        counts[at - lo : at - lo + n] += np.frombuffer(b, "<u4", offset=_HEADER.size)
    return Dense(lo, zero, counts)


def percentiles(dense: Dense, ps: Sequence[float] = (50, 95, 99)) -> dict[float, float | None]:
    """Nearest-rank percentiles, exactly as ``collector.rollups.percentiles`` defines them."""
    n = dense.total
    if n == 0:
        return {p: None for p in ps}
    cumulative = np.cumsum(dense.counts) + dense.zero
    out: dict[float, float | None] = {}
    for p in ps:
        if not 0 <= p <= 100:
            raise ValueError(f"percentile {p} is outside 0..100")
        rank = max(1, math.ceil(p / 100 * n))
        if rank <= dense.zero:
            out[p] = 0.0
            continue
        index = int(np.searchsorted(cumulative, rank, side="left"))
        out[p] = rollups.bucket_value(str(dense.lo + index))
    return out
