"""Retention removes exactly what is older than the window, in bounded batches (SQLite and
PostgreSQL), and reports what it removed per table."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, event, func, insert, select

from collector.jobs import retention
from collector.jobs.base import JobContext
from models.db import upsert
from models.settings import load_settings
from models.tables import (
    CollectorRun,
    Cost,
    Deployment,
    LatencyRollup,
    LatencyRollupCoarse,
    MetricPoint,
    MetricRollup,
    Request,
    Resource,
    Watermark,
)

NOW = datetime(2026, 5, 20, 12, 0, 30, tzinfo=UTC)
DAYS = 30
CUT = NOW - timedelta(days=DAYS)
OFFSETS = range(-7, 8)  # minutes around the cutoff; offset 0 is exactly the cutoff (kept)


def _ctx(engine: Engine) -> JobContext:
    settings = load_settings(
        database_url=engine.url.render_as_string(hide_password=False), retention_days=DAYS
    )
    return JobContext(settings, engine, credential=None, clock=lambda: NOW)  # type: ignore[arg-type]


def _seed(engine: Engine) -> dict[str, int]:
    """Rows on both sides of the cutoff in every table; returns how many are older, per table."""
    with engine.begin() as conn:
        res_id = conn.execute(
            insert(Resource)
            .values(
                arm_id="/subscriptions/s/resourcegroups/rg/providers/x/accounts/a",
                subscription_id="s",
                resource_group="rg",
                name="a",
                location="eastus2",
                first_seen=NOW,
                last_seen=NOW,
            )
            .returning(Resource.id)
        ).scalar_one()
        dep_ids = [
            conn.execute(
                insert(Deployment)
                .values(resource_id=res_id, name=n, first_seen=NOW, last_seen=NOW)
                .returning(Deployment.id)
            ).scalar_one()
            for n in ("d1", "d2")
        ]
        minutes = [CUT.replace(second=0) + timedelta(minutes=k) for k in OFFSETS]
        points = [
            {"deployment_id": d, "minute": m, "metric": metric, "status_code": "", "total": 1.0}
            for d in dep_ids
            for m in minutes
            for metric in ("InputTokens", "OutputTokens")
        ]
        upsert(conn, MetricPoint, points)
        upsert(
            conn,
            Request,
            [
                {
                    "correlation_id": f"c{k}",
                    "time": CUT + timedelta(minutes=k),
                    "deployment_id": dep_ids[0],
                    "status_code": 200,
                }
                for k in OFFSETS
            ],
        )
        upsert(
            conn,
            LatencyRollup,
            [
                {
                    "deployment_id": d,
                    "bucket": m,
                    "status_class": "2xx",
                    "count": 1,
                    "sum_ms": 1.0,
                    "histogram": {"1": 1},
                }
                for d in dep_ids
                for m in minutes
            ],
        )
        # Hour and day rollups: a span is old only when it ends by the cutoff.
        hour0 = CUT.replace(minute=0, second=0)
        day0 = hour0.replace(hour=0)
        spans = [("hour", hour0 + timedelta(hours=k)) for k in range(-3, 3)]
        spans += [("day", day0 + timedelta(days=k)) for k in range(-3, 2)]
        for model, values in (
            (MetricRollup, {"metric": "InputTokens", "status_code": "", "total": 1.0}),
            (LatencyRollupCoarse, {"status_class": "2xx", "count": 1, "sum_ms": 1.0}),
        ):
            upsert(
                conn,
                model,
                [
                    {"deployment_id": d, "grain": g, "bucket": b, "histogram": b"\x00"} | values
                    if model is LatencyRollupCoarse
                    else {"deployment_id": d, "grain": g, "bucket": b} | values
                    for d in dep_ids
                    for g, b in spans
                ],
            )
        days = [CUT.date() + timedelta(days=k) for k in (-3, -2, -1, 0, 1)]
        upsert(
            conn,
            Cost,
            [
                {
                    "scope": "/subscriptions/s",
                    "cost_type": "ActualCost",
                    "day": d,
                    "resource_group": "rg",
                    "resource_arm_id": "/subscriptions/s/resourcegroups/rg",
                    "meter": meter,
                    "publisher_type": "Marketplace",
                    "charge_type": "Usage",
                    "cost": Decimal("1.25"),
                    "currency": "USD",
                    "fetched_at": NOW,
                }
                for d in days
                for meter in ("Claude Sonnet 4.5 Input Tokens", "Claude Sonnet 4.5 Output Tokens")
            ],
        )
        for k in OFFSETS:
            conn.execute(
                insert(CollectorRun).values(
                    job="metrics",
                    scope="x",
                    started_at=CUT + timedelta(minutes=k),
                    status="ok",
                )
            )
        upsert(
            conn,
            Watermark,
            [{"source": "metrics", "scope": "x", "high_water": CUT - timedelta(days=5),
              "updated_at": CUT - timedelta(days=5)}],
        )  # fmt: skip
    older_minutes = sum(1 for m in minutes if m < CUT)
    return {
        "metric_points": 2 * 2 * older_minutes,
        "requests": sum(1 for k in OFFSETS if k < 0),
        "latency_rollups": 2 * older_minutes,
        "metric_rollups": 2 * 6,
        "latency_rollups_coarse": 2 * 6,
        "costs": 2 * sum(1 for d in days if d < CUT.date()),
        "collector_runs": sum(1 for k in OFFSETS if k < 0),
    }


def _counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t.__tablename__: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (
                MetricPoint,
                Request,
                LatencyRollup,
                MetricRollup,
                LatencyRollupCoarse,
                Cost,
                CollectorRun,
                Watermark,
            )
        }


def _oldest(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            "metric_points": conn.execute(select(func.min(MetricPoint.minute))).scalar_one(),
            "requests": conn.execute(select(func.min(Request.time))).scalar_one(),
            "latency_rollups": conn.execute(select(func.min(LatencyRollup.bucket))).scalar_one(),
            "costs": conn.execute(select(func.min(Cost.day))).scalar_one(),
        }


def test_retention_removes_exactly_the_old_rows_in_batches(engine: Engine) -> None:
    older = _seed(engine)
    before = _counts(engine)
    batches: list[tuple[str, int]] = []
    commits: list[int] = []

    def on_commit(_conn: Any) -> None:
        commits.append(1)

    event.listen(engine, "commit", on_commit)
    try:
        outcomes = retention.run(
            _ctx(engine), batch_size=3, on_batch=lambda t, n: batches.append((t, n))
        )
    finally:
        event.remove(engine, "commit", on_commit)

    assert {o.scope: (o.status, o.rows) for o in outcomes} == {
        t: ("ok", n) for t, n in older.items()
    }
    after = _counts(engine)
    for table, n in older.items():
        # collector_runs also gained one record per table from this very run
        extra = len(older) if table == "collector_runs" else 0
        assert after[table] == before[table] - n + extra, table
    assert after["watermarks"] == before["watermarks"]  # history/config is not retention's

    # Nothing older than the cutoff is left; the cutoff itself (and its day) is kept.
    oldest = _oldest(engine)
    assert oldest["metric_points"] == CUT.replace(second=0) + timedelta(minutes=1)
    assert oldest["requests"] == CUT
    assert oldest["latency_rollups"] == CUT.replace(second=0) + timedelta(minutes=1)
    assert oldest["costs"] == CUT.date()
    with engine.connect() as conn:
        for model in (MetricRollup, LatencyRollupCoarse):
            kept = dict(
                conn.execute(
                    select(model.grain, func.min(model.bucket)).group_by(model.grain)
                ).all()
            )
            # the hour and the day the cutoff falls in are kept; the whole ones before it go
            assert kept == {
                "hour": CUT.replace(minute=0, second=0),
                "day": CUT.replace(hour=0, minute=0, second=0),
            }, model.__tablename__
    with engine.connect() as conn:
        kept_runs = conn.execute(
            select(func.min(CollectorRun.started_at)).where(CollectorRun.job == "metrics")
        ).scalar_one()
    assert kept_runs == CUT

    # Bounded batches: never more than 3 rows in one delete, each in its own transaction.
    assert batches and all(0 < n <= 3 for _t, n in batches)
    for table, n in older.items():
        sizes = [k for t, k in batches if t == table]
        assert sum(sizes) == n
        assert len(sizes) == math.ceil(n / 3)
    assert len(commits) >= len(batches)

    # The run records say what each table lost.
    with engine.connect() as conn:
        runs = conn.execute(
            select(CollectorRun.scope, CollectorRun.rows, CollectorRun.status).where(
                CollectorRun.job == "retention"
            )
        ).all()
    assert {(r.scope, r.rows, r.status) for r in runs} == {(t, n, "ok") for t, n in older.items()}

    # A second run finds nothing more to delete.
    again = retention.run(_ctx(engine), batch_size=3)
    assert all(o.status == "ok" and o.rows == 0 for o in again)
    assert _counts(engine)["metric_points"] == after["metric_points"]


def test_retention_with_the_default_batch_size(engine: Engine) -> None:
    older = _seed(engine)
    outcomes = retention.run(_ctx(engine))
    assert {o.scope: o.rows for o in outcomes} == older
