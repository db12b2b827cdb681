"""Collector: API calls of one incremental cycle, small world vs large world, same run.

DESIGN §7: an incremental cycle makes O(regions + workspaces + scopes) calls, not
O(deployments × metrics). Both worlds are served by the emulator; after a 1-hour backfill the
benchmark runs one more cycle and counts the calls each source made (``collector_runs``).
Sizes: ``FW_BENCH_LARGE_RESOURCES`` (50) × ``FW_BENCH_LARGE_DEPLOYMENTS`` (12 per resource,
600 in all) vs 4 × 3; traffic is kept light (``requests_per_day`` 48) since only calls count.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.table import Table
from sqlalchemy import func, select

from collector.azure import make_credential
from collector.jobs.base import JobContext
from collector.service import backfill, run_cycle
from emulator.server import EmulatorServer
from models.db import make_engine
from models.migrations import upgrade
from models.settings import load_settings
from models.tables import CollectorRun, Deployment

LARGE_RESOURCES = int(os.environ.get("FW_BENCH_LARGE_RESOURCES", "50"))
LARGE_DEPLOYMENTS = int(os.environ.get("FW_BENCH_LARGE_DEPLOYMENTS", "12"))
SOURCES = ("discovery", "metrics", "logs", "costs")


def _cycle_calls(resources: int, per_resource: int, workdir: Path) -> tuple[int, Counter, float]:
    server = EmulatorServer(
        seed=7,
        port=0,
        resources=resources,
        deployments_per_resource=per_resource,
        requests_per_day=48,
        days=2,
    )
    server.start()
    saved = dict(os.environ)
    try:
        os.environ.update(server.env())
        engine = make_engine(f"sqlite:///{workdir / f'bench-{resources}.db'}")
        upgrade(engine)
        settings = load_settings(database_url=str(engine.url), retention_days=1)
        ctx = JobContext(settings=settings, engine=engine, credential=make_credential(settings))
        backfill(ctx, 1)
        with engine.connect() as conn:
            first_new = conn.execute(select(func.max(CollectorRun.id))).scalar_one()
        started = time.perf_counter()
        run_cycle(ctx, SOURCES)
        elapsed = time.perf_counter() - started
        calls: Counter = Counter()
        with engine.connect() as conn:
            deployments = conn.execute(select(func.count()).select_from(Deployment)).scalar_one()
            for job, api_calls in conn.execute(
                select(CollectorRun.job, CollectorRun.api_calls).where(CollectorRun.id > first_new)
            ):
                calls[job] += api_calls
        engine.dispose()
        return deployments, calls, elapsed
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.stop()


def main() -> Table:
    table = Table(
        "world",
        "deployments",
        *[f"{s} calls" for s in SOURCES],
        "total",
        "cycle s",
        title="Collector: API calls of one incremental cycle (after a 1 h backfill)",
    )
    with tempfile.TemporaryDirectory() as tmp:
        for label, resources, per in (
            ("small", 4, 3),
            ("large", LARGE_RESOURCES, LARGE_DEPLOYMENTS),
        ):
            deployments, calls, elapsed = _cycle_calls(resources, per, Path(tmp))
            table.add_row(
                f"{label} ({resources} resources)",
                str(deployments),
                *[str(calls[s]) for s in SOURCES],
                str(sum(calls[s] for s in SOURCES)),
                f"{elapsed:.1f}",
            )
    table.caption = (
        "metrics: one call per (subscription, region, metric group); logs: one per workspace; "
        "costs: skipped inside the quota interval. Calls grow with regions/workspaces/scopes."
    )
    return table
