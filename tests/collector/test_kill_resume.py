"""A backfill killed with SIGKILL at several points and restarted ends with the same store as one
uninterrupted backfill: no gaps, no duplicates (issue 5, "must be shown by tests").

The collector runs as a real ``foundry-watch backfill`` subprocess, as a user runs it, against an
emulator in this process whose clock is pinned, so every run sees the same world; the
collector's clock is pinned to the same instant (``FOUNDRY_WATCH_NOW``, see ``pinned_env``), so
every run covers exactly the same window and the stores are compared whole, row for row.

Kill points are progress-based (read from the store while the process runs), with a random
jitter and one random point; the seed is printed on failure and ``KILL_SEED`` replays it. The
helpers here (pinned emulator, CLI env, kill, store snapshot) are shared by the other CLI tests
of this folder.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.orm import aliased

from emulator.costs import schedule
from emulator.server import EmulatorServer, isolated_env
from models.db import make_engine
from models.migrations import upgrade
from models.tables import (
    CollectorRun,
    Cost,
    Deployment,
    LatencyRollup,
    MetricPoint,
    Request,
    Resource,
    Watermark,
)
from tests.conftest import PG_URL

EXE = shutil.which("foundry-watch", path=str(Path(sys.executable).parent))
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAYS = 2
SEED = 42
#: Longest request the emulator generates is well under this; requests are compared from
#: ``lo`` on, so one that started before a run's window but was logged inside it never counts.
MARGIN = timedelta(minutes=15)
#: The emulator's world: small enough for a 2-day backfill in ~15 s, big enough for 8 metric
#: chunks, 2 workspaces and 2 cost scopes (several kill points in each phase).
WORLD = {"deployments_per_resource": 2, "requests_per_day": 300}


# ------------------------------------------------------------------------------ helpers


def pinned_now(days: int = DAYS) -> datetime:
    """A whole minute a few minutes ago (every collector window, which ends at its real now
    minus a settle minute, reaches past it, so all runs read the world up to its very end) —
    or an hour earlier, and so on, until Cost Management has billed a day of the ``days``-day
    window. Marketplace costs appear 1–3 days late (``emulator.costs.schedule``): just after
    midnight UTC a 2-day window can hold no billed day, and the stores would be compared
    without a single cost row (it failed so at 00:30 UTC)."""
    world = SimpleNamespace(seed=SEED)
    now = (datetime.now(UTC) - timedelta(minutes=5)).replace(second=0, microsecond=0)
    while not any(
        schedule(world, day).first_report_at <= now
        for day in _days((now - timedelta(days=days)).date(), now.date() - timedelta(days=1))
    ):
        now -= timedelta(hours=1)
    return now


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


@contextmanager
def pinned_emulator(**world: Any) -> Iterator[EmulatorServer]:
    server = EmulatorServer(seed=SEED, port=0, clock=pinned_now(), **{**WORLD, **world})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def cli_env(server: EmulatorServer, database_url: str, **extra: str) -> dict[str, str]:
    """The environment a user would have: the emulator's settings and one store."""
    env = isolated_env(os.environ, server.env())
    env["DATABASE_URL"] = database_url
    env["FOUNDRY_WATCH_LOG_LEVEL"] = "WARNING"
    env["COLUMNS"] = "200"  # rich: one line per table row, whatever the test runner's width
    env.update(extra)
    return env


def pinned_env(server: EmulatorServer, database_url: str, **extra: str) -> dict[str, str]:
    """``cli_env`` with the collector's "now" pinned to the emulator's (``FOUNDRY_WATCH_NOW``):
    every run, killed or not, then backfills exactly the same window."""
    return cli_env(server, database_url, FOUNDRY_WATCH_NOW=server.world.now().isoformat(), **extra)


def migrated(url: str) -> str:
    """Create the schema in-process (a `db upgrade` subprocess costs seconds of imports)."""
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@contextmanager
def fresh_store(backend: str, tmp_path: Path) -> Iterator[str]:
    """A migrated empty store: a new SQLite file, or a new PostgreSQL schema dropped after."""
    if backend == "sqlite":
        yield migrated(f"sqlite:///{tmp_path / f'store-{uuid.uuid4().hex[:8]}.db'}")
        return
    schema = f"fw_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield migrated(f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}")
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@dataclass(frozen=True)
class Progress:
    """What a collector has committed so far, read from its store."""

    started: Counter[str]
    finished: Counter[str]
    watermarks: Counter[str]

    @property
    def finished_total(self) -> int:
        return sum(self.finished.values())


def progress(engine: Engine) -> Progress:
    started: Counter[str] = Counter()
    finished: Counter[str] = Counter()
    with engine.connect() as conn:
        for job, status, n in conn.execute(
            select(CollectorRun.job, CollectorRun.status, func.count()).group_by(
                CollectorRun.job, CollectorRun.status
            )
        ):
            started[job] += n
            if status != "running":
                finished[job] += n
        marks = Counter(
            dict(
                conn.execute(
                    select(Watermark.source, func.count()).group_by(Watermark.source)
                ).all()
            )
        )
    return Progress(started, finished, marks)


