"""`foundry-watch backfill` as a user runs it: a progress bar per source, a closing table, exit
0; a second run changes nothing; an interrupted run is resumed from the watermarks.

Against an emulator in this process with a pinned clock, so a re-run sees exactly the world the
first run saw (with the real clock, the minutes between the runs would legitimately add rows).
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from collector.jobs import logs as logs_job
from collector.jobs import metrics as metrics_job
from collector.service import BACKFILL_SOURCES
from emulator.server import EmulatorServer
from models.db import make_engine
from models.tables import STATUS_TABLES, CollectorRun, Watermark
from tests.collector.test_kill_resume import (
    cli_env,
    fresh_store,
    no_duplicate_ids,
    pinned_emulator,
    run_and_kill,
    run_cli,
    snapshot,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Bookkeeping tables a re-run legitimately adds to (its own runs, watermarks moved to its now).
BOOKKEEPING = {"collector_runs", "watermarks"}
BAR = re.compile(r"^(?P<source>\w+)\s+[━╸╺╾╼ ]+\s(?P<done>\d+)/(?P<total>\d+)\s", re.M)


@pytest.fixture(scope="module")
def world_server() -> Iterator[EmulatorServer]:
    with pinned_emulator() as server:
        yield server


@dataclass
class FullRun:
    calls: Counter[str]  # API calls per source
    scopes: Counter[str]  # watermarked scopes per source


@pytest.fixture(scope="module")
def full_run(world_server: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> FullRun:
    """One uninterrupted 2-day backfill (its API calls are the same on any backend)."""
    tmp = tmp_path_factory.mktemp("full")
    with fresh_store("sqlite", tmp) as url:
        full = run_cli(["backfill", "--days", "2"], cli_env(world_server, url), tmp / "full.log")
        assert full.returncode == 0, full.output[-3000:]
        engine = make_engine(url)
        try:
            return FullRun(calls_by_job(engine), Counter(src for src, _ in watermarks(engine)))
        finally:
            engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        request.getfixturevalue("pg_available")
    return request.param


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            m.__tablename__: conn.execute(select(func.count()).select_from(m)).scalar_one()
            for m in STATUS_TABLES
            if m.__tablename__ not in BOOKKEEPING
        }


def table_rows(output: str, title: str) -> list[list[str]]:
    """Cells of the body rows of the rich table titled ``title`` (box-drawn, one line a row)."""
    after = output[output.index(title) :]
    rows = []
    for line in after.splitlines()[1:]:
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
        elif line.startswith("└"):
            break
    return rows


def calls_by_job(engine: Engine, after_id: int = 0) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(
            dict(
                conn.execute(
                    select(CollectorRun.job, func.sum(CollectorRun.api_calls))
                    .where(CollectorRun.id > after_id)
                    .group_by(CollectorRun.job)
                ).all()
            )
        )


def last_run_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.coalesce(func.max(CollectorRun.id), 0))).scalar_one()


def watermarks(engine: Engine) -> dict[tuple[str, str], datetime]:
    with engine.connect() as conn:
        rows = conn.execute(select(Watermark.source, Watermark.scope, Watermark.high_water))
        return {(source, scope): high for source, scope, high in rows}


@pytest.mark.timeout(240)
def test_backfill_progress_table_and_idempotent_rerun(
    backend: str, world_server: EmulatorServer, tmp_path: Path
) -> None:
    with fresh_store(backend, tmp_path) as url:
        env = cli_env(world_server, url)
        first = run_cli(["backfill", "--days", "1"], env, tmp_path / "first.log")
        assert first.returncode == 0, first.output[-3000:]

        bars = {m["source"]: (int(m["done"]), int(m["total"])) for m in BAR.finditer(first.output)}
        assert set(bars) == set(BACKFILL_SOURCES), first.output[-3000:]
        for source, (done, total) in bars.items():
            assert done == total > 0, (source, done, total)
        last_bar = max(first.output.index(f"{s} ") for s in BACKFILL_SOURCES)
        assert first.output.index("Collection") > last_bar, "the table comes after the bars"
        rows = table_rows(first.output, "Collection")
        assert {r[0] for r in rows} == set(BACKFILL_SOURCES), rows
        assert all(r[2] == "ok" for r in rows), rows
        assert sum(int(r[3].replace(",", "")) for r in rows if r[0] == "logs") > 0, rows

        engine = make_engine(url)
        try:
            counts = row_counts(engine)
            assert counts["requests"] and counts["metric_points"], counts  # billing lags over a day
            before = snapshot(engine, EPOCH)
            runs_before = last_run_id(engine)

            again = run_cli(["backfill", "--days", "1"], env, tmp_path / "again.log")
            assert again.returncode == 0, again.output[-3000:]
            assert row_counts(engine) == counts
            assert snapshot(engine, EPOCH) == before
            no_duplicate_ids(engine)
            with engine.connect() as conn:
                statuses = set(
                    conn.execute(
                        select(CollectorRun.status).where(CollectorRun.id > runs_before)
                    ).scalars()
                )
            assert statuses and statuses <= {"ok"}, statuses
        finally:
            engine.dispose()


@pytest.mark.timeout(240)
def test_interrupted_backfill_resumes_from_the_watermarks(
    backend: str, world_server: EmulatorServer, full_run: FullRun, tmp_path: Path
) -> None:
    """Two days, so every metrics scope needs two chunks: a watermark then saves real calls
    (with one day each scope is one chunk, re-read whole or resumed, same call count)."""
    args = ["backfill", "--days", "2"]
    with fresh_store(backend, tmp_path) as url:
        engine = make_engine(url)
        try:
            env = cli_env(world_server, url)
            killed = run_and_kill(
                args,
                env,
                tmp_path / "killed.log",
                engine,
                lambda _before, now: now.watermarks["logs"] > 0,  # a request-log slice is in
            )
            assert killed.returncode == -signal.SIGKILL, killed.output[-3000:]
            marks = watermarks(engine)
            assert any(source == "metrics" for source, _ in marks), marks
            cut = last_run_id(engine)

            resumed = run_cli(args, env, tmp_path / "resumed.log")
            assert resumed.returncode == 0, resumed.output[-3000:]
            calls = calls_by_job(engine, cut)
            assert calls["metrics"] < full_run.calls["metrics"], (calls, full_run.calls)
            assert sum(calls.values()) < sum(full_run.calls.values()), (calls, full_run.calls)

            overlap = {"metrics": metrics_job.OVERLAP, "logs": logs_job.OVERLAP}
            with engine.connect() as conn:
                first_window = dict(
                    conn.execute(
                        select(
                            CollectorRun.job + "|" + CollectorRun.scope,
                            func.min(CollectorRun.window_start),
                        )
                        .where(CollectorRun.id > cut)
                        .group_by(CollectorRun.job, CollectorRun.scope)
                    ).all()
                )
            for (source, scope), high in marks.items():
                if source not in overlap:
                    continue
                start = first_window[f"{source}|{scope}"]
                assert start >= high - overlap[source] - timedelta(minutes=1), (
                    f"{source} on {scope} restarted at {start}, not from its watermark {high}"
                )

            # and it finished the job: every scope collected up to the world's end
            end = world_server.world.now()
            done = watermarks(engine)
            for source in ("metrics", "logs"):
                ends = [high for (src, _scope), high in done.items() if src == source]
                assert len(ends) == full_run.scopes[source] and min(ends) >= end, done
            no_duplicate_ids(engine)
        finally:
            engine.dispose()
