"""`foundry-watch backfill` as a user runs it: a progress bar per source, a closing table (one row
per source), exit 0; a second run changes nothing; an interrupted run is resumed from the
watermarks; SIGTERM/SIGINT stop it between chunks; ``--days N`` after a shorter backfill fills
back to N days.

Against an emulator in this process with a pinned clock, so a re-run sees exactly the world the
first run saw (with the real clock, the minutes between the runs would legitimately add rows).
The collector's clock is pinned to the emulator's in every run (``pinned_env``): the emulator's
"now" can lie a day or more before the real one (``pinned_now`` goes back until Cost Management
has billed a day), and a collector on the real clock then asks for a window the world does not
reach (``--days 1`` read nothing at all late in a UTC day: 23:20 in CI, 23:40 locally).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, Integer, func, select

from collector.jobs import logs as logs_job
from collector.jobs import metrics as metrics_job
from collector.service import BACKFILL_SOURCES
from emulator.server import EmulatorServer
from models.db import make_engine
from models.tables import STATUS_TABLES, CollectorRun, Watermark
from tests.collector.test_kill_resume import (
    EXE,
    Progress,
    assert_same_store,
    fresh_store,
    no_duplicate_ids,
    pinned_emulator,
    pinned_env,
    progress,
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
        full = run_cli(["backfill", "--days", "2"], pinned_env(world_server, url), tmp / "full.log")
        assert full.returncode == 0, full.output[-3000:]
        engine = make_engine(url)
        try:
            return FullRun(calls_by_job(engine), Counter(src for src, _ in watermarks(engine)))
        finally:
            engine.dispose()


@dataclass
class Reference:
    """One uninterrupted, pinned-clock 2-day backfill: the store every other run must equal."""

    store: dict
    metrics_runs: int
    logs_calls: int


@pytest.fixture(scope="module")
def reference(world_server: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    tmp = tmp_path_factory.mktemp("reference")
    with fresh_store("sqlite", tmp) as url:
        done = run_cli(["backfill", "--days", "2"], pinned_env(world_server, url), tmp / "log")
        assert done.returncode == 0, done.output[-3000:]
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                metrics_runs = conn.execute(
                    select(func.count()).where(CollectorRun.job == "metrics")
                ).scalar_one()
            return Reference(snapshot(engine, EPOCH), metrics_runs, calls_by_job(engine)["logs"])
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
        env = pinned_env(world_server, url)
        first = run_cli(["backfill", "--days", "1"], env, tmp_path / "first.log")
        assert first.returncode == 0, first.output[-3000:]

        bars = {m["source"]: (int(m["done"]), int(m["total"])) for m in BAR.finditer(first.output)}
        assert set(bars) == set(BACKFILL_SOURCES), first.output[-3000:]
        for source, (done, total) in bars.items():
            assert done == total > 0, (source, done, total)
        last_bar = max(first.output.index(f"{s} ") for s in BACKFILL_SOURCES)
        assert first.output.index("Collection") > last_bar, "the table comes after the bars"
        rows = table_rows(first.output, "Collection")
        # one row per source, however many chunks, workspaces and scopes it took
        assert [r[0] for r in rows] == list(BACKFILL_SOURCES), rows
        assert all(r[2] == "ok" for r in rows), rows
        assert sum(int(r[3].replace(",", "")) for r in rows if r[0] == "logs") > 0, rows

        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                recorded = {
                    job: (int(n), int(r), int(c), int(f))
                    for job, n, r, c, f in conn.execute(
                        select(
                            CollectorRun.job,
                            func.count(CollectorRun.scope.distinct()),
                            func.sum(CollectorRun.rows),
                            func.sum(CollectorRun.api_calls),
                            func.sum(func.cast(CollectorRun.status == "failed", Integer)),
                        ).group_by(CollectorRun.job)
                    )
                }
            for r in rows:  # source, scopes, status, rows, API calls, duration, failures, error
                shown = (int(r[1]), _number(r[3]), _number(r[4]), int(r[6]))
                assert shown == recorded[r[0]], (r, recorded[r[0]])
            with engine.connect() as conn:
                runs = conn.execute(select(func.count()).select_from(CollectorRun)).scalar_one()
            assert runs > len(rows), "one run per source: nothing was aggregated"
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
            env = pinned_env(world_server, url)
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

            # and it finished the job: every scope collected up to the world's end (metrics up
            # to a settled minute before it)
            now = world_server.world.now()
            end = {"metrics": metrics_job.window_end(now), "logs": now}
            done = watermarks(engine)
            for source in ("metrics", "logs"):
                ends = [high for (src, _scope), high in done.items() if src == source]
                assert len(ends) == full_run.scopes[source] and min(ends) >= end[source], done
            no_duplicate_ids(engine)
        finally:
            engine.dispose()


def _number(cell: str) -> int:
    return int(cell.replace(",", ""))


# ------------------------------------------------------------------------ SIGTERM / SIGINT


def run_and_signal(
    args: list[str],
    env: dict[str, str],
    log: Path,
    store: Engine,
    when: Callable[[Progress, Progress], bool],
    sig: signal.Signals,
    timeout: float = 180,
) -> tuple[int, str]:
    """Start ``foundry-watch args``; send ``sig`` once ``when(before, now)`` holds; wait."""
    before = progress(store)
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen([EXE, *args], env=env, stdout=out, stderr=out)
        try:
            while proc.poll() is None:
                assert time.monotonic() - t0 < timeout, f"signal point never reached ({log})"
                if when(before, progress(store)):
                    proc.send_signal(sig)
                    break
                time.sleep(0.05)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, log.read_text()


def runs_by_status(engine: Engine) -> Counter[tuple[str, str]]:
    with engine.connect() as conn:
        return Counter(
            {
                (job, status): n
                for job, status, n in conn.execute(
                    select(CollectorRun.job, CollectorRun.status, func.count()).group_by(
                        CollectorRun.job, CollectorRun.status
                    )
                )
            }
        )


@pytest.mark.timeout(300)
def test_sigterm_stops_the_backfill_between_metrics_chunks(
    backend: str, world_server: EmulatorServer, reference: Reference, tmp_path: Path
) -> None:
    """SIGTERM while a metrics chunk is in flight: that chunk commits whole (rows, watermark,
    run record), no other chunk or source starts, exit 143; a re-run completes the store."""
    args = ["backfill", "--days", "2"]
    with fresh_store(backend, tmp_path) as url:
        engine = make_engine(url)
        env = pinned_env(world_server, url)
        try:
            code, output = run_and_signal(
                args,
                env,
                tmp_path / "term.log",
                engine,
                lambda b, p: p.started["metrics"] > b.started["metrics"],  # first chunk
                signal.SIGTERM,
            )
            assert code == 128 + signal.SIGTERM, output[-3000:]
            assert "stopped by SIGTERM" in output, output[-3000:]
            statuses = runs_by_status(engine)
            assert not any(status == "running" for _job, status in statuses), statuses
            done = statuses[("metrics", "ok")]
            assert 1 <= done < reference.metrics_runs, (done, reference.metrics_runs)
            assert not any(job in ("logs", "costs") for job, _status in statuses), statuses
            # the chunk in flight committed whole: its watermark is its run's window end
            with engine.connect() as conn:
                ends = dict(
                    conn.execute(
                        select(CollectorRun.scope, func.max(CollectorRun.window_end))
                        .where(CollectorRun.job == "metrics", CollectorRun.status == "ok")
                        .group_by(CollectorRun.scope)
                    ).all()
                )
            marks = {scope: high for (src, scope), high in watermarks(engine).items()}
            assert ends and all(marks[scope] == end for scope, end in ends.items()), (ends, marks)

            resumed = run_cli(args, env, tmp_path / "resumed.log")
            assert resumed.returncode == 0, resumed.output[-3000:]
            assert_same_store(snapshot(engine, EPOCH), reference.store, f"{backend}, SIGTERM")
        finally:
            engine.dispose()


@pytest.mark.timeout(600)
def test_sigint_stops_the_backfill_between_request_log_slices(tmp_path: Path) -> None:
    """Ctrl-C during the request logs: the slice in flight commits, the workspace runs end as
    'stopped' (none left 'running'), costs never start, exit 130; a re-run completes the store
    to what an uninterrupted backfill holds. A busier world than the module's (one day of
    ~12,000 requests per workspace), so that each workspace takes several slices."""
    args = ["backfill", "--days", "1"]
    assert logs_job.TARGET_ROWS < 4 * 3000, "each workspace must need more than one slice"
    with pinned_emulator(requests_per_day=3000) as server:
        with fresh_store("sqlite", tmp_path) as url:
            whole = run_cli(args, pinned_env(server, url), tmp_path / "whole.log")
            assert whole.returncode == 0, whole.output[-3000:]
            engine = make_engine(url)
            expected = snapshot(engine, EPOCH)
            whole_calls = calls_by_job(engine)["logs"]
            engine.dispose()
        with fresh_store("sqlite", tmp_path) as url:
            engine = make_engine(url)
            env = pinned_env(server, url)
            try:
                code, output = run_and_signal(
                    args,
                    env,
                    tmp_path / "int.log",
                    engine,
                    lambda b, p: p.watermarks["logs"] > b.watermarks["logs"],  # one slice in
                    signal.SIGINT,
                )
                assert code == 128 + signal.SIGINT, output[-3000:]
                assert "stopped by SIGINT" in output, output[-3000:]
                statuses = runs_by_status(engine)
                assert not any(status == "running" for _job, status in statuses), statuses
                assert statuses[("logs", "stopped")] >= 1, statuses
                assert not any(job == "costs" for job, _status in statuses), statuses
                assert calls_by_job(engine)["logs"] < whole_calls, "logs ran to the end"

                resumed = run_cli(args, env, tmp_path / "resumed.log")
                assert resumed.returncode == 0, resumed.output[-3000:]
                assert_same_store(snapshot(engine, EPOCH), expected, "SIGINT")
                no_duplicate_ids(engine)
            finally:
                engine.dispose()


@pytest.mark.timeout(240)
def test_sigint_stops_collect_once_between_chunks(
    world_server: EmulatorServer, tmp_path: Path
) -> None:
    """`collect --once` on an empty store reads the whole retention window (many chunks):
    Ctrl-C ends it after the chunk in flight, exit 130, nothing left 'running'."""
    with fresh_store("sqlite", tmp_path) as url:
        engine = make_engine(url)
        try:
            code, output = run_and_signal(
                ["collect", "--once"],
                pinned_env(world_server, url),
                tmp_path / "once.log",
                engine,
                lambda b, p: p.finished["metrics"] >= b.finished["metrics"] + 2,
                signal.SIGINT,
            )
            assert code == 128 + signal.SIGINT, output[-3000:]
            assert "stopped by SIGINT" in output, output[-3000:]
            statuses = runs_by_status(engine)
            assert not any(status == "running" for _job, status in statuses), statuses
            assert not any(job in ("logs", "costs") for job, _status in statuses), statuses
        finally:
            engine.dispose()


# ------------------------------------------------------------------------ backfill --days N


def _earliest_window(engine: Engine, job: str) -> datetime:
    with engine.connect() as conn:
        return conn.execute(
            select(func.min(CollectorRun.window_start)).where(
                CollectorRun.job == job, CollectorRun.status == "ok"
            )
        ).scalar_one()


@pytest.mark.timeout(300)
def test_backfill_days_fills_back_before_a_shorter_backfill(
    backend: str, world_server: EmulatorServer, reference: Reference, tmp_path: Path
) -> None:
    """`backfill --days 1`, then `--days 2`: the watermarks are already at now, but the day
    before the first backfill is missing; the second run fills it (no gap, no duplicate), and
    its store equals one 2-day backfill's exactly."""
    with fresh_store(backend, tmp_path) as url:
        engine = make_engine(url)
        env = pinned_env(world_server, url)
        try:
            one = run_cli(["backfill", "--days", "1"], env, tmp_path / "one.log")
            assert one.returncode == 0, one.output[-3000:]
            now = world_server.world.now()
            assert _earliest_window(engine, "metrics") >= now - timedelta(days=1, minutes=1)

            two = run_cli(["backfill", "--days", "2"], env, tmp_path / "two.log")
            assert two.returncode == 0, two.output[-3000:]
            for job in ("metrics", "logs", "costs"):
                assert _earliest_window(engine, job) <= now - timedelta(days=2), job
            assert_same_store(snapshot(engine, EPOCH), reference.store, f"{backend}, 1 then 2")
            no_duplicate_ids(engine)

            before = snapshot(engine, EPOCH)
            runs_before = last_run_id(engine)
            again = run_cli(["backfill", "--days", "2"], env, tmp_path / "again.log")
            assert again.returncode == 0, again.output[-3000:]
            assert snapshot(engine, EPOCH) == before
            with engine.connect() as conn:
                windows = conn.execute(
                    select(CollectorRun.job, CollectorRun.window_start).where(
                        CollectorRun.id > runs_before, CollectorRun.job.in_(("metrics", "logs"))
                    )
                ).all()
            # filled: the third run only re-reads the overlap behind the watermarks
            assert all(start >= now - timedelta(minutes=16) for _job, start in windows), windows
        finally:
            engine.dispose()


