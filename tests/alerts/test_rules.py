"""Operational rules on SQLite and PostgreSQL: 429 rate, error rate, p95 latency, staleness,
with minimum counts, cool-down, resolve messages and episodes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from alerts.config import load_alert_config
from alerts.job import check
from collector import rollups
from collector.runs import set_watermark
from models.db import upsert
from models.tables import AlertEvent, Deployment, LatencyRollup
from tests.alerts.conftest import Clock, Store

T0 = datetime(2025, 11, 20, 10, 0, tzinfo=UTC)


def rules_config(*rules: dict[str, Any]) -> Any:
    return load_alert_config({"alerts": {"rules": list(rules)}})


def throttling(**kw: Any) -> dict[str, Any]:
    return {
        "name": "throttling",
        "kind": "rate_429",
        "threshold": 5,
        "window": "10m",
        "delay": "0s",
        "min_requests": 50,
        "cooldown": "30m",
        **kw,
    }


def events(store: Store) -> list[tuple]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(AlertEvent.rule, AlertEvent.period, AlertEvent.kind, AlertEvent.message)
            .where(AlertEvent.kind.in_(["firing", "resolved"]))
            .order_by(AlertEvent.id)
        ).all()
    return [tuple(r) for r in rows]


def test_429_rate_fires_once_resolves_and_respects_cooldown(store: Store) -> None:
    cfg = rules_config(throttling(deployments="prod-*"))
    clock = Clock(T0 + timedelta(minutes=10))
    store.add_requests("prod-sonnet", T0, 10, {"200": 92, "429": 8})  # 8 %
    store.add_requests("dev-haiku", T0, 10, {"200": 50, "429": 50})  # not matched by prod-*
    check(store.engine, cfg, clock)
    check(store.engine, cfg, clock)
    [(rule, period, kind, message)] = events(store)
    assert (rule, period, kind) == ("rule:throttling:res-a/prod-sonnet", "ep1", "firing")
    assert "429 rate 8.0 % on prod-sonnet (res-a) over 10 min" in message
    assert "1,000 requests" in message

    clock.advance(minutes=10)  # next 10 minutes: 1 %
    store.add_requests("prod-sonnet", T0 + timedelta(minutes=10), 10, {"200": 99, "429": 1})
    check(store.engine, cfg, clock)
    check(store.engine, cfg, clock)
    assert [e[1:3] for e in events(store)] == [("ep1", "firing"), ("ep1", "resolved")]
    assert events(store)[-1][3].startswith(
        "Resolved: 429 rate on prod-sonnet (res-a) back to 1.0 %"
    )

    clock.advance(minutes=10)  # breached again 20 min after the first firing: cooling down
    store.add_requests("prod-sonnet", T0 + timedelta(minutes=20), 10, {"200": 80, "429": 20})
    check(store.engine, cfg, clock)
    assert len(events(store)) == 2
    clock.advance(minutes=10)  # 30 min after: a new episode
    store.add_requests("prod-sonnet", T0 + timedelta(minutes=30), 10, {"200": 80, "429": 20})
    check(store.engine, cfg, clock)
    assert [e[1:3] for e in events(store)][-1] == ("ep2", "firing")


def test_below_the_minimum_request_count_nothing_changes(store: Store) -> None:
    cfg = rules_config(throttling())
    clock = Clock(T0 + timedelta(minutes=10))
    store.add_requests("prod-sonnet", T0, 10, {"200": 2, "429": 2})  # 50 % of 40 requests
    check(store.engine, cfg, clock)
    assert events(store) == []


def test_error_rate_counts_5xx_by_default(store: Store) -> None:
    cfg = rules_config(
        {"name": "errors", "kind": "error_rate", "threshold": 2, "delay": "0s", "min_requests": 10}
    )
    clock = Clock(T0 + timedelta(minutes=10))
    store.add_requests("prod-opus", T0, 10, {"200": 90, "400": 5, "429": 5})  # no 5xx
    check(store.engine, cfg, clock)
    assert events(store) == []
    store.add_requests("prod-opus", T0, 10, {"200": 90, "400": 5, "429": 5, "503": 3})
    check(store.engine, cfg, clock)
    [(rule, _p, kind, message)] = events(store)
    assert rule == "rule:errors:res-b/prod-opus" and kind == "firing"
    assert "Error rate 2.9 %" in message


def test_p95_latency_from_rollup_histograms(store: Store) -> None:
    cfg = rules_config(
        {"name": "slow", "kind": "latency_p95", "threshold": 5000, "window": "5m",
         "delay": "0s", "min_requests": 100}
    )  # fmt: skip
    dep = store.deployments["prod-sonnet"]
    values = [float(ms) for ms in range(100, 10_100, 100)]  # p95 = 9,500 ms
    with store.engine.begin() as conn:
        upsert(
            conn,
            LatencyRollup,
            [
                {
                    "deployment_id": dep,
                    "bucket": T0 + timedelta(minutes=i),
                    "status_class": cls,
                    "count": len(vals),
                    "sum_ms": sum(vals),
                    "min_ms": min(vals),
                    "max_ms": max(vals),
                    "histogram": rollups.histogram(vals),
                }
                for i in range(5)
                for cls, vals in (("2xx", values), ("5xx", [60_000.0] * 50))
            ],
        )
    clock = Clock(T0 + timedelta(minutes=5))
    check(store.engine, cfg, clock)
    [(rule, _p, _kind, message)] = events(store)
    assert rule == "rule:slow:res-a/prod-sonnet"
    # the 5xx minutes (60 s) are not in the default ['2xx'] latency: p95 ≈ 9,500 ms
    p95 = float(message.split("P95 latency ")[1].split(" ms")[0].replace(",", ""))
    assert abs(p95 - 9500) / 9500 < 0.01
    assert "500 requests" in message


def test_staleness_per_source_and_scope(store: Store) -> None:
    cfg = rules_config(
        {"name": "behind", "kind": "staleness", "source": "metrics", "max_lag": "20m"}
    )
    with store.engine.begin() as conn:
        set_watermark(conn, "metrics", "sub-1/eastus2", T0 - timedelta(minutes=30))
        set_watermark(conn, "metrics", "sub-1/westus", T0 - timedelta(minutes=5))
        set_watermark(conn, "costs", "sub-1", T0 - timedelta(days=2))  # other source
    check(store.engine, cfg, Clock(T0))
    [(rule, _p, kind, message)] = events(store)
    assert rule == "rule:behind:metrics sub-1/eastus2" and kind == "firing"
    assert "metrics collection for sub-1/eastus2 is 30 min behind (max 20 min)" in message
    with store.engine.begin() as conn:
        set_watermark(conn, "metrics", "sub-1/eastus2", T0)
    check(store.engine, cfg, Clock(T0 + timedelta(minutes=1)))
    assert events(store)[-1][2] == "resolved"
    assert "caught up" in events(store)[-1][3]


def test_open_episode_of_a_deleted_deployment_is_resolved(store: Store) -> None:
    cfg = rules_config(throttling())
    clock = Clock(T0 + timedelta(minutes=10))
    store.add_requests("prod-sonnet", T0, 10, {"200": 50, "429": 50})
    check(store.engine, cfg, clock)
    with store.engine.begin() as conn:
        conn.execute(
            update(Deployment)
            .where(Deployment.id == store.deployments["prod-sonnet"])
            .values(deleted_at=T0)
        )
    check(store.engine, cfg, clock)
    assert [e[2] for e in events(store)] == ["firing", "resolved"]
    assert "no longer evaluated" in events(store)[-1][3]
