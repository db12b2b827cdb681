"""Run records and watermarks: the collector's incremental state (as dlt keeps its state).

A job's rows, its watermark and the end of its run row are written in one transaction: either
the window is in the store and the watermark says so, or neither.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, insert, select, update

from models.db import upsert
from models.tables import CollectorRun, Watermark


def utcnow() -> datetime:
    return datetime.now(UTC)


def get_watermark(conn: Connection, source: str, scope: str) -> datetime | None:
    return conn.execute(
        select(Watermark.high_water).where(Watermark.source == source, Watermark.scope == scope)
    ).scalar_one_or_none()


def set_watermark(
    conn: Connection,
    source: str,
    scope: str,
    high_water: datetime,
    updated_at: datetime | None = None,
) -> None:
    """``updated_at`` is when the source was asked (a job's clock), for quota guards."""
    row = {
        "source": source,
        "scope": scope,
        "high_water": high_water,
        "updated_at": updated_at or utcnow(),
    }
    upsert(conn, Watermark, [row])


@dataclass
class Run:
    """One job run on one scope; ``finish`` goes in the caller's data transaction."""

    id: int
    job: str
    scope: str
    started: float = field(default_factory=time.perf_counter)

    def finish(
        self,
        conn: Connection,
        *,
        status: str,
        rows: int = 0,
        api_calls: int = 0,
        error: str = "",
        window: tuple[datetime | None, datetime | None] | None = None,
    ) -> None:
        values = {
            "status": status,
            "rows": rows,
            "api_calls": api_calls,
            "error": error,
            "finished_at": utcnow(),
            "duration_ms": (time.perf_counter() - self.started) * 1000,
        }
        if window is not None:
            values["window_start"], values["window_end"] = window
        conn.execute(update(CollectorRun).where(CollectorRun.id == self.id).values(**values))


def start_run(
    engine: Engine,
    job: str,
    scope: str,
    window: tuple[datetime | None, datetime | None] = (None, None),
) -> Run:
    """Record that a run started (committed at once, so a crash leaves a 'running' trace)."""
    with engine.begin() as conn:
        run_id = conn.execute(
            insert(CollectorRun)
            .values(
                job=job,
                scope=scope,
                window_start=window[0],
                window_end=window[1],
                started_at=utcnow(),
                status="running",
            )
            .returning(CollectorRun.id)
        ).scalar_one()
    return Run(run_id, job, scope)
