"""Latency histograms: percentiles within 1 % of exact, merge == union, rebuilt from rows."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, delete, select

from collector import rollups
from models.db import upsert
from models.tables import Deployment, LatencyRollup, Request, Resource

PS = (50, 90, 95, 99, 99.9)


def exact(values: list[float], p: float) -> float:
    """Nearest-rank percentile: the definition the rollups promise to match."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def close(estimate: float | None, truth: float) -> bool:
    assert estimate is not None
    if truth == 0:
        return estimate == 0
    return abs(estimate - truth) <= 0.01 * abs(truth)


def _distributions() -> dict[str, list[float]]:
    rng = random.Random(1234)
    return {
        "lognormal": [rng.lognormvariate(7, 0.8) for _ in range(20_000)],
        "bimodal": [
            rng.gauss(300, 30) if rng.random() < 0.7 else rng.gauss(9_000, 900)
            for _ in range(20_000)
        ],
        "constant": [1234.0] * 5_000,
        "heavy_tail": [50 * rng.paretovariate(1.1) for _ in range(20_000)],
        "integers_ms": [float(rng.randint(0, 60_000)) for _ in range(10_000)],
        "tiny": [0.2, 0.0, 3.0],
        "single": [42.0],
    }


@pytest.mark.parametrize("name", list(_distributions()))
def test_percentiles_within_one_percent(name: str) -> None:
    values = [max(0.0, v) for v in _distributions()[name]]
    hist = rollups.histogram(values)
    assert rollups.total(hist) == len(values)
    got = rollups.percentiles(hist, PS)
    for p in PS:
        assert close(got[p], exact(values, p)), (name, p, got[p], exact(values, p))


def test_percentiles_of_merged_minutes_within_one_percent() -> None:
    rng = random.Random(99)
    minutes = [
        [rng.lognormvariate(6 + i % 3, 0.6) for _ in range(rng.randint(0, 60))] for i in range(500)
    ]
    merged = rollups.merge(rollups.histogram(m) for m in minutes)
    union = [v for m in minutes for v in m]
    got = rollups.percentiles(merged, (50, 95, 99))
    for p in (50, 95, 99):
        assert close(got[p], exact(union, p))


def test_merge_equals_histogram_of_union() -> None:
    rng = random.Random(7)
    parts = [[rng.expovariate(1 / 800) for _ in range(rng.randint(0, 300))] for _ in range(40)]
    union = [v for part in parts for v in part]
    assert rollups.merge(rollups.histogram(p) for p in parts) == rollups.histogram(union)
    assert rollups.merge([]) == {}
    assert rollups.merge([None, {}]) == {}
    # add() to an existing histogram == histogram of both, and does not mutate its input
    first = rollups.histogram(parts[0])
    snapshot = dict(first)
    assert rollups.add(first, parts[1]) == rollups.histogram(parts[0] + parts[1])
    assert first == snapshot


def test_empty_histogram_has_no_percentiles() -> None:
    assert rollups.percentiles({}, (50, 99)) == {50: None, 99: None}
    assert rollups.percentiles(None, (95,)) == {95: None}


def test_zero_and_json_keys() -> None:
    hist = rollups.histogram([0.0, 0.0, -1.0, 5.0])
    assert hist[rollups.ZERO_KEY] == 3
    assert all(isinstance(k, str) for k in hist)
    assert rollups.percentiles(hist, (50, 100)) == {50: 0.0, 100: pytest.approx(5.0, rel=0.006)}


def test_percentile_out_of_range() -> None:
    with pytest.raises(ValueError):
        rollups.percentiles({"1": 1}, (101,))


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (200, "2xx"),
        (204, "2xx"),
        (400, "4xx"),
        (404, "4xx"),
        (429, "429"),
        (500, "5xx"),
        (529, "5xx"),
        (301, "other"),
        (100, "other"),
        (0, "other"),
        (None, "other"),
    ],
)
def test_status_class(status: int | None, cls: str) -> None:
    assert rollups.status_class(status) == cls


# ------------------------------------------------------------------------------ recompute

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def _seed_deployments(engine: Engine) -> tuple[int, int]:
    with engine.begin() as conn:
        upsert(
            conn,
            Resource,
            [
                {
                    "arm_id": "/subscriptions/s/resourcegroups/rg/providers/"
                    "microsoft.cognitiveservices/accounts/a",
                    "subscription_id": "s",
                    "resource_group": "rg",
                    "name": "a",
                    "location": "eastus2",
                    "first_seen": T0,
                    "last_seen": T0,
                    "deleted_at": None,
                }
            ],
        )
        rid = conn.execute(select(Resource.id)).scalar_one()
        upsert(
            conn,
            Deployment,
            [
                {
                    "resource_id": rid,
                    "name": name,
                    "first_seen": T0,
                    "last_seen": T0,
                    "deleted_at": None,
                }
                for name in ("claude-opus-4-5", "claude-haiku-4-5")
            ],
        )
        ids = conn.execute(select(Deployment.id).order_by(Deployment.name)).scalars().all()
    return ids[1], ids[0]  # opus, haiku


