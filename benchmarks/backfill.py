"""Backfill: 30 days at 50 deployments and >= 5 M request log rows, rows/s and peak RSS.

The collector runs exactly as a user runs it: ``foundry-watch backfill --days N`` in a child
process, against the emulator (real Azure SDKs over HTTPS) served from another process, into a
fresh SQLite file and a fresh PostgreSQL schema. Its clock is pinned (``FOUNDRY_WATCH_NOW``) to
the emulator's, so every run reads the same world.

Memory: the child's peak RSS is its kernel ``ru_maxrss`` (``os.wait4`` on that one pid, not
``RUSAGE_CHILDREN``, which would mix in the emulator); ``/proc/{pid}/status`` is sampled as it
runs to show the curve (RSS at 25/50/75 % of the run). Pages are streamed, not accumulated, so
the peak must stay flat (<= ``RSS_LIMIT_MB``) however many rows go through.

Throughput is shown per wall second and per second of the collector's own CPU time
(``ru_utime + ru_stime``): on a shared machine the wall figure mostly measures the other
processes; the CPU figure is what the collector costs.

Baseline, side by side in the same process: the same backfill of a world with a tenth of the
traffic. Ten times the rows should cost about ten times the time (rows/s alike) and *no* more
memory (RSS ratio ~1).

Sizes: ``FW_BENCH_BACKFILL_DAYS`` (30), ``FW_BENCH_BACKFILL_RESOURCES`` (10) x
``FW_BENCH_BACKFILL_DEPLOYMENTS`` (5 per resource: 50 deployments),
``FW_BENCH_BACKFILL_REQUESTS_PER_DAY`` (3,400 per deployment on average: ~5.1 M rows in 30 days,
3,000 gave 4.51 M;
lower it for a quick run), ``FW_BENCH_BACKFILL_BACKENDS`` (``sqlite,postgresql``),
``FW_BENCH_BACKFILL_SIZES`` (``baseline,full``; one of them to run only that world).
PostgreSQL: ``DATABASE_URL_PG`` (default the local server), in a throw-away schema.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.table import Table
from sqlalchemy import create_engine, func, select, text

from emulator.server import isolated_env
from models.db import make_engine
from models.migrations import upgrade
from models.tables import Cost, LatencyRollup, MetricPoint, Request

DAYS = int(os.environ.get("FW_BENCH_BACKFILL_DAYS", "30"))
RESOURCES = int(os.environ.get("FW_BENCH_BACKFILL_RESOURCES", "10"))
DEPLOYMENTS = int(os.environ.get("FW_BENCH_BACKFILL_DEPLOYMENTS", "5"))
REQUESTS_PER_DAY = int(os.environ.get("FW_BENCH_BACKFILL_REQUESTS_PER_DAY", "3400"))
BACKENDS = [
    b.strip()
    for b in os.environ.get("FW_BENCH_BACKFILL_BACKENDS", "sqlite,postgresql").split(",")
    if b.strip()
]
#: Which worlds to run: ``baseline`` (a tenth of the traffic) and/or ``full``.
SIZES = [
    s.strip()
    for s in os.environ.get("FW_BENCH_BACKFILL_SIZES", "baseline,full").split(",")
    if s.strip()
]
PG_URL = os.environ.get("DATABASE_URL_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: The issue's bar: >= 5 M request rows, peak RSS <= 300 MB.
TARGET_ROWS = 5_000_000
RSS_LIMIT_MB = 300
#: The baseline world has this fraction of the traffic.
BASELINE_DIVISOR = 10
SAMPLE_S = 0.25
EXE = shutil.which("foundry-watch", path=str(Path(sys.executable).parent)) or "foundry-watch"


# ------------------------------------------------------------------------------ the emulator


def _serve(conn: Any, requests_per_day: int, now: datetime) -> None:
    """Child process: an emulator over the pinned world; sends its env, serves until told."""
    from emulator.server import EmulatorServer

    server = EmulatorServer(
        seed=42,
        port=0,
        days=DAYS,
        resources=RESOURCES,
        deployments_per_resource=DEPLOYMENTS,
        requests_per_day=requests_per_day,
        clock=now,
    )
    server.start()
    conn.send(server.env())
    conn.recv()
    server.stop()


class Emulator:
    """The emulator in its own process, so its CPU and memory are not the collector's."""

    def __init__(self, requests_per_day: int, now: datetime) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, requests_per_day, now), daemon=True)

    def __enter__(self) -> dict[str, str]:
        self._proc.start()
        if not self._conn.poll(60):
            raise RuntimeError("the emulator did not start within 60 s")
        return self._conn.recv()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._proc.join(15)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)


