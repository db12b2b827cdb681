"""A synthetic store for the dashboard tests, written through the project's own write path.

Requests are generated in Python (``SeedWorld.requests`` is the ground truth), then stored the
way the collector stores them: ``models.db.upsert`` of request rows, metric points derived per
minute exactly as Azure Monitor aggregates them (the emulator's rules: ``ModelRequests`` counts
every request by status code; latency metrics count 2xx only; token metrics sum per minute),
``collector.rollups.recompute_rollups`` for the minute histograms, and
``collector.coarse_rollups.refresh`` for hours and days. Tests compute their expected numbers
from ``SeedWorld.requests`` directly, never from the store.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine

from collector import coarse_rollups, rollups
from models.db import upsert
from models.prices import list_prices
from models.tables import (
    Budget,
    CollectorRun,
    Cost,
    Deployment,
    MetricPoint,
    Price,
    Request,
    Resource,
    Watermark,
)

MODELS = ("claude-sonnet-4-5", "claude-opus-4-5", "claude-haiku-4-5", "claude-opus-4-1")
STATUSES = ((200, 0.84), (429, 0.08), (500, 0.02), (401, 0.02), (403, 0.01), (404, 0.01))
STATUSES += ((400, 0.02),)
SUB = "00000000-0000-0000-0000-00000000abcd"


@dataclass
class Req:
    time: datetime
    deployment_id: int
    status: int
    duration_ms: float
    ttft_ms: float | None
    tokens_in: int
    tokens_out: int
    cache_read: int
    request_id: str
    correlation_id: str


@dataclass
class SeedWorld:
    now: datetime
    deployments: list[dict] = field(default_factory=list)
    resources: list[dict] = field(default_factory=list)
    requests: list[Req] = field(default_factory=list)
    bills: dict[tuple[str, str, date], Decimal] = field(default_factory=dict)

    def in_window(self, start: datetime, end: datetime, dep_ids=None) -> list[Req]:
        return [
            r
            for r in self.requests
            if start <= r.time < end and (dep_ids is None or r.deployment_id in dep_ids)
        ]


def exact_percentile(values: list[float], p: float) -> float | None:
    """Nearest rank, the definition the rollups promise (collector.rollups docstring)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def _status(rng: random.Random) -> int:
    u = rng.random()
    acc = 0.0
    for code, p in STATUSES:
        acc += p
        if u < acc:
            return code
    return 200


