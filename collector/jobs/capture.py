"""Client capture spools (``collector/capture.py``) -> ``requests``, joined to Azure's log rows.

Which spools: the settings' ``capture_spools`` (paths or glob patterns of the files applications
write; each path's rotated files ``path.1 … path.N`` are read with it, oldest first). One run and
one watermark per spool path (scope ``spool/{absolute path}``).

Incremental: every record carries ``logged``, the time its writer thread wrote it, which grows
along the file (one writer per process appends in order; processes sharing a file share a
clock). The watermark is the newest ``logged`` ingested; the next run binary-searches each file
for ``watermark - OVERLAP`` and reads on from there, so a cycle reads what is new, not the whole
spool. ``OVERLAP`` absorbs clock steps and interleaved writers; re-reading is harmless because
every write is an upsert on the apim id. A trailing line without its newline (being written) is
left for the next run. Memory stays flat: rows are written per ``BATCH``, each batch with its
watermark in one transaction.

Joining: the natural key is ``correlation_id`` = the ``apim-request-id`` header = Azure's
``CorrelationId``. When a log row with that id exists (source ``logs`` or ``both``), only what
capture alone knows is written (``request_id``, tokens, ``ttft_ms``) and the source becomes
``both``: time, status, duration, deployment, operation and caller stay Azure's. Otherwise the
row is the capture's own (source ``capture``, duration = client-observed latency) until the logs
job finds its log row (it keeps the capture columns and marks the row ``both``). Capture-only
rows of a known deployment feed the latency rollups like log rows (the rollups always equal the
``requests`` table), so an estate without diagnostic logs still gets percentiles.

Skipped: records without an apim id (the attempt got no response: timeout, refused connection;
nothing to join, nothing Azure saw), records older than the retention window, unknown record
versions; malformed lines are counted in the run's error line (status partial).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from sqlalchemy import Connection, select

from collector import rollups
from collector.jobs.base import JobContext, ScopeOutcome, skipped
from collector.runs import get_watermark, set_watermark, start_run
from models.db import upsert
from models.tables import Deployment, Request, Resource

log = logging.getLogger("foundry_watch.collector.capture")

SOURCE = "capture"
#: Re-read behind the watermark (clock steps, writers interleaving in one file).
OVERLAP = timedelta(minutes=5)
#: Rows per transaction.
BATCH = 2_000
#: Below this many bytes left, the binary search reads on linearly.
_SEARCH_STOP = 64 * 1024
_ROTATED = re.compile(r"\.(\d+)$")
_GLOB_CHARS = re.compile(r"[*?\[]")
_ID_CHUNK = 500
#: Columns only the client knows: all a capture record writes onto a row Azure's logs made.
CAPTURE_COLUMNS = [
    "request_id",
    "ttft_ms",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "source",
]
_WIDTH = {"correlation_id": 64, "request_id": 64, "deployment_name": 128, "model_name": 128}


# --------------------------------------------------------------------------------- files
def spool_paths(patterns: list[str] | tuple[str, ...]) -> list[str]:
    """Base spool paths for the configured paths/patterns (rotated files are not bases)."""
    bases: set[str] = set()
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if _GLOB_CHARS.search(pattern):
            for match in glob.glob(pattern):
                if not _ROTATED.search(match) and os.path.isfile(match):
                    bases.add(os.path.abspath(match))
        else:
            bases.add(os.path.abspath(pattern))
    return sorted(bases)


def spool_files(base: str) -> list[str]:
    """``base`` and its rotations, oldest first (``base.N`` … ``base.1``, ``base``)."""
    rotated = []
    for name in glob.glob(glob.escape(base) + ".*"):
        match = _ROTATED.search(name)
        if match and name[: match.start()] == base:
            rotated.append((int(match.group(1)), name))
    files = [name for _, name in sorted(rotated, reverse=True)]
    if os.path.exists(base):
        files.append(base)
    return files


def _logged_of(line: bytes) -> datetime | None:
    try:
        return _parse_time(json.loads(line)["logged"])
    except (ValueError, KeyError, TypeError):
        return None


def _seek_since(fh: BinaryIO, size: int, since: datetime) -> int:
    """An offset at or before the first line whose ``logged`` >= ``since`` (conservative)."""
    lo, hi = 0, size
    while hi - lo > _SEARCH_STOP:
        mid = (lo + hi) // 2
        fh.seek(mid)
        fh.readline()  # finish the line mid falls in
        line = fh.readline()
        logged = _logged_of(line) if line.endswith(b"\n") else None
        if logged is not None and logged < since:
            lo = mid
        else:
            hi = mid  # later, unreadable or at the end: look before it
    return lo


def read_lines(path: str, since: datetime | None) -> Iterator[bytes]:
    """Complete lines of ``path`` from about ``since`` on (a partial last line is left)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        start = _seek_since(fh, size, since) if since is not None else 0
        fh.seek(start)
        if start:
            fh.readline()
        for line in fh:
            if not line.endswith(b"\n"):
                return
            yield line