@pytest.mark.timeout(300)
def test_filling_back_resumes_after_a_kill(
    world_server: EmulatorServer, reference: Reference, tmp_path: Path
) -> None:
    """SIGKILL while `--days 2` fills back behind a 1-day backfill: the re-run continues from
    where the filled stretch reached (the finished chunks are not read again) and ends equal
    to one 2-day backfill."""
    with fresh_store("sqlite", tmp_path) as url:
        engine = make_engine(url)
        env = pinned_env(world_server, url)
        try:
            one = run_cli(["backfill", "--days", "1"], env, tmp_path / "one.log")
            assert one.returncode == 0, one.output[-3000:]
            day_one = _earliest_window(engine, "logs")
            killed = run_and_kill(
                ["backfill", "--days", "2"],
                env,
                tmp_path / "killed.log",
                engine,
                # two workspaces' forward runs, then a few 2-hour fill-back runs
                lambda b, p: p.finished["logs"] >= b.finished["logs"] + 5,
            )
            assert killed.returncode == -signal.SIGKILL, killed.output[-3000:]
            with engine.connect() as conn:
                reached = dict(
                    conn.execute(
                        select(
                            CollectorRun.job + "|" + CollectorRun.scope,
                            func.min(CollectorRun.window_start),
                        )
                        .where(CollectorRun.status == "ok")
                        .group_by(CollectorRun.job, CollectorRun.scope)
                    ).all()
                )
            assert min(v for k, v in reached.items() if k.startswith("logs|")) < day_one, (
                "the kill came before any fill-back finished"
            )
            cut = last_run_id(engine)

            resumed = run_cli(["backfill", "--days", "2"], env, tmp_path / "resumed.log")
            assert resumed.returncode == 0, resumed.output[-3000:]
            with engine.connect() as conn:
                again = conn.execute(
                    select(
                        CollectorRun.job + "|" + CollectorRun.scope, CollectorRun.window_end
                    ).where(
                        CollectorRun.id > cut,
                        CollectorRun.job.in_(("metrics", "logs")),
                        CollectorRun.window_end <= day_one,
                    )
                ).all()
            # filling back went on from where each scope's filled stretch reached: nothing the
            # killed run finished is read again
            assert again and all(end <= reached[key] for key, end in again), (again, reached)
            assert_same_store(snapshot(engine, EPOCH), reference.store, "fill-back killed")
            no_duplicate_ids(engine)
        finally:
            engine.dispose()


