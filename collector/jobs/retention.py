"""Retention: delete what is older than the window, in bounded batches (DESIGN §5).

Why batches: one ``DELETE`` of a month of ``requests`` (millions of rows) would hold one huge
transaction — SQLite's single writer lock for its whole duration, PostgreSQL's WAL and row
locks — and starve the collector and the dashboard. Each batch deletes at most ``batch_size``
rows by natural key (``(key…) IN (SELECT key… WHERE old LIMIT n)``, which both SQLite ≥ 3.15
and PostgreSQL run), in its own transaction, so progress is kept if the process stops.

What goes: ``metric_points`` by minute, ``requests`` by time, ``latency_rollups`` by bucket,
their hour/day rollups when their whole hour/day is before the cutoff,
``collector_runs`` by start time — everything before ``now − retention_days`` — and ``costs``
by day: days wholly before the cutoff (the cutoff's own day stays, as the collectors'
windows start on it). Resources, deployments, prices, budgets, alerts and watermarks are
history or configuration and are kept.

Each table is reported as its own run record (job ``retention``, scope = table name,
``rows`` = rows deleted), so ``foundry-watch status`` shows what every table lost last time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, delete, or_, select, tuple_

from collector.jobs.base import JobContext, ScopeOutcome
from collector.runs import start_run
from models.tables import (
    Base,
    CollectorRun,
    Cost,
    LatencyRollup,
    LatencyRollupCoarse,
    MetricPoint,
    MetricRollup,
    Request,
)

log = logging.getLogger("foundry_watch.collector.retention")

SOURCE = "retention"
BATCH_SIZE = 10_000


@dataclass(frozen=True)
class Target:
    """One table and how its age is judged against the cutoff."""

    model: type[Base]
    #: The condition "older than the window" for a cutoff time.
    older: Callable[[datetime], Any]

    @property
    def name(self) -> str:
        return self.model.__tablename__


def targets() -> list[Target]:
    """Tables in deletion order; ``collector_runs`` last, so this run's records are kept."""
    return [
        Target(MetricPoint, lambda cut: MetricPoint.minute < cut),
        Target(Request, lambda cut: Request.time < cut),
        Target(LatencyRollup, lambda cut: LatencyRollup.bucket < cut),
        Target(MetricRollup, lambda cut: wholly_before(MetricRollup, cut)),
        Target(LatencyRollupCoarse, lambda cut: wholly_before(LatencyRollupCoarse, cut)),
        Target(Cost, lambda cut: Cost.day < cut.astimezone(UTC).date()),
        Target(CollectorRun, lambda cut: CollectorRun.started_at < cut),
    ]


def wholly_before(model: type[MetricRollup] | type[LatencyRollupCoarse], cut: datetime) -> Any:
    """Hour/day rows whose whole span ends by the cutoff.

    A span straddling the cutoff is kept, like the cutoff's own cost day: the dashboard reads
    a window's ragged edges from the minute tables, and whole hours/days only inside it.
    """
    return or_(
        and_(model.grain == "hour", model.bucket <= cut - timedelta(hours=1)),
        and_(model.grain == "day", model.bucket <= cut - timedelta(days=1)),
    )


def cutoff(ctx: JobContext) -> datetime:
    return ctx.clock() - timedelta(days=ctx.settings.retention_days)


def delete_older(
    engine: Engine,
    target: Target,
    cut: datetime,
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Delete ``target``'s rows older than ``cut``, ``batch_size`` rows per transaction."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    table = target.model.__table__
    key = list(table.primary_key.columns)
    condition = target.older(cut)
    if len(key) == 1:
        chosen = select(key[0]).where(condition).limit(batch_size)
        stmt = delete(table).where(key[0].in_(chosen))
    else:
        chosen = select(*key).where(condition).limit(batch_size)
        stmt = delete(table).where(tuple_(*key).in_(chosen))
    total = 0
    while True:
        with engine.begin() as conn:
            deleted = conn.execute(stmt).rowcount or 0
        total += deleted
        if deleted:
            if on_batch:
                on_batch(deleted)
            log.debug("retention: %d rows deleted from %s", deleted, target.name)
        if deleted < batch_size:
            return total


def run(
    ctx: JobContext,
    *,
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[str, int], None] | None = None,
) -> list[ScopeOutcome]:
    """Delete everything older than ``now − retention_days``; one run record per table."""
    cut = cutoff(ctx)
    outcomes: list[ScopeOutcome] = []
    for target in targets():
        run_record = start_run(ctx.engine, SOURCE, target.name, (None, cut))
        deleted = 0

        def count(n: int, name: str = target.name) -> None:
            nonlocal deleted
            deleted += n
            if on_batch:
                on_batch(name, n)

        try:
            delete_older(ctx.engine, target, cut, batch_size, count)
        except Exception as exc:
            message = f"retention on {target.name}: {type(exc).__name__}: {exc}".splitlines()[0]
            log.error(message)
            with ctx.engine.begin() as conn:
                run_record.finish(
                    conn, status="failed", rows=deleted, error=message, window=(None, cut)
                )
            outcomes.append(ScopeOutcome(SOURCE, target.name, "failed", deleted, 0, message))
            continue
        with ctx.engine.begin() as conn:
            run_record.finish(conn, status="ok", rows=deleted, window=(None, cut))
        if deleted:
            log.info("retention: %d rows older than %s deleted from %s", deleted, cut, target.name)
        outcomes.append(ScopeOutcome(SOURCE, target.name, "ok", deleted, 0))
    return outcomes
