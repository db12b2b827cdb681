"""Ingest: request rows/s through ``models.db.upsert`` vs the raw driver, same table, same run.

Baselines (DESIGN §7): sqlite3 ``executemany`` of a plain INSERT in one transaction; psycopg
``COPY`` into the table. Target: project/raw >= 0.6 on both. Size: ``FW_BENCH_ROWS`` (1,000,000).
PostgreSQL: ``DATABASE_URL_PG`` (default the local server), in a throw-away schema.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.table import Table
from sqlalchemy import Engine, create_engine, select, text

from models.db import make_engine, upsert
from models.migrations import upgrade
from models.tables import Deployment, Request, Resource

ROWS = int(os.environ.get("FW_BENCH_ROWS", "1000000"))
REPEATS = 2
PG_URL = os.environ.get("DATABASE_URL_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
T0 = datetime(2026, 11, 1, tzinfo=UTC)
COLUMNS = [
    "correlation_id",
    "request_id",
    "time",
    "deployment_id",
    "deployment_name",
    "status_code",
    "duration_ms",
    "input_tokens",
    "output_tokens",
]


def make_rows(n: int, deployment_id: int) -> list[dict[str, Any]]:
    return [
        {
            "correlation_id": str(uuid.UUID(int=i)),
            "request_id": f"req_{i:024d}",
            "time": T0 + timedelta(milliseconds=37 * i),
            "deployment_id": deployment_id,
            "deployment_name": "claude-sonnet-4-5",
            "status_code": 429 if i % 50 == 0 else 200,
            "duration_ms": float(200 + i % 5000),
            "input_tokens": i % 4000,
            "output_tokens": i % 900,
        }
        for i in range(n)
    ]


def seed_deployment(engine: Engine) -> int:
    with engine.begin() as conn:
        upsert(
            conn,
            Resource,
            [
                {
                    "arm_id": "/subscriptions/s/resourcegroups/rg/providers/x/accounts/a",
                    "subscription_id": "s",
                    "resource_group": "rg",
                    "name": "a",
                    "location": "eastus2",
                    "first_seen": T0,
                    "last_seen": T0,
                }
            ],
        )
        rid = conn.execute(select(Resource.id)).scalar_one()
        upsert(
            conn,
            Deployment,
            [{"resource_id": rid, "name": "d", "first_seen": T0, "last_seen": T0}],
        )
        return conn.execute(select(Deployment.id)).scalar_one()


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def project_upsert(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        upsert(conn, Request, rows, batch_size=20_000)


def fresh_sqlite(path: Path) -> tuple[Engine, int]:
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    return engine, seed_deployment(engine)


def sqlite_case(workdir: Path, rows_for: Callable[[int], list[dict]]) -> tuple[float, float]:
    """Best of ``REPEATS`` alternating runs on fresh files, so neither side gets the warm-up."""
    best_raw = best_project = float("inf")
    for attempt in range(REPEATS):
        raw_path = workdir / f"raw{attempt}.db"
        raw_engine, dep = fresh_sqlite(raw_path)
        raw_engine.dispose()
        project_engine, _ = fresh_sqlite(workdir / f"project{attempt}.db")
        rows = rows_for(dep)

        def raw(path: Path = raw_path, rows: list[dict] = rows) -> None:
            # Same table, same pragmas and constraints as the project's engine.
            conn = sqlite3.connect(path)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            placeholders = ", ".join("?" * len(COLUMNS))
            sql = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({placeholders})"
            with conn:
                conn.executemany(
                    sql,
                    (
                        tuple(
                            r[c].strftime("%Y-%m-%d %H:%M:%S.%f") if c == "time" else r[c]
                            for c in COLUMNS
                        )
                        for r in rows
                    ),
                )
            conn.close()

        best_project = min(
            best_project, timed(lambda e=project_engine, r=rows: project_upsert(e, r))
        )
        best_raw = min(best_raw, timed(raw))
        project_engine.dispose()
    return best_raw, best_project


def pg_case(rows_for: Callable[[int], list[dict]]) -> tuple[float, float] | str:
    admin = create_engine(PG_URL)
    schemas = [f"fw_bench_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    try:
        with admin.begin() as conn:
            for schema in schemas:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        return f"skipped: PostgreSQL unreachable ({str(exc).splitlines()[0]})"
    engines = [
        make_engine(f"{PG_URL}?options={quote(f'-csearch_path={schema}')}") for schema in schemas
    ]
    try:
        for eng in engines:
            upgrade(eng)
        dep = seed_deployment(engines[0])
        seed_deployment(engines[1])
        rows = rows_for(dep)

        def raw() -> None:
            with engines[0].begin() as conn:
                driver = conn.connection.driver_connection
                with (
                    driver.cursor() as cur,
                    cur.copy(f"COPY requests ({', '.join(COLUMNS)}) FROM STDIN") as copy,
                ):
                    for r in rows:
                        copy.write_row([r[c] for c in COLUMNS])

        raw_s = timed(raw)
        project_s = timed(lambda: project_upsert(engines[1], rows))
        return raw_s, project_s
    finally:
        for eng in engines:
            eng.dispose()
        with admin.begin() as conn:
            for schema in schemas:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def main() -> Table:
    table = Table(
        "backend",
        "rows",
        "raw rows/s",
        "foundry-watch rows/s",
        "ratio",
        "target",
        title=f"Ingest: {ROWS:,} request rows, upsert path vs raw driver",
    )
    cache: dict[int, list[dict]] = {}

    def rows_for(dep: int) -> list[dict]:
        if dep not in cache:
            cache[dep] = make_rows(ROWS, dep)
        return cache[dep]

    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, tuple[float, float] | str] = {
            "SQLite (executemany)": sqlite_case(Path(tmp), rows_for),
            "PostgreSQL (COPY)": pg_case(rows_for),
        }
    for backend, result in results.items():
        if isinstance(result, str):
            table.add_row(backend, f"{ROWS:,}", result, "", "", ">= 0.60")
            continue
        raw_s, project_s = result
        ratio = raw_s / project_s
        table.add_row(
            backend,
            f"{ROWS:,}",
            f"{ROWS / raw_s:,.0f}",
            f"{ROWS / project_s:,.0f}",
            f"{ratio:.2f}",
            ">= 0.60 " + ("ok" if ratio >= 0.6 else "MISSED"),
        )
    return table
