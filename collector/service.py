"""Running the jobs: one cycle, a backfill, or the long-running APScheduler service."""

from __future__ import annotations

import importlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from alerts.config import check_interval_s
from collector.jobs import SOURCES, job
from collector.jobs.base import JobContext, ScopeOutcome
from collector.runs import utcnow

log = logging.getLogger("foundry_watch.collector")

#: Sources a backfill walks through, in order (discovery first: the others need its rows).
BACKFILL_SOURCES = ("discovery", "metrics", "logs", "costs")


#: Signals that ask the collector to stop between chunks.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class StopRequest:
    """Which signal asked for the stop (None: none did)."""

    signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        """The shell convention for "ended by a signal": 128 + its number."""
        return 128 + self.signum if self.signum else 0


@contextmanager
def stop_on_signals(ctx: JobContext) -> Iterator[StopRequest]:
    """SIGTERM/SIGINT set ``ctx.stop``: the jobs finish the chunk in flight (it commits whole)
    and start no other. The first signal also restores the previous handlers, so a second one
    acts at once (SIGINT raises KeyboardInterrupt: the open transaction rolls back whole).

    Outside the main thread (Python only delivers signals there) this only yields.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def handle(signum: int, _frame: object) -> None:
        request.signum = signum
        ctx.stop.set()
        log.warning(
            "%s: stopping after the chunk in flight (again to stop at once)",
            signal.Signals(signum).name,
        )
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handle)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_cycle(ctx: JobContext, sources: Iterable[str] | None = None) -> list[ScopeOutcome]:
    """Run each source once; a failing source never stops the others (a stop request does)."""
    outcomes: list[ScopeOutcome] = []
    for source in sources or SOURCES:
        if ctx.stopping():
            break
        try:
            outcomes.extend(job(source)(ctx))
        except Exception as exc:  # a bug in one job must not take down the cycle
            log.exception("%s job crashed", source)
            outcomes.append(ScopeOutcome(source, "", "failed", error=f"{source}: {exc}"))
    return outcomes


Progress = Callable[[str, int, int], None]


def backfill(
    ctx: JobContext,
    days: int,
    progress: Progress | None = None,
    timings: dict[str, float] | None = None,
) -> list[ScopeOutcome]:
    """Fill the last ``days`` days; resumable, since every job continues from its watermarks.

    ``timings``, when given, receives each source's wall time in seconds (for the summary).
    """
    start = ctx.clock() - timedelta(days=days)
    outcomes: list[ScopeOutcome] = []
    for source in BACKFILL_SOURCES:
        if ctx.stopping():
            break
        began = time.perf_counter()
        try:
            outcomes.extend(_backfill_source(ctx, source, start, progress))
        finally:
            if timings is not None:
                timings[source] = timings.get(source, 0.0) + time.perf_counter() - began
    return outcomes


def _backfill_source(
    ctx: JobContext, source: str, start: datetime, progress: Progress | None
) -> list[ScopeOutcome]:
    """One source's backfill; a crash becomes a failed outcome, never stops the others."""
    module = importlib.import_module(SOURCES[source])
    fill = getattr(module, "backfill", None)
    report = (lambda done, total: progress(source, done, total)) if progress else None
    try:
        if fill is None:
            outcomes = list(module.run(ctx))
            if report:
                report(1, 1)
            return outcomes
        return list(fill(ctx, start, report))
    except Exception as exc:
        log.exception("%s backfill crashed", source)
        return [ScopeOutcome(source, "", "failed", error=f"{source}: {exc}")]


@dataclass
class SourceSummary:
    """One source's share of a backfill: what the closing table shows, one row a source."""

    source: str
    scopes: int = 0
    runs: int = 0
    status: str = "ok"
    rows: int = 0
    api_calls: int = 0
    seconds: float = 0.0
    failures: int = 0
    error: str = ""


#: Worst first: the summary row of a source shows the worst status among its runs.
_SEVERITY = ("failed", "stopped", "partial", "ok", "skipped")


def summarize(
    outcomes: Iterable[ScopeOutcome], timings: dict[str, float] | None = None
) -> list[SourceSummary]:
    """Outcomes (one per metrics chunk, logs workspace, costs scope…) folded to one row per
    source, in the order the sources ran: rows and API calls summed, failures counted, the
    worst status and the first error kept."""
    by_source: dict[str, SourceSummary] = {}
    scopes: dict[str, set[str]] = {}
    for o in outcomes:
        row = by_source.setdefault(o.job, SourceSummary(o.job))
        scopes.setdefault(o.job, set()).add(o.scope)
        row.runs += 1
        row.rows += o.rows
        row.api_calls += o.api_calls
        if o.status == "failed":
            row.failures += 1
        if _rank(o.status) < _rank(row.status) or row.runs == 1:
            row.status = o.status
        if o.error and not row.error:
            row.error = o.error
    for source, row in by_source.items():
        row.scopes = len(scopes[source])
        row.seconds = (timings or {}).get(source, 0.0)
    return list(by_source.values())


def _rank(status: str) -> int:
    return _SEVERITY.index(status) if status in _SEVERITY else 0


def intervals(ctx: JobContext) -> dict[str, int]:
    s = ctx.settings
    return {
        "discovery": s.discovery_interval_s,
        "metrics": s.metrics_interval_s,
        "logs": s.logs_interval_s,
        "costs": s.costs_interval_s,
        "capture": s.capture_interval_s,
        "retention": 24 * 3600,
        "alerts": check_interval_s(s),
    }


def serve(
    ctx: JobContext,
    stop: threading.Event | None = None,
    sources: Iterable[str] | None = None,
) -> None:
    """Run every source on its interval until SIGTERM/SIGINT (or ``stop`` is set); a job in
    flight then finishes its current chunk and returns, and no job starts again.

    coalesce: a backlog of missed runs becomes one run; max_instances=1: a slow run is never
    overlapped by the next; misfire grace: a run late by less than its interval still happens.
    """
    with stop_on_signals(ctx):
        if stop is not None:
            # a caller's stop event (tests, an embedding app) stops the jobs the same way
            threading.Thread(
                target=lambda: (stop.wait(), ctx.stop.set()), name="collector-stop", daemon=True
            ).start()
        _serve(ctx, sources)


def _serve(ctx: JobContext, sources: Iterable[str] | None) -> None:
    run_cycle(ctx, ["discovery"])  # the other sources map names to what discovery found
    scheduler = BackgroundScheduler(timezone="UTC")
    wanted = set(sources or SOURCES) | {"discovery"}
    for source, seconds in intervals(ctx).items():
        if source not in wanted:
            continue
        scheduler.add_job(
            lambda s=source: run_cycle(ctx, [s]),
            IntervalTrigger(seconds=seconds),
            id=source,
            name=f"collect {source}",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=seconds,
            # discovery just ran; the others start now (the wall clock: a pinned
            # FOUNDRY_WATCH_NOW moves the collected window, not when jobs run)
            next_run_time=utcnow() + timedelta(seconds=seconds if source == "discovery" else 0),
        )
    scheduler.start()
    log.info(
        "collector running: %s", ", ".join(f"{k} every {v}s" for k, v in intervals(ctx).items())
    )
    try:
        ctx.stop.wait()
    finally:
        log.info("stopping: waiting for running jobs to finish")
        scheduler.shutdown(wait=True)
