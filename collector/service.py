"""Running the jobs: one cycle, a backfill, or the long-running APScheduler service."""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from alerts.config import check_interval_s
from collector.jobs import SOURCES, job
from collector.jobs.base import JobContext, ScopeOutcome

log = logging.getLogger("foundry_watch.collector")

#: Sources a backfill walks through, in order (discovery first: the others need its rows).
BACKFILL_SOURCES = ("discovery", "metrics", "logs", "costs")


def run_cycle(ctx: JobContext, sources: Iterable[str] | None = None) -> list[ScopeOutcome]:
    """Run each source once; a failing source never stops the others."""
    outcomes: list[ScopeOutcome] = []
    for source in sources or SOURCES:
        try:
            outcomes.extend(job(source)(ctx))
        except Exception as exc:  # a bug in one job must not take down the cycle
            log.exception("%s job crashed", source)
            outcomes.append(ScopeOutcome(source, "", "failed", error=f"{source}: {exc}"))
    return outcomes


Progress = Callable[[str, int, int], None]


def backfill(ctx: JobContext, days: int, progress: Progress | None = None) -> list[ScopeOutcome]:
    """Fill the last ``days`` days; resumable, since every job continues from its watermarks."""
    start = ctx.clock() - timedelta(days=days)
    outcomes: list[ScopeOutcome] = []
    for source in BACKFILL_SOURCES:
        module = importlib.import_module(SOURCES[source])
        fill = getattr(module, "backfill", None)
        report = (lambda done, total, s=source: progress(s, done, total)) if progress else None
        try:
            if fill is None:
                outcomes.extend(module.run(ctx))
                if report:
                    report(1, 1)
            else:
                outcomes.extend(fill(ctx, start, report))
        except Exception as exc:
            log.exception("%s backfill crashed", source)
            outcomes.append(ScopeOutcome(source, "", "failed", error=f"{source}: {exc}"))
    return outcomes


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
    """Run every source on its interval until SIGTERM/SIGINT (or ``stop`` is set).

    coalesce: a backlog of missed runs becomes one run; max_instances=1: a slow run is never
    overlapped by the next; misfire grace: a run late by less than its interval still happens.
    """
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
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
            # discovery just ran; the others start now
            next_run_time=ctx.clock() + timedelta(seconds=seconds if source == "discovery" else 0),
        )
    scheduler.start()
    log.info(
        "collector running: %s", ", ".join(f"{k} every {v}s" for k, v in intervals(ctx).items())
    )
    try:
        stop.wait()
    finally:
        log.info("stopping: waiting for running jobs to finish")
        scheduler.shutdown(wait=True)
