"""What every collection job shares: its context, its outcome, and the run wrapper.

A job is *window in, rows out*: given a source, a scope and a window it fetches, normalises and
upserts, then advances its watermark in the same transaction. ``run_scope`` gives every job the
same bookkeeping (a ``collector_runs`` row, API-call counting, one-line errors) so a failing
scope is recorded and never stops the others.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from azure.core.credentials import TokenCredential
from sqlalchemy import Connection, Engine, func, select

from collector.azure import AzureClients
from collector.errors import describe_azure_error
from collector.runs import start_run, utcnow
from models.settings import Settings
from models.tables import CollectorRun

log = logging.getLogger("foundry_watch.collector")

_RG_RE = re.compile(r"/resourcegroups/([^/]+)", re.IGNORECASE)
_SUB_RE = re.compile(r"/subscriptions/([^/]+)", re.IGNORECASE)


def resource_group_of(arm_id: str) -> str:
    match = _RG_RE.search(arm_id)
    return match.group(1) if match else ""


def subscription_of(arm_id: str) -> str:
    match = _SUB_RE.search(arm_id)
    return match.group(1) if match else ""


@dataclass
class JobContext:
    """Everything a job may use; built once per collector process."""

    settings: Settings
    engine: Engine
    credential: TokenCredential
    clock: Callable[[], datetime] = utcnow
    #: Set (e.g. by SIGTERM/SIGINT) to stop between chunks; see :meth:`stopping`.
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        # ``FOUNDRY_WATCH_NOW`` pins "now" for every job (a fixed instant, not a moving clock):
        # two runs over the same settings then cover exactly the same window.
        pinned = getattr(self.settings, "now", None)
        if pinned is not None and self.clock is utcnow:
            self.clock = lambda: pinned

    def stopping(self) -> bool:
        """Whether a stop was asked: jobs check it between chunks, never inside one, so the
        chunk in flight commits (rows + watermark + run record) or rolls back whole."""
        return self.stop.is_set()

    def clients(self) -> AzureClients:
        return AzureClients(self.settings, self.credential)


@dataclass
class ScopeOutcome:
    job: str
    scope: str
    status: str  # ok | partial | failed
    rows: int = 0
    api_calls: int = 0
    error: str = ""


@dataclass
class Written:
    """What a job's write step reports back to ``run_scope``."""

    rows: int
    status: str = "ok"
    error: str = ""
    window: tuple[datetime | None, datetime | None] | None = None
    extra: dict = field(default_factory=dict)


def run_scope(
    ctx: JobContext,
    job: str,
    scope: str,
    fetch: Callable[[AzureClients], object],
    write: Callable[[Connection, object], Written],
    window: tuple[datetime | None, datetime | None] = (None, None),
) -> ScopeOutcome:
    """Fetch from Azure, then write rows + watermark + run record in one transaction.

    A fetch failure records a failed run and leaves the watermark where it was.
    """
    run = start_run(ctx.engine, job, scope, window)
    clients = ctx.clients()
    try:
        fetched = fetch(clients)
    except Exception as exc:
        message = describe_azure_error(exc, source=job, scope=scope)
        log.warning(message)
        log.debug("fetch failure detail", exc_info=True)
        with ctx.engine.begin() as conn:
            run.finish(conn, status="failed", api_calls=clients.counter.calls, error=message)
        return ScopeOutcome(job, scope, "failed", 0, clients.counter.calls, message)
    try:
        with ctx.engine.begin() as conn:
            written = write(conn, fetched)
            run.finish(
                conn,
                status=written.status,
                rows=written.rows,
                api_calls=clients.counter.calls,
                error=written.error,
                window=written.window,
            )
    except Exception as exc:
        message = f"{job} on {scope}: could not store the data: {type(exc).__name__}: {exc}"
        message = message.splitlines()[0]
        log.error(message)
        log.debug("write failure detail", exc_info=True)
        with ctx.engine.begin() as conn:
            run.finish(conn, status="failed", api_calls=clients.counter.calls, error=message)
        return ScopeOutcome(job, scope, "failed", 0, clients.counter.calls, message)
    if written.error:
        log.warning(written.error)
    return ScopeOutcome(
        job, scope, written.status, written.rows, clients.counter.calls, written.error
    )


def coverage_start(
    conn: Connection, job: str, scope: str, high_water: datetime | None
) -> datetime | None:
    """Where the contiguous stretch of collected data that ends at ``high_water`` begins.

    The watermark only says how far a scope is collected; ``backfill --days N`` also needs to
    know from where, to fill what lies before (a shorter earlier backfill, a store started by
    ``collect``). It is read from the run records, conservatively (too late only costs a
    re-read, never leaves a gap):

    - a run that ended ok covered its window from its start: every run starts at its
      watermark minus the overlap, at the requested start when there was none, or (backfill
      extending backwards) right before the covered stretch, one chunk at a time;
    - the latest run still reaching past the watermark (a forward run killed, stopped or
      failed after committing slices) covered its start too: it started at the watermark, or
      it was the first run and set the watermark itself.

    None when there is no watermark or no such run (run records pruned, a hand-set
    watermark): callers then only continue from the watermark, as before run records existed.
    """
    if high_water is None:
        return None
    mine = (CollectorRun.job == job, CollectorRun.scope == scope)
    finished = conn.execute(
        select(func.min(CollectorRun.window_start)).where(
            *mine,
            CollectorRun.status == "ok",
            CollectorRun.window_start.is_not(None),
        )
    ).scalar_one_or_none()
    forward = conn.execute(
        select(CollectorRun.window_start)
        .where(
            *mine,
            CollectorRun.window_start.is_not(None),
            CollectorRun.window_end > high_water,
        )
        .order_by(CollectorRun.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    found = [t for t in (finished, forward) if t is not None]
    return min(found) if found else None


def skipped(ctx: JobContext, job: str, scope: str, reason: str) -> ScopeOutcome:
    """Record a run that had nothing to do, so `status` says why instead of showing nothing."""
    run = start_run(ctx.engine, job, scope)
    with ctx.engine.begin() as conn:
        run.finish(conn, status="skipped", error=reason)
    return ScopeOutcome(job, scope, "skipped", error=reason)
