"""The long-running collector: ``service.serve`` runs discovery first, then every source on its
interval, records each run, and stops cleanly — a job in flight is finished, never cut off and
never left 'running'; `foundry-watch collect` does the same on SIGTERM and exits 0.

Intervals are the settings' minimums and the window one day (``retention_days=1``), so the first
round takes seconds. A ``slow`` fault on the metrics API holds a run in flight while the stop
arrives, so "waits for running jobs" is observed rather than hoped for.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from collector.azure import make_credential
from collector.jobs import SOURCES
from collector.jobs.base import JobContext
from collector.service import serve
from emulator.faults import Faults
from emulator.server import EmulatorServer
from models.settings import load_settings
from models.tables import CollectorRun
from tests.collector.test_kill_resume import EXE, cli_env, migrated

FAST = {
    "retention_days": 1,
    "discovery_interval_s": 10,
    "metrics_interval_s": 10,
    "logs_interval_s": 10,
    "costs_interval_s": 600,
}
#: A budget, so the alerts job has work (with nothing configured it returns without a run row).
BUDGET = {"name": "scheduler-test", "amount": 1_000_000}
#: A metrics call held this long keeps a run in flight while the stop arrives.
SLOW_S = 8.0  # wide enough that a loaded machine still sees the call in flight


def runs(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(CollectorRun).order_by(CollectorRun.id)).all()


def wait_for(what: str, check: Callable[[], bool], timeout: float, alive: Callable[[], bool]):
    deadline = time.monotonic() + timeout
    while not check():
        assert alive(), f"the collector ended while waiting for {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.05)


def every_source_ran(engine: Engine, sources: set[str]) -> bool:
    with engine.connect() as conn:
        done = set(
            conn.execute(
                select(CollectorRun.job).where(CollectorRun.status != "running").distinct()
            ).scalars()
        )
    return sources <= done


def running_metrics(engine: Engine) -> int | None:
    with engine.connect() as conn:
        return conn.execute(
            select(func.max(CollectorRun.id)).where(
                CollectorRun.job == "metrics", CollectorRun.status == "running"
            )
        ).scalar_one()


def hold_next_metrics_run(faults: Faults, engine: Engine, alive: Callable[[], bool]) -> int:
    """Slow down the next metrics call and return the id of the run it holds in flight.

    The slow call may belong to a run that started before the fault was set (its next call
    is the one held; two failed runs picked the run after it). Metrics scopes run one after
    another, so while the slow call is in flight the only metrics run 'running' is its own.
    """
    rule = faults.add(endpoint="metrics", kind="slow", delay_s=SLOW_S, count=1)
    held: list[int] = []

    def in_flight() -> bool:
        if rule.fired:
            run_id = running_metrics(engine)
            if run_id is not None:
                held.append(run_id)
        return bool(held)

    wait_for("metrics run in flight", in_flight, FAST["metrics_interval_s"] + 30, alive)
    time.sleep(0.5)  # inside the slow call now
    return held[0]


def assert_clean_end(engine: Engine, held: int, stopped_at: datetime) -> None:
    all_runs = runs(engine)
    assert not [r for r in all_runs if r.status == "running"], "runs left 'running'"
    finished = next(r for r in all_runs if r.id == held)
    assert finished.status == "ok", (finished.status, finished.error)
    assert finished.duration_ms >= SLOW_S * 1000, "the held run is not the one the slow call held"
    assert finished.finished_at > stopped_at, "the in-flight run was not waited for"
    # a job in flight finishes its remaining scopes; nothing goes round a second time
    late = Counter((r.job, r.scope) for r in all_runs if r.started_at > stopped_at)
    assert all(n == 1 for n in late.values()), f"jobs started again after the stop: {late}"


def test_serve_runs_every_source_and_stops_cleanly(
    emulator: EmulatorServer, faults: Faults, engine: Engine
) -> None:
    settings = load_settings(
        database_url=engine.url.render_as_string(hide_password=False),
        subscriptions=",".join(emulator.world.subscriptions),
        budgets=[BUDGET],
        **FAST,
    )
    ctx = JobContext(settings=settings, engine=engine, credential=make_credential(settings))
    stop = threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            serve(ctx, stop)
        except BaseException as exc:  # surfaced below: a crash must fail the test
            failure.append(exc)

    thread = threading.Thread(target=target, name="collector-under-test", daemon=True)
    thread.start()
    try:
        everything = lambda: every_source_ran(engine, set(SOURCES))  # noqa: E731
        wait_for("a run of every source", everything, 120, thread.is_alive)
        first = runs(engine)
        discovery = [r for r in first if r.job == "discovery"]
        others = [r for r in first if r.job != "discovery"]
        assert len(discovery) >= len(settings.subscriptions)
        assert first[0].job == "discovery"
        first_round = discovery[: len(settings.subscriptions)]
        assert max(r.finished_at for r in first_round) <= min(r.started_at for r in others), (
            "a source started before the first discovery finished"
        )
        for source in ("metrics", "logs", "costs"):
            mine = [r for r in first if r.job == source and r.status != "running"]
            assert mine and all(r.status == "ok" for r in mine), [
                (r.job, r.status, r.error) for r in mine
            ]
            assert sum(r.api_calls for r in mine) > 0, source
        assert sum(r.rows for r in first if r.job == "logs") > 0

        held = hold_next_metrics_run(faults, engine, thread.is_alive)
        stopped_at = datetime.now(UTC)
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "serve() did not return after the stop event"
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not failure, failure
    assert_clean_end(engine, held, stopped_at)


@pytest.mark.timeout(240)
def test_sigterm_ends_collect_cleanly_with_exit_0(
    emulator: EmulatorServer, faults: Faults, db_url: str, tmp_path: Path
) -> None:
    from models.db import make_engine

    url = migrated(db_url)
    config = tmp_path / "foundry-watch.toml"
    config.write_text(
        "".join(f"{k} = {v}\n" for k, v in FAST.items())
        + f'[[budgets]]\nname = "{BUDGET["name"]}"\namount = {BUDGET["amount"]}\n'
    )
    env = cli_env(emulator, url, FOUNDRY_WATCH_CONFIG=str(config))
    engine = make_engine(url)
    log = tmp_path / "collect.log"
    with log.open("w") as out:
        proc = subprocess.Popen([EXE, "collect"], env=env, stdout=out, stderr=out)
    try:
        alive = lambda: proc.poll() is None  # noqa: E731
        wait_for("a first round", lambda: every_source_ran(engine, set(SOURCES)), 150, alive)
        held = hold_next_metrics_run(faults, engine, alive)
        stopped_at = datetime.now(UTC)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert code == 0, output[-3000:]
    assert_clean_end(engine, held, stopped_at)
    engine.dispose()