def build_world(
    now: datetime,
    n_deployments: int,
    *,
    per_deployment: int = 400,
    hours: float = 20,
    old_days: int = 0,
    seed: int = 7,
) -> SeedWorld:
    """Deployments over resources of distinct models (so a group's bill is one deployment's).

    Requests fall in [now - hours - 1 h, now - 1 h) (clear of the edges of a "last 24 h" view);
    with ``old_days``, as many again are spread over the ``old_days`` days before that, ending
    4 h before the recent span starts (so a 24 h window holds exactly the recent requests).
    """
    rng = random.Random(seed)
    world = SeedWorld(now=now)
    first_seen = now - timedelta(days=40)
    n_resources = max(1, math.ceil(n_deployments / len(MODELS)))
    for i in range(n_resources):
        name = f"fw-res-{i:03d}"
        world.resources.append(
            {
                "id": i + 1,
                "arm_id": (
                    f"/subscriptions/{SUB}/resourcegroups/rg-{i:03d}/providers/"
                    f"microsoft.cognitiveservices/accounts/{name}"
                ),
                "subscription_id": SUB,
                "resource_group": f"rg-{i:03d}",
                "name": name,
                "location": "eastus2" if i % 2 == 0 else "swedencentral",
                "first_seen": first_seen,
                "last_seen": now,
                "deleted_at": None,
            }
        )
    for j in range(n_deployments):
        model = MODELS[j % len(MODELS)]
        world.deployments.append(
            {
                "id": j + 1,
                "resource_id": j // len(MODELS) + 1,
                "name": f"{model}-{j:03d}" if n_deployments > 1 else model,
                "model_name": model,
                "model_version": "20250929",
                "sku_name": "GlobalStandard",
                "capacity": 100 + j,
                "first_seen": first_seen,
                "last_seen": now,
                "deleted_at": None,
            }
        )
    end = now - timedelta(hours=1)
    start = end - timedelta(hours=hours)
    k = 0
    for dep in world.deployments:
        spans = [(start, end)]
        if old_days:  # a gap of 4 h keeps "last 24 h" and "older" apart
            spans.append((start - timedelta(days=old_days), start - timedelta(hours=4)))
        for lo, hi in spans:
            for _ in range(per_deployment):
                t = lo + (hi - lo) * rng.random()
                t = t.replace(microsecond=(t.microsecond // 1000) * 1000)
                status = _status(rng)
                ok = status == 200
                duration = rng.lognormvariate(7.5, 0.6) if ok else rng.uniform(2, 40)
                world.requests.append(
                    Req(
                        time=t,
                        deployment_id=dep["id"],
                        status=status,
                        duration_ms=round(duration, 3),
                        ttft_ms=round(duration * rng.uniform(0.05, 0.3), 3) if ok else None,
                        tokens_in=rng.randint(50, 4000) if ok else 0,
                        tokens_out=rng.randint(10, 1500) if ok else 0,
                        cache_read=rng.choice((0, 0, 512, 2048)) if ok else 0,
                        request_id=f"req_{k:024d}",
                        correlation_id=f"{k:08x}-0000-4000-8000-{dep['id']:012x}",
                    )
                )
                k += 1
    world.requests.sort(key=lambda r: r.time)
    return world


def metric_rows(world: SeedWorld) -> list[dict]:
    """Per minute, what Azure Monitor reports (the emulator's aggregation rules)."""
    by_status: dict[tuple, int] = defaultdict(int)
    tokens: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    lat: dict[tuple, list[float]] = defaultdict(list)
    ttft: dict[tuple, list[float]] = defaultdict(list)
    for r in world.requests:
        minute = r.time.replace(second=0, microsecond=0)
        key = (r.deployment_id, minute)
        by_status[(*key, str(r.status))] += 1
        if r.tokens_in:
            tokens[key]["InputTokens"] += r.tokens_in
        if r.tokens_out:
            tokens[key]["OutputTokens"] += r.tokens_out
        if r.tokens_in or r.tokens_out:
            tokens[key]["TotalTokens"] += r.tokens_in + r.tokens_out
        if r.cache_read:
            tokens[key]["cacheReadInputTokens"] += r.cache_read
        if r.status == 200:
            lat[key].append(r.duration_ms)
            if r.ttft_ms is not None:
                ttft[key].append(r.ttft_ms)
    rows = []

    def row(dep, minute, metric, code, total, count, avg, lo, hi):
        return {
            "deployment_id": dep,
            "minute": minute,
            "metric": metric,
            "status_code": code,
            "total": total,
            "count": count,
            "average": avg,
            "minimum": lo,
            "maximum": hi,
        }

    for (dep, minute, code), n in by_status.items():
        rows.append(row(dep, minute, "ModelRequests", code, float(n), None, None, None, None))
    for (dep, minute), kinds in tokens.items():
        for metric, total in kinds.items():
            rows.append(row(dep, minute, metric, "", float(total), None, None, None, None))
    for name, series in (("TimeToLastByte", lat), ("NormalizedTimeToFirstToken", ttft)):
        for (dep, minute), vals in series.items():
            rows.append(
                row(
                    dep,
                    minute,
                    name,
                    "",
                    None,
                    float(len(vals)),
                    sum(vals) / len(vals),
                    min(vals),
                    max(vals),
                )
            )
    return rows


def price_of(model: str) -> dict[str, Decimal]:
    return next(p for p in list_prices() if p["model_name"] == model)  # type: ignore[return-value]


def estimated_cost(reqs: list[Req], model: str) -> Decimal:
    """Independent estimate: tokens × list price (input, output, cache read)."""
    p = price_of(model)
    tin = sum(r.tokens_in for r in reqs)
    tout = sum(r.tokens_out for r in reqs)
    cread = sum(r.cache_read for r in reqs)
    return (
        Decimal(tin) * p["input_per_mtok"]
        + Decimal(tout) * p["output_per_mtok"]
        + Decimal(cread) * p["cache_read_per_mtok"]
    ) / Decimal(1_000_000)


def seed(engine: Engine, world: SeedWorld, *, bill_factor: Decimal = Decimal("1.05")) -> None:
    """Write the world through ``upsert`` + the collector's rollup path + coarse rollups.

    Bills: every UTC day before today, per resource group and model, the estimate of that
    day × ``bill_factor`` (so the reconciliation gap is known), recorded in ``world.bills``.
    """
    now = world.now
    with engine.begin() as conn:
        upsert(conn, Resource, world.resources)
        upsert(conn, Deployment, world.deployments)
        upsert(conn, Price, [{**p, "updated_at": now} for p in list_prices()])
        if world.requests:
            upsert(
                conn,
                Request,
                (
                    {
                        "correlation_id": r.correlation_id,
                        "request_id": r.request_id,
                        "time": r.time,
                        "resource_id": world.deployments[r.deployment_id - 1]["resource_id"],
                        "deployment_id": r.deployment_id,
                        "deployment_name": world.deployments[r.deployment_id - 1]["name"],
                        "model_name": world.deployments[r.deployment_id - 1]["model_name"],
                        "operation_name": "Messages_Create",
                        "status_code": r.status,
                        "duration_ms": r.duration_ms,
                        "ttft_ms": r.ttft_ms,
                        "input_tokens": r.tokens_in,
                        "output_tokens": r.tokens_out,
                        "caller_ip": "10.0.0.*",
                        "source": "logs",
                    }
                    for r in world.requests
                ),
            )
            upsert(conn, MetricPoint, metric_rows(world))
            lo = min(r.time for r in world.requests)
            hi = max(r.time for r in world.requests) + timedelta(minutes=1)
            ids = [d["id"] for d in world.deployments]
            coarse_rollups.refresh(conn, lo, hi, ids, parts=("metrics",))
            rollups.recompute_rollups(conn, ids, lo, hi)  # refreshes the latency hours/days
        cost_rows = []
        by_day: dict[tuple[int, date], list[Req]] = defaultdict(list)
        for r in world.requests:
            by_day[(r.deployment_id, r.time.date())].append(r)
        for (dep_id, day), reqs in sorted(by_day.items()):
            if day >= now.date():
                continue  # billing lags: today is estimated only
            dep = world.deployments[dep_id - 1]
            res = world.resources[dep["resource_id"] - 1]
            cost = (estimated_cost(reqs, dep["model_name"]) * bill_factor).quantize(
                Decimal("0.000001")
            )
            world.bills[(res["resource_group"], dep["model_name"], day)] = cost
            half = (cost / 2).quantize(Decimal("0.000001"))
            for meter, amount in (("Input Tokens", half), ("Output Tokens", cost - half)):
                cost_rows.append(
                    {
                        "scope": f"/subscriptions/{SUB}",
                        "cost_type": "ActualCost",
                        "day": day,
                        "resource_group": res["resource_group"],
                        "resource_arm_id": "",
                        "meter": f"{dep['model_name']} {meter}",
                        "meter_category": "SaaS",
                        "service_name": "SaaS",
                        "publisher_type": "Marketplace",
                        "charge_type": "Usage",
                        "model_name": dep["model_name"],
                        "cost": amount,
                        "currency": "USD",
                        "fetched_at": now,
                    }
                )
        if cost_rows:
            upsert(conn, Cost, cost_rows)


def seed_runs(engine: Engine, now: datetime, *, stale: set[str] = frozenset()) -> list[dict]:
    """Collector runs: each source ran ok recently (or long ago if in ``stale``), one failure."""
    rows = []
    ages = {"discovery": 600, "metrics": 30, "logs": 120, "costs": 3600}
    i = 1
    for job, age in ages.items():
        finished = now - timedelta(seconds=age if job not in stale else 3 * 86400)
        rows.append(
            {
                "id": i,
                "job": job,
                "scope": f"/subscriptions/{SUB}",
                "window_start": finished - timedelta(minutes=5),
                "window_end": finished,
                "started_at": finished - timedelta(seconds=2),
                "finished_at": finished,
                "status": "ok",
                "rows": 100 * i,
                "api_calls": i,
                "duration_ms": 2000.0,
                "error": "",
            }
        )
        i += 1
    rows.append(
        {
            "id": i,
            "job": "logs",
            "scope": "workspace-b",
            "window_start": now - timedelta(minutes=10),
            "window_end": now - timedelta(minutes=5),
            "started_at": now - timedelta(minutes=4),
            "finished_at": now - timedelta(minutes=4),
            "status": "failed",
            "rows": 0,
            "api_calls": 1,
            "duration_ms": 150.0,
            "error": "403 on workspace-b: grant Log Analytics Reader to the collector\ntrace...",
        }
    )
    with engine.begin() as conn:
        upsert(conn, CollectorRun, rows)
        upsert(
            conn,
            Watermark,
            [
                {
                    "source": "metrics",
                    "scope": f"/subscriptions/{SUB}",
                    "high_water": now - timedelta(minutes=2),
                    "updated_at": now,
                }
            ],
        )
    return rows


def seed_budget(engine: Engine, amount: Decimal) -> None:
    with engine.begin() as conn:
        upsert(
            conn,
            Budget,
            [
                {
                    "name": "all-claude",
                    "scope_kind": "all",
                    "scope_pattern": "*",
                    "amount": amount,
                    "currency": "USD",
                    "thresholds": {"percent": [50, 80, 100]},
                    "spend_basis": "billed",
                    "timezone": "UTC",
                    "channels": {"names": []},
                }
            ],
        )


def utc_now_minute() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)