# ---------------------------------------------------------------------------------- rows
class Malformed(ValueError):
    """A spool line that cannot become a request row."""


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str) or not value:
        raise Malformed("time missing")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Malformed(f"time {value[:40]!r} is not a time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return float(value)


def _text(value: Any, width: int) -> str:
    return value.strip()[:width] if isinstance(value, str) else ""


@dataclass
class Names:
    """Store ids for the names a client sees: resource (name or endpoint host) and deployment."""

    resources: dict[str, int]
    deployments: dict[tuple[int, str], tuple[int, str]]

    @classmethod
    def load(cls, conn: Connection) -> Names:
        resources: dict[str, int] = {}
        for rid, name, endpoint in conn.execute(
            select(Resource.id, Resource.name, Resource.endpoint).order_by(Resource.id)
        ):
            host = (urlparse(endpoint).hostname or "") if endpoint else ""
            if host:
                resources.setdefault(host.split(".", 1)[0].lower(), rid)
            resources[name.lower()] = rid
        query = select(
            Deployment.id, Deployment.resource_id, Deployment.name, Deployment.model_name
        )
        deployments = {
            (res_id, name.lower()): (dep_id, model)
            for dep_id, res_id, name, model in conn.execute(query)
        }
        return cls(resources, deployments)


def to_row(record: Any, names: Names) -> dict[str, Any] | None:
    """One spool record -> a ``requests`` row; None if it has nothing to join on."""
    if not isinstance(record, dict):
        raise Malformed("not a JSON object")
    if record.get("v") != 1:
        raise Malformed(f"unknown record version {record.get('v')!r}")
    apim = _text(record.get("apim_request_id"), 1000)
    status = record.get("status")
    if not apim or status is None:
        return None  # no response: nothing Azure logged, nothing to join
    if len(apim) > _WIDTH["correlation_id"]:
        raise Malformed("apim_request_id too long")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
        raise Malformed(f"status {status!r} is not an HTTP status")
    started = _parse_time(record.get("time"))
    resource_id = names.resources.get(_text(record.get("resource"), 256).lower())
    deployment_name = _text(record.get("deployment"), _WIDTH["deployment_name"])
    deployment_id, model_name = None, _text(record.get("model"), _WIDTH["model_name"])
    if resource_id is not None:
        known = names.deployments.get((resource_id, deployment_name.lower()))
        if known is not None:
            deployment_id, model_name = known[0], known[1] or model_name
    usage = record.get("usage") if isinstance(record.get("usage"), dict) else {}
    write_5m, write_1h = (
        _int(usage.get("ephemeral_5m_input_tokens")),
        _int(usage.get("ephemeral_1h_input_tokens")),
    )
    creation = _int(usage.get("cache_creation_input_tokens"))
    if write_5m is None and write_1h is None and creation is not None:
        write_5m, write_1h = creation, 0  # no TTL split reported: the default TTL is 5 minutes
    stream = record.get("stream")
    return {
        "correlation_id": apim,
        "request_id": _text(record.get("request_id"), _WIDTH["request_id"]),
        "time": started,
        "resource_id": resource_id,
        "deployment_id": deployment_id,
        "deployment_name": deployment_name,
        "model_name": model_name,
        "operation_name": "",
        "status_code": status,
        "duration_ms": _float(record.get("latency_ms")),
        "ttft_ms": _float(record.get("ttft_ms")),
        "stream": stream if isinstance(stream, bool) else None,
        "input_tokens": _int(usage.get("input_tokens")),
        "output_tokens": _int(usage.get("output_tokens")),
        "cache_read_tokens": _int(usage.get("cache_read_input_tokens")),
        "cache_write_5m_tokens": write_5m,
        "cache_write_1h_tokens": write_1h,
        "caller_ip": "",
        "source": SOURCE,
    }


def write_rows(conn: Connection, rows: list[dict[str, Any]]) -> int:
    """Upsert capture rows: capture columns only onto log rows, whole rows otherwise."""
    if not rows:
        return 0
    rows = list({r["correlation_id"]: r for r in rows}.values())
    ids = [r["correlation_id"] for r in rows]
    existing: dict[str, str] = {}
    for i in range(0, len(ids), _ID_CHUNK):
        existing.update(
            conn.execute(
                select(Request.correlation_id, Request.source).where(
                    Request.correlation_id.in_(ids[i : i + _ID_CHUNK])
                )
            ).all()
        )
    joined = [
        {**r, "source": "both"}
        for r in rows
        if existing.get(r["correlation_id"]) in ("logs", "both")
    ]
    alone = [r for r in rows if existing.get(r["correlation_id"]) not in ("logs", "both")]
    written = 0
    if joined:
        written += upsert(conn, Request, joined, update=CAPTURE_COLUMNS)
    if alone:
        written += upsert(conn, Request, alone)
        deployments = {r["deployment_id"] for r in alone if r["deployment_id"] is not None}
        if deployments:
            times = [r["time"] for r in alone if r["deployment_id"] is not None]
            rollups.recompute_rollups(
                conn, deployments, min(times), max(times) + timedelta(microseconds=1)
            )
    return written


# ------------------------------------------------------------------------------- one spool
@dataclass
class _Tally:
    rows: int = 0
    malformed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    unjoinable: int = 0
    expired: int = 0

    def bad(self, reason: str) -> None:
        self.malformed += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def error_line(self) -> str:
        if not self.malformed:
            return ""
        top = sorted(self.reasons.items(), key=lambda kv: -kv[1])[:3]
        return f"{self.malformed} malformed spool line(s) skipped ({', '.join(r for r, _ in top)})"


def scope_of(base: str) -> str:
    return f"spool/{base}"


def ingest(ctx: JobContext, base: str) -> ScopeOutcome:
    """Ingest one spool (``base`` and its rotations) from its watermark on."""
    scope = scope_of(base)
    now = ctx.clock()
    earliest = now - timedelta(days=ctx.settings.retention_days)
    with ctx.engine.connect() as conn:
        watermark = get_watermark(conn, SOURCE, scope)
        names = Names.load(conn)
    since = watermark - OVERLAP if watermark is not None else None
    run = start_run(ctx.engine, SOURCE, scope, (since, now))
    tally = _Tally()
    newest = watermark
    # Lines up to the newest record ingested last time were judged then: a malformed one among
    # them (re-read in the overlap) is not counted again.
    fresh = watermark is None
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal pending
        with ctx.engine.begin() as conn:
            tally.rows += write_rows(conn, pending)
            if newest is not None and (watermark is None or newest > watermark):
                set_watermark(conn, SOURCE, scope, newest)
        pending = []

    try:
        files = spool_files(base)
        if not files:
            log.info("capture spool %s does not exist (yet); nothing to ingest", base)
        for path in files:
            for line in read_lines(path, since):
                try:
                    record = json.loads(line)
                    logged = _parse_time(record.get("logged")) if isinstance(record, dict) else None
                    if logged is not None and since is not None and logged < since:
                        continue
                    row = to_row(record, names)
                except ValueError as exc:  # Malformed is a ValueError, and so is bad JSON
                    if fresh:
                        tally.bad(str(exc)[:60] if isinstance(exc, Malformed) else "not JSON")
                    continue
                if logged is not None and (newest is None or logged > newest):
                    newest = logged
                if not fresh and logged is not None and logged > watermark:
                    fresh = True
                if row is None:
                    tally.unjoinable += 1
                    continue
                if row["time"] < earliest:
                    tally.expired += 1
                    continue
                pending.append(row)
                if len(pending) >= BATCH:
                    flush()
        flush()
    except Exception as exc:
        message = f"{SOURCE} on {scope}: {type(exc).__name__}: {exc}".splitlines()[0][:1000]
        log.warning(message)
        with ctx.engine.begin() as conn:
            run.finish(conn, status="failed", rows=tally.rows, error=message)
        return ScopeOutcome(SOURCE, scope, "failed", tally.rows, 0, message)
    if tally.unjoinable or tally.expired:
        log.info(
            "%s: %d record(s) without a response (no apim id), %d older than retention",
            scope,
            tally.unjoinable,
            tally.expired,
        )
    error = tally.error_line()
    status = "partial" if error else "ok"
    if error:
        error = f"{SOURCE} on {scope}: {error}"
        log.warning(error)
    with ctx.engine.begin() as conn:
        run.finish(conn, status=status, rows=tally.rows, error=error, window=(since, newest))
    return ScopeOutcome(SOURCE, scope, status, tally.rows, 0, error)


def configured_spools(ctx: JobContext) -> list[str]:
    """The settings' ``capture_spools`` (paths or globs), expanded to base paths."""
    patterns = getattr(ctx.settings, "capture_spools", None) or []
    if isinstance(patterns, (str, Path)):
        patterns = [str(patterns)]
    return spool_paths([str(p) for p in patterns])


def run(ctx: JobContext) -> list[ScopeOutcome]:
    """One cycle: every configured spool from its watermark on."""
    spools = configured_spools(ctx)
    if not spools:
        return [
            skipped(ctx, SOURCE, "", "no capture spool configured (FOUNDRY_WATCH_CAPTURE_SPOOLS)")
        ]
    return [ingest(ctx, base) for base in spools]