KillPoint = Callable[[Progress, Progress], bool]


@dataclass
class Killed:
    returncode: int
    seconds: float
    output: str


def run_cli(args: list[str], env: dict[str, str], log: Path, timeout: float = 240) -> Killed:
    """Run ``foundry-watch args`` to the end; output goes to a file (the pipe could fill)."""
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run([EXE, *args], env=env, stdout=out, stderr=out, timeout=timeout)
    return Killed(proc.returncode, time.monotonic() - t0, log.read_text())


def run_and_kill(
    args: list[str],
    env: dict[str, str],
    log: Path,
    store: Engine,
    when: KillPoint,
    jitter_s: float = 0.0,
    timeout: float = 180,
) -> Killed:
    """Start ``foundry-watch args``; SIGKILL it as soon as ``when(before, now)`` holds for the
    store's progress (plus ``jitter_s``, to land anywhere in the next step)."""
    before = progress(store)
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen([EXE, *args], env=env, stdout=out, stderr=out)
        try:
            while proc.poll() is None:
                if time.monotonic() - t0 > timeout:
                    raise AssertionError(f"kill point never reached within {timeout}s")
                if when(before, progress(store)):
                    time.sleep(jitter_s)
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.05)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Killed(proc.returncode, time.monotonic() - t0, log.read_text())


# ------------------------------------------------------------------------------ the stores


