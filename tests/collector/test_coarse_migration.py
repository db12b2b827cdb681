"""Migration 0002 fills the hour/day rollups from the minute rows an older store already holds,
so an upgraded store answers 30-day views exactly like one that had the tables all along."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from collector import coarse_rollups, rollups
from models.db import make_engine, upsert
from models.migrations import upgrade
from models.tables import (
    Deployment,
    LatencyRollupCoarse,
    MetricPoint,
    MetricRollup,
    Request,
    Resource,
)
from tests.dashboard.seed import utc_now_minute


def _snapshot(engine) -> tuple[list, list]:
    with engine.connect() as conn:
        metrics = conn.execute(
            select(MetricRollup.__table__).order_by(*MetricRollup.__table__.primary_key)
        ).all()
        latency = conn.execute(
            select(LatencyRollupCoarse.__table__).order_by(
                *LatencyRollupCoarse.__table__.primary_key
            )
        ).all()
    return metrics, latency


def test_upgrade_fills_coarse_rollups_from_existing_minutes(db_url: str, monkeypatch) -> None:
    engine = make_engine(db_url)
    upgrade(engine, "0001")
    now = utc_now_minute()
    minutes = [now - timedelta(hours=h, minutes=7) for h in range(0, 50, 3)]
    resource = {"id": 1, "arm_id": "/subscriptions/s/x", "name": "x", "subscription_id": "s"}
    resource |= {"resource_group": "rg", "location": "eastus", "first_seen": now, "last_seen": now}
    deployment = {"id": 1, "resource_id": 1, "name": "claude-opus-4-5", "first_seen": now}
    deployment |= {"model_name": "claude-opus-4-5", "last_seen": now}
    points = [
        {"deployment_id": 1, "minute": m, "metric": "ModelRequests", "status_code": "200"}
        | {"total": float(i + 1), "count": 1.0}
        for i, m in enumerate(minutes)
    ]
    requests = [
        {"correlation_id": f"00000000-0000-4000-8000-{i:012d}", "time": m, "deployment_id": 1}
        | {"resource_id": 1, "status_code": 200 if i % 4 else 429, "duration_ms": 100.0 + 37 * i}
        for i, m in enumerate(minutes)
    ]
    # What a collector of the 0001 era wrote: minute tables only (it had no coarse tables).
    monkeypatch.setattr(coarse_rollups, "refresh", lambda *args, **kwargs: 0)
    with engine.begin() as conn:
        upsert(conn, Resource, [resource])
        upsert(conn, Deployment, [deployment])
        upsert(conn, MetricPoint, points)
        upsert(conn, Request, requests)
        rollups.recompute_rollups(conn, [1], min(minutes), max(minutes) + timedelta(minutes=1))
    monkeypatch.undo()

    upgrade(engine)
    upgraded = _snapshot(engine)
    assert upgraded[0] and upgraded[1]
    with engine.begin() as conn:
        conn.execute(MetricRollup.__table__.delete())
        conn.execute(LatencyRollupCoarse.__table__.delete())
        coarse_rollups.refresh(conn, min(minutes), now + timedelta(minutes=1))
    assert _snapshot(engine) == upgraded
    engine.dispose()
