"""Store behaviour on SQLite and PostgreSQL: upserts are idempotent, times stay UTC, the
migrated schema equals the models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from models.db import PG_COPY_MIN_ROWS, make_engine, natural_key, upsert
from models.migrations import SchemaOutOfDate, ensure_current, head_revision, upgrade
from models.tables import Base, Deployment, MetricPoint, Price, Request, Resource

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _seed_deployment(engine: Engine) -> int:
    with engine.begin() as conn:
        upsert(
            conn,
            Resource,
            [
                {
                    "arm_id": "/subscriptions/s1/resourcegroups/rg/providers/"
                    "microsoft.cognitiveservices/accounts/acct",
                    "subscription_id": "s1",
                    "resource_group": "rg",
                    "name": "acct",
                    "location": "eastus2",
                    "first_seen": T0,
                    "last_seen": T0,
                }
            ],
        )
        resource_id = conn.execute(select(Resource.id)).scalar_one()
        upsert(
            conn,
            Deployment,
            [
                {
                    "resource_id": resource_id,
                    "name": "claude-sonnet-4-5",
                    "model_name": "claude-sonnet-4-5",
                    "first_seen": T0,
                    "last_seen": T0,
                }
            ],
        )
        return conn.execute(select(Deployment.id)).scalar_one()


def _requests(deployment_id: int, n: int, *, status: int = 200) -> list[dict]:
    return [
        {
            "correlation_id": f"00000000-0000-0000-0000-{i:012d}",
            "time": T0 + timedelta(seconds=i),
            "deployment_id": deployment_id,
            "deployment_name": "claude-sonnet-4-5",
            "status_code": status,
            "duration_ms": 100.0 + i,
        }
        for i in range(n)
    ]


def _count(engine: Engine, model) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar_one()


@pytest.mark.parametrize("n", [5, PG_COPY_MIN_ROWS + 50])
def test_same_batch_twice_gives_same_rows(engine: Engine, n: int) -> None:
    dep = _seed_deployment(engine)
    rows = _requests(dep, n)
    for _ in range(2):
        with engine.begin() as conn:
            assert upsert(conn, Request, rows) == n
    assert _count(engine, Request) == n
    with engine.connect() as conn:
        total = conn.execute(select(func.sum(Request.duration_ms))).scalar_one()
    assert total == pytest.approx(sum(r["duration_ms"] for r in rows))


@pytest.mark.parametrize("n", [3, PG_COPY_MIN_ROWS + 1])
def test_conflict_updates_only_given_columns(engine: Engine, n: int) -> None:
    dep = _seed_deployment(engine)
    with engine.begin() as conn:
        upsert(conn, Request, _requests(dep, n))
    # A second source knows the Anthropic id and tokens, not the duration: it must not blank it.
    enrich = [
        {
            "correlation_id": r["correlation_id"],
            "time": r["time"],
            "status_code": r["status_code"],
            "request_id": f"req_{i}",
            "input_tokens": 7,
        }
        for i, r in enumerate(_requests(dep, n))
    ]
    with engine.begin() as conn:
        upsert(conn, Request, enrich)
    with engine.connect() as conn:
        got = Session(conn).scalars(select(Request).order_by(Request.time)).all()
    assert len(got) == n
    assert [r.request_id for r in got] == [f"req_{i}" for i in range(n)]
    assert all(r.input_tokens == 7 for r in got)
    assert [r.duration_ms for r in got] == [100.0 + i for i in range(n)]


def test_duplicates_within_one_batch_keep_the_last(engine: Engine) -> None:
    dep = _seed_deployment(engine)
    first, again = _requests(dep, 1), _requests(dep, 1, status=429)
    with engine.begin() as conn:
        upsert(conn, Request, first + again)
    with engine.connect() as conn:
        assert conn.execute(select(Request.status_code)).scalars().all() == [429]


def test_composite_natural_key_upsert(engine: Engine) -> None:
    dep = _seed_deployment(engine)
    assert natural_key(MetricPoint.__table__) == [
        "deployment_id",
        "minute",
        "metric",
        "status_code",
    ]
    point = {
        "deployment_id": dep,
        "minute": T0,
        "metric": "ModelRequests",
        "status_code": "200",
        "total": 5.0,
    }
    with engine.begin() as conn:
        upsert(conn, MetricPoint, [point, {**point, "status_code": "429", "total": 1.0}])
        upsert(conn, MetricPoint, [{**point, "total": 6.0}])  # a late-arriving revision
    with engine.connect() as conn:
        got = dict(conn.execute(select(MetricPoint.status_code, MetricPoint.total)).all())
    assert got == {"200": 6.0, "429": 1.0}


def test_times_are_stored_and_returned_as_utc(engine: Engine) -> None:
    dep = _seed_deployment(engine)
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2026, 3, 29, 3, 30, tzinfo=plus_two)  # a DST-change night in Europe
    row = {**_requests(dep, 1)[0], "time": local}
    with engine.begin() as conn:
        upsert(conn, Request, [row])
    with engine.connect() as conn:
        stored = conn.execute(select(Request.time)).scalar_one()
        in_range = conn.execute(
            select(func.count()).where(Request.time >= datetime(2026, 3, 29, 1, 30, tzinfo=UTC))
        ).scalar_one()
    assert stored.tzinfo is not None and stored.utcoffset() == timedelta(0)
    assert stored == local
    assert stored.hour == 1
    assert in_range == 1


def test_naive_datetime_is_refused(engine: Engine) -> None:
    dep = _seed_deployment(engine)
    row = {**_requests(dep, 1)[0], "time": datetime(2026, 1, 1, 0, 0)}
    with pytest.raises(Exception, match="naive datetime"), engine.begin() as conn:
        upsert(conn, Request, [row])
    assert _count(engine, Request) == 0


def test_migrated_schema_has_no_drift(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_prices_are_seeded_with_list_prices(engine: Engine) -> None:
    with engine.connect() as conn:
        prices = {p.model_name: p for p in Session(conn).scalars(select(Price))}
    assert set(prices) == {
        "claude-opus-4-5",
        "claude-sonnet-4-5",
        "claude-opus-4-1",
        "claude-haiku-4-5",
    }
    sonnet = prices["claude-sonnet-4-5"]
    assert (sonnet.input_per_mtok, sonnet.output_per_mtok) == (Decimal(3), Decimal(15))
    assert sonnet.cache_write_5m_per_mtok == Decimal("3.75")
    assert sonnet.cache_write_1h_per_mtok == Decimal(6)
    assert sonnet.cache_read_per_mtok == Decimal("0.3")


def test_refuses_to_run_on_an_old_schema(db_url: str) -> None:
    eng = make_engine(db_url)
    with pytest.raises(SchemaOutOfDate, match="foundry-watch db upgrade"):
        ensure_current(eng)
    upgrade(eng)
    ensure_current(eng)  # now current: no exception
    with eng.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000'")
    with pytest.raises(SchemaOutOfDate, match=f"needs {head_revision()}"):
        ensure_current(eng)
    eng.dispose()


def test_sqlite_engine_settings(tmp_path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'x.db'}")
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    eng.dispose()