def _requests(dep_ids: tuple[int, int], n: int = 400) -> list[dict]:
    rng = random.Random(5)
    rows = []
    for i in range(n):
        status = rng.choice([200, 200, 200, 200, 429, 500, 400, 301])
        rows.append(
            {
                "correlation_id": f"c-{i:05d}",
                "time": T0 + timedelta(seconds=rng.uniform(0, 300)),
                "deployment_id": dep_ids[i % 2],
                "status_code": status,
                "duration_ms": None if i % 97 == 0 else float(rng.randint(5, 20_000)),
                "source": "logs",
            }
        )
    return rows


def _expected(rows: list[dict]) -> dict[tuple, dict]:
    groups: dict[tuple, list] = {}
    for r in rows:
        key = (
            r["deployment_id"],
            rollups.floor_minute(r["time"]),
            rollups.status_class(r["status_code"]),
        )
        groups.setdefault(key, []).append(r["duration_ms"])
    out = {}
    for key, durations in groups.items():
        known = [d for d in durations if d is not None]
        out[key] = {
            "count": len(durations),
            "sum_ms": sum(known),
            "min_ms": min(known) if known else None,
            "max_ms": max(known) if known else None,
            "histogram": rollups.histogram(known),
        }
    return out


def _stored(engine: Engine) -> dict[tuple, dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(LatencyRollup)).all()
    return {
        (r.deployment_id, r.bucket, r.status_class): {
            "count": r.count,
            "sum_ms": r.sum_ms,
            "min_ms": r.min_ms,
            "max_ms": r.max_ms,
            "histogram": r.histogram,
        }
        for r in rows
    }


def test_recompute_rollups_from_rows_is_idempotent(engine: Engine) -> None:
    deps = _seed_deployments(engine)
    rows = _requests(deps)
    with engine.begin() as conn:
        upsert(conn, Request, rows)
        written = rollups.recompute_rollups(conn, deps, T0, T0 + timedelta(minutes=5))
    expected = _expected(rows)
    assert written == len(expected)
    stored = _stored(engine)
    assert stored.keys() == expected.keys()
    for key, want in expected.items():
        got = stored[key]
        assert got["count"] == want["count"]
        assert got["sum_ms"] == pytest.approx(want["sum_ms"])
        assert got["min_ms"] == want["min_ms"] and got["max_ms"] == want["max_ms"]
        assert got["histogram"] == want["histogram"]
    # again, and over an overlapping range: nothing changes
    with engine.begin() as conn:
        rollups.recompute_rollups(conn, deps, T0, T0 + timedelta(minutes=5))
        rollups.recompute_rollups(
            conn, deps[:1], T0 + timedelta(seconds=90), T0 + timedelta(minutes=3)
        )
    assert _stored(engine) == stored


def test_recompute_drops_minutes_without_requests_and_keeps_others(engine: Engine) -> None:
    deps = _seed_deployments(engine)
    rows = _requests(deps)
    with engine.begin() as conn:
        upsert(conn, Request, rows)
        rollups.recompute_rollups(conn, deps, T0, T0 + timedelta(minutes=5))
    before = _stored(engine)
    minute2 = T0 + timedelta(minutes=2)
    with engine.begin() as conn:
        conn.execute(
            delete(Request).where(
                Request.time >= minute2, Request.time < minute2 + timedelta(minutes=1)
            )
        )
        # touched range: minute 2 only, for both deployments (start/end inside the minute)
        rollups.recompute_rollups(
            conn, deps, minute2 + timedelta(seconds=10), minute2 + timedelta(seconds=20)
        )
    after = _stored(engine)
    assert not [k for k in after if k[1] == minute2]
    assert after == {k: v for k, v in before.items() if k[1] != minute2}


def test_recompute_ignores_requests_without_deployment(engine: Engine) -> None:
    deps = _seed_deployments(engine)
    with engine.begin() as conn:
        upsert(
            conn,
            Request,
            [
                {
                    "correlation_id": "orphan",
                    "time": T0,
                    "deployment_id": None,
                    "deployment_name": "gpt-4o",
                    "status_code": 200,
                    "duration_ms": 5.0,
                    "source": "logs",
                }
            ],
        )
        assert rollups.recompute_rollups(conn, deps, T0, T0 + timedelta(minutes=1)) == 0
        assert rollups.recompute_rollups(conn, [], T0, T0 + timedelta(minutes=1)) == 0
    assert _stored(engine) == {}