# ------------------------------------------------------------------------ small pieces


def test_foundry_watch_now_pins_the_job_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.jobs.base import JobContext
    from models.settings import ConfigError, load_settings

    monkeypatch.setenv("FOUNDRY_WATCH_NOW", "2026-11-20T12:00:00Z")
    pinned = JobContext(load_settings(), engine=None, credential=None)  # type: ignore[arg-type]
    assert pinned.clock() == datetime(2026, 11, 20, 12, tzinfo=UTC)
    monkeypatch.setenv("FOUNDRY_WATCH_NOW", "2026-11-20T13:30:00")  # naive: read as UTC
    assert load_settings().now == datetime(2026, 11, 20, 13, 30, tzinfo=UTC)
    monkeypatch.setenv("FOUNDRY_WATCH_NOW", "2026-11-20T14:00:00+02:00")
    assert load_settings().now == datetime(2026, 11, 20, 12, tzinfo=UTC)
    monkeypatch.setenv("FOUNDRY_WATCH_NOW", "yesterday")
    with pytest.raises(ConfigError, match="FOUNDRY_WATCH_NOW"):
        load_settings()
    monkeypatch.delenv("FOUNDRY_WATCH_NOW")
    free = JobContext(load_settings(), engine=None, credential=None)  # type: ignore[arg-type]
    assert abs(free.clock() - datetime.now(UTC)) < timedelta(minutes=1)


def test_summary_is_one_row_per_source() -> None:
    from collector.jobs.base import ScopeOutcome
    from collector.service import summarize

    outcomes = [
        ScopeOutcome("metrics", "a", "ok", 10, 3),
        ScopeOutcome("metrics", "a", "ok", 5, 3),
        ScopeOutcome("metrics", "b", "failed", 0, 1, "metrics on b: 403"),
        ScopeOutcome("logs", "w", "partial", 7, 2, "logs on w: 1 malformed row"),
        ScopeOutcome("costs", "s", "skipped", 0, 0, "quota"),
    ]
    rows = {s.source: s for s in summarize(outcomes, {"metrics": 2.5})}
    assert list(rows) == ["metrics", "logs", "costs"]
    m = rows["metrics"]
    assert (m.scopes, m.runs, m.rows, m.api_calls, m.failures, m.status, m.seconds) == (
        2,
        3,
        15,
        7,
        1,
        "failed",
        2.5,
    )
    assert m.error == "metrics on b: 403"
    assert (rows["logs"].status, rows["costs"].status) == ("partial", "skipped")