# ------------------------------------------------------------------------------ stores


class Store:
    """A migrated empty store of one backend; dropped (PostgreSQL schema) on exit."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend = backend
        self.schema = ""
        if backend == "sqlite":
            self.url = f"sqlite:///{workdir / f'backfill-{uuid.uuid4().hex[:8]}.db'}"
        elif backend == "postgresql":
            self.schema = f"fw_bench_{uuid.uuid4().hex[:10]}"
            sep = "&" if "?" in PG_URL else "?"
            self.url = f"{PG_URL}{sep}options={quote(f'-csearch_path={self.schema}')}"
        else:
            raise ValueError(f"unknown backend {backend!r} (sqlite or postgresql)")

    def __enter__(self) -> Store:
        if self.schema:
            admin = create_engine(PG_URL)
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
            admin.dispose()
        engine = make_engine(self.url)
        upgrade(engine)
        engine.dispose()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.schema:
            admin = create_engine(PG_URL)
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            admin.dispose()

    def counts(self) -> dict[str, int]:
        engine = make_engine(self.url)
        try:
            with engine.connect() as conn:
                return {
                    model.__tablename__: conn.execute(
                        select(func.count()).select_from(model)
                    ).scalar_one()
                    for model in (Request, MetricPoint, LatencyRollup, Cost)
                }
        finally:
            engine.dispose()


def pg_reason() -> str | None:
    """None if PostgreSQL answers, else why not (the row then says skipped)."""
    try:
        probe = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with probe.connect():
            pass
        probe.dispose()
    except Exception as exc:
        return str(exc).splitlines()[0]
    return None


# ------------------------------------------------------------------------------ one backfill


@dataclass
class Result:
    seconds: float
    returncode: int
    peak_rss_mb: float
    cpu_s: float = 0.0  # the collector's own user + system time
    samples: list[tuple[float, float]] = field(default_factory=list)  # (s, MB)
    counts: dict[str, int] = field(default_factory=dict)
    output: str = ""

    @property
    def requests(self) -> int:
        return self.counts.get("requests", 0)

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    def rss_at(self, fraction: float) -> float:
        """Sampled RSS (MB) at ``fraction`` of the run (0 if the run was too short)."""
        if not self.samples:
            return 0.0
        at = self.seconds * fraction
        return min(self.samples, key=lambda s: abs(s[0] - at))[1]


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_backfill(emulator_env: dict[str, str], store: Store, now: datetime, log: Path) -> Result:
    """``foundry-watch backfill --days DAYS`` as a child; its own peak RSS from ``wait4``."""
    env = isolated_env(os.environ, emulator_env)
    env.update(
        {
            "DATABASE_URL": store.url,
            "FOUNDRY_WATCH_NOW": now.isoformat(),
            "FOUNDRY_WATCH_LOG_LEVEL": "WARNING",
            "FOUNDRY_WATCH_RETENTION_DAYS": str(DAYS),
            "COLUMNS": "160",
        }
    )
    samples: list[tuple[float, float]] = []
    with log.open("w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [EXE, "backfill", "--days", str(DAYS)], env=env, stdout=out, stderr=out
        )
        done = threading.Event()

        def sample() -> None:
            while not done.wait(SAMPLE_S):
                rss = _rss_mb(proc.pid)
                if rss is not None:
                    samples.append((time.perf_counter() - t0, rss))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return Result(
        seconds=seconds,
        returncode=proc.returncode,
        peak_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        cpu_s=usage.ru_utime + usage.ru_stime,
        samples=samples,
        counts=store.counts(),
        output=log.read_text(),
    )


# ------------------------------------------------------------------------------ the table


def pinned_now() -> datetime:
    """A whole minute a few minutes ago: the emulator's and the collector's shared "now"."""
    return (datetime.now(UTC) - timedelta(minutes=5)).replace(second=0, microsecond=0)


def main() -> Table:
    now = pinned_now()
    baseline = f"baseline (1/{BASELINE_DIVISOR})"
    # the full world first: its figures are the ones that matter and take the longest
    sizes = [
        (label, rpd)
        for key, label, rpd in (
            ("full", "full", REQUESTS_PER_DAY),
            ("baseline", baseline, max(1, REQUESTS_PER_DAY // BASELINE_DIVISOR)),
        )
        if key in SIZES
    ]
    table = Table(
        "world",
        "backend",
        "request rows",
        "all rows",
        "s",
        "request rows/s",
        "all rows/s",
        "collector CPU s",
        "all rows / CPU s",
        "RSS 25/50/75 % MB",
        "peak RSS MB",
        "target",
        title=(
            f"Backfill: {DAYS} days, {RESOURCES * DEPLOYMENTS} deployments, "
            "foundry-watch backfill via the emulator (HTTPS, real SDKs)"
        ),
    )
    results: dict[tuple[str, str], Result] = {}
    skipped = pg_reason() if "postgresql" in BACKENDS else None
    with tempfile.TemporaryDirectory() as tmp:
        for label, rpd in sizes:
            with Emulator(rpd, now) as emulator_env:
                for backend in BACKENDS:
                    if backend == "postgresql" and skipped:
                        table.add_row(
                            label, backend, f"skipped: PostgreSQL unreachable ({skipped})"
                        )
                        continue
                    with Store(backend, Path(tmp)) as store:
                        log = Path(tmp) / f"{backend}-{rpd}.log"
                        result = run_backfill(emulator_env, store, now, log)
                    results[(label, backend)] = result
                    cells = _cells(result, label == "full")
                    table.add_row(label, backend, *cells)
                    # a full-size run takes long: say each figure as soon as it is known
                    print(f"backfill {label} {backend}: {' | '.join(cells)}", file=sys.stderr)
    table.caption = _caption(results, baseline)
    return table


def _cells(r: Result, full: bool) -> list[str]:
    if r.returncode != 0:
        tail = " | ".join(r.output.strip().splitlines()[-3:])[-300:]
        return ["", "", f"{r.seconds:.0f}", f"FAILED (exit {r.returncode}): {tail}"]
    verdicts = ["RSS ok" if r.peak_rss_mb <= RSS_LIMIT_MB else "RSS MISSED"]
    if full:
        verdicts.append("rows ok" if r.requests >= TARGET_ROWS else "rows < 5 M")
    return [
        f"{r.requests:,}",
        f"{r.rows:,}",
        f"{r.seconds:.0f}",
        f"{r.requests / r.seconds:,.0f}",
        f"{r.rows / r.seconds:,.0f}",
        f"{r.cpu_s:,.0f}",
        f"{r.rows / r.cpu_s:,.0f}" if r.cpu_s else "",
        "/".join(f"{r.rss_at(f):.0f}" for f in (0.25, 0.5, 0.75)),
        f"{r.peak_rss_mb:.0f}",
        f"<= {RSS_LIMIT_MB} MB: " + ", ".join(verdicts),
    ]


def _caption(results: dict[tuple[str, str], Result], baseline: str) -> str:
    parts = []
    for backend in BACKENDS:
        base, full = results.get((baseline, backend)), results.get(("full", backend))
        if not base or not full or base.returncode or full.returncode or not base.requests:
            continue
        parts.append(
            f"{backend}: full/baseline rows x{full.requests / base.requests:.1f}, "
            f"time x{full.seconds / base.seconds:.1f}, "
            f"peak RSS x{full.peak_rss_mb / base.peak_rss_mb:.2f}"
        )
    return "; ".join(parts) + " (flat memory: RSS ratio ~1 while rows grow ~10x)" if parts else ""