def _norm(value: Any) -> Any:
    """Backend-neutral values: aware UTC datetimes, 6-place decimals, sorted JSON."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, Decimal):
        return value.quantize(Decimal("0.000001"))
    if isinstance(value, dict):
        return tuple(sorted((str(k), _norm(v)) for k, v in value.items()))
    return value


def _columns(model: Any, *skip: str) -> list[Any]:
    return [c for c in model.__table__.columns if c.name not in skip]


def snapshot(engine: Engine, lo: datetime) -> dict[str, Any]:
    """The store's content from ``lo`` on, keyed by natural keys; store ids are replaced by
    what they name (resource ARM id, deployment name), so two stores compare column by column.

    Left out: surrogate ids, and the collector's bookkeeping times (first/last seen, fetched
    at), which are when a run happened, not what it collected.
    """
    res = aliased(Resource)
    dep = aliased(Deployment)
    dep_res = aliased(Resource)
    dep_key = (dep_res.arm_id, dep.name)
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        cols = _columns(Resource, "id", "first_seen", "last_seen")
        out["resources"] = {
            row.arm_id: tuple(_norm(v) for v in row) for row in conn.execute(select(*cols))
        }
        cols = _columns(Deployment, "id", "resource_id", "first_seen", "last_seen")
        out["deployments"] = {
            (row[0], row[1]): tuple(_norm(v) for v in row[1:])
            for row in conn.execute(
                select(res.arm_id, *cols).join(res, res.id == Deployment.resource_id)
            )
        }
        cols = _columns(Request, "id", "resource_id", "deployment_id")
        rows = conn.execute(
            select(
                res.arm_id.label("resource"),
                dep_res.arm_id.label("deployment_resource"),
                dep.name.label("deployment"),
                *cols,
            )
            .outerjoin(res, res.id == Request.resource_id)
            .outerjoin(dep, dep.id == Request.deployment_id)
            .outerjoin(dep_res, dep_res.id == dep.resource_id)
            .where(Request.time >= lo)
        ).all()
        out["requests"] = {
            row.correlation_id: {k: _norm(v) for k, v in row._mapping.items()} for row in rows
        }
        out["requests_stored"] = len(rows)
        for name, model, when in (
            ("metric_points", MetricPoint, MetricPoint.minute),
            ("latency_rollups", LatencyRollup, LatencyRollup.bucket),
        ):
            cols = _columns(model, "deployment_id")
            rows = conn.execute(
                select(*dep_key, *cols)
                .join(dep, dep.id == model.deployment_id)
                .join(dep_res, dep_res.id == dep.resource_id)
                .where(when >= lo)
            ).all()
            out[name] = Counter(tuple(_norm(v) for v in row) for row in rows)
        cols = _columns(Cost, "id", "fetched_at")
        out["costs"] = Counter(
            tuple(_norm(v) for v in row)
            for row in conn.execute(select(*cols).where(Cost.day >= _day(lo)))
        )
    return out


def _day(t: datetime) -> date:
    return t.astimezone(UTC).date()


def _some(rows: Any) -> list[Any]:
    return list(rows.items() if isinstance(rows, dict) else rows)[:2]


def assert_same_store(actual: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    """Table by table, with the first differences named (a full diff would be megabytes)."""
    for table in ("resources", "deployments", "requests", "metric_points", "latency_rollups"):
        a, e = actual[table], expected[table]
        if isinstance(a, Counter):
            missing, extra = e - a, a - e
        else:
            missing = {k: v for k, v in e.items() if a.get(k) != v}
            extra = {k: v for k, v in a.items() if e.get(k) != v}
        assert not missing and not extra, (
            f"{what}: {table} differs from the uninterrupted run: {len(missing)} rows missing "
            f"or different (e.g. {_some(missing)}), {len(extra)} extra or different "
            f"(e.g. {_some(extra)})"
        )
    assert actual["requests_stored"] == len(actual["requests"]), f"{what}: duplicate requests"
    assert actual["costs"] == expected["costs"], (
        f"{what}: costs differ: missing {list((expected['costs'] - actual['costs']).items())[:3]}"
        f", extra {list((actual['costs'] - expected['costs']).items())[:3]}"
    )


def no_duplicate_ids(engine: Engine) -> None:
    with engine.connect() as conn:
        total, distinct = conn.execute(
            select(func.count(), func.count(Request.correlation_id.distinct()))
        ).one()
    assert total == distinct and total > 0, (total, distinct)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def world_server() -> Iterator[EmulatorServer]:
    with pinned_emulator() as server:
        yield server


@pytest.fixture(scope="module")
def reference(world_server: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """One uninterrupted backfill into SQLite: the store every interrupted run must equal."""
    tmp = tmp_path_factory.mktemp("reference")
    with fresh_store("sqlite", tmp) as url:
        done = run_cli(
            ["backfill", "--days", str(DAYS)], pinned_env(world_server, url), tmp / "log"
        )
        assert done.returncode == 0, done.output[-3000:]
        engine = make_engine(url)
        assert progress(engine).started["metrics"] > 2, "the reference run is too small to test"
        return engine


# ------------------------------------------------------------------------------ the test


def _kill_points(rng: random.Random) -> list[tuple[str, KillPoint, float]]:
    """Where each successive process dies; each is relative to what the store held when that
    process started, so it always lands inside work the process has not done yet."""
    k = rng.randint(1, 5)
    return [
        (
            "first metrics chunk in flight",
            lambda b, p: p.started["metrics"] > b.started["metrics"],
            rng.uniform(0.0, 0.5),
        ),
        (
            "three metrics chunks committed",
            lambda b, p: p.finished["metrics"] >= b.finished["metrics"] + 3,
            rng.uniform(0.0, 0.3),
        ),
        (
            "first request-log slice committed",
            lambda b, p: p.watermarks["logs"] > b.watermarks["logs"],
            rng.uniform(0.0, 0.3),
        ),
        (
            f"{k} more job runs finished",
            lambda b, p, k=k: p.finished_total >= b.finished_total + k,
            rng.uniform(0.0, 0.3),
        ),
    ]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkilled_backfill_resumes_to_the_uninterrupted_store(
    backend: str,
    request: pytest.FixtureRequest,
    world_server: EmulatorServer,
    reference: Engine,
    tmp_path: Path,
) -> None:
    if backend == "postgresql":
        request.getfixturevalue("pg_available")
    seed = int(os.environ.get("KILL_SEED", time.time_ns() % 1_000_000))
    points = _kill_points(random.Random(seed))
    args = ["backfill", "--days", str(DAYS)]
    with fresh_store(backend, tmp_path) as url:
        engine = make_engine(url)
        env = pinned_env(world_server, url)
        try:
            for i, (name, when, jitter) in enumerate(points):
                killed = run_and_kill(args, env, tmp_path / f"killed-{i}.log", engine, when, jitter)
                assert killed.returncode == -signal.SIGKILL, (
                    f"kill seed {seed}: run {i} ({name}) ended by itself with "
                    f"{killed.returncode} before its kill point:\n{killed.output[-2000:]}"
                )
            final = run_cli(args, env, tmp_path / "final.log")
            assert final.returncode == 0, final.output[-3000:]

            # the whole store, not a shared tail: every run covered the same pinned window
            expected = snapshot(reference, EPOCH)
            assert expected["requests"] and expected["metric_points"], "nothing to compare"
            assert expected["latency_rollups"] and expected["costs"], "nothing to compare"
            # the reference is itself the ground truth: every request the world served in the
            # window (but at its edges, where a request's start and its log time straddle it)
            now = world_server.world.now()
            lo, hi = now - timedelta(days=DAYS) + MARGIN, now - MARGIN
            truth = {r.correlation_id for r in world_server.world.requests(lo, hi)}
            stored = {k for k, v in expected["requests"].items() if lo <= v["time"] < hi}
            assert stored == truth

            actual = snapshot(engine, EPOCH)
            assert_same_store(actual, expected, f"{backend}, kill seed {seed}")
            no_duplicate_ids(engine)
        finally:
            engine.dispose()
