"""Dashboard: every page's queries over 30 days, on SQLite and PostgreSQL, vs raw-row queries.

Store: ``FW_BENCH_DASH_DEPLOYMENTS`` (50) deployments × ``FW_BENCH_DASH_DAYS`` (30) days with
``FW_BENCH_DASH_REQUESTS`` (10,000,000) synthetic requests (diurnal shape, 85 % 2xx, 8 % 429,
lognormal latencies). The rows the collector would write are generated per deployment-day with
numpy and stored through ``models.db.upsert``: minute ``metric_points`` (requests by status,
input/output tokens, time to last byte), minute ``latency_rollups`` (histogram keys computed
exactly as ``collector.rollups.bucket_key``), daily costs, a month of collector runs; then
``collector.coarse_rollups.refresh`` builds the hour/day rollups (the collector's job, timed).
``FW_BENCH_DASH_RAW`` (all by default; 0 skips) raw ``requests`` rows feed the naive baseline.

Each page runs the same query calls its view makes (``PAGES`` below mirrors dashboard/views/)
for the 30-day preset over all deployments, on a fresh connection with no Streamlit cache:
median of ``REPEATS`` runs, after one warm-up (the database's own page cache warm, as on a
server). Percentile error: the largest relative difference between the p50/p95/p99 the page
shows per deployment and the exact nearest-rank percentile of the generated durations of
the window (each kept with its minute, so any preset is checked without raw rows).
Targets (DESIGN §7): ≤ 300 ms per page on PostgreSQL, ≤ 1 s on SQLite, percentiles within 1 %.

``FW_BENCH_DASH_BASELINE=REV`` (a git revision, or a path to a ``queries.py``) also runs
every page with that version of ``dashboard/queries.py`` (with a revision, also its
``collector/spend.py``; and the calls its views made),
interleaved run by run with the current one in the same process, so a loaded machine slows
both alike: the table then shows the baseline's ms and the ratio current / baseline.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from rich.table import Table
from sqlalchemy import Engine, create_engine, func, select, text

from collector import coarse_rollups as coarse
from collector.rollups import RELATIVE_ACCURACY, _mapping
from dashboard import queries as q
from dashboard.readonly import readonly_engine
from models.db import make_engine, upsert
from models.migrations import upgrade
from models.prices import list_prices
from models.tables import (
    Budget,
    CollectorRun,
    Cost,
    Deployment,
    LatencyRollup,
    MetricPoint,
    Price,
    Request,
    Resource,
    Watermark,
)

DEPLOYMENTS = int(os.environ.get("FW_BENCH_DASH_DEPLOYMENTS", "50"))
DAYS = int(os.environ.get("FW_BENCH_DASH_DAYS", "30"))
REQUESTS = int(os.environ.get("FW_BENCH_DASH_REQUESTS", "10000000"))
RAW = os.environ.get("FW_BENCH_DASH_RAW", "all")
REPEATS = int(os.environ.get("FW_BENCH_DASH_REPEATS", "5"))
#: ``FW_BENCH_DASH_NAIVE=0`` skips the raw-row baseline (minutes per run at 10 M rows).
NAIVE = os.environ.get("FW_BENCH_DASH_NAIVE", "1") != "0"
PG_URL = os.environ.get("DATABASE_URL_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MODELS = ("claude-sonnet-4-5", "claude-opus-4-5", "claude-haiku-4-5", "claude-opus-4-1")
STATUS = np.array([200, 429, 400, 401, 404, 500])
STATUS_P = np.array([0.85, 0.08, 0.02, 0.01, 0.01, 0.03])
CLASS_OF = {200: "2xx", 429: "429", 400: "4xx", 401: "4xx", 404: "4xx", 500: "5xx"}
SUB = "00000000-0000-0000-0000-0000000be4c4"
PS = (50, 95, 99)
#: Every page at every fixed preset (``FW_BENCH_DASH_PRESETS``, comma-separated): 24 h reads
#: minutes at 5-minute chart steps, 7 d hours, 30 d days; the targets hold for each.
PRESETS = tuple(
    p.strip() for p in os.environ.get("FW_BENCH_DASH_PRESETS", "24 h,7 d,30 d").split(",")
)
#: ``FW_BENCH_DASH_BACKENDS``: which stores to run (``sqlite``, ``postgresql`` or ``pg``).
BACKENDS = tuple(
    b.strip().lower()
    for b in os.environ.get("FW_BENCH_DASH_BACKENDS", "sqlite,postgresql").split(",")
)
BASELINE = os.environ.get("FW_BENCH_DASH_BASELINE", "")


def _baseline_module() -> Any:
    """``dashboard/queries.py`` as of ``BASELINE`` (git revision or file), imported apart.

    With a git revision, the ``collector.spend`` it calls (as ``spend``) is that revision's
    too, so spend speed-ups made there count in the comparison.
    """
    path = Path(BASELINE)
    old_spend = None
    if not path.is_file():
        path = _baseline_source("dashboard/queries.py")
        old_spend = _load_apart("fw_bench_spend_baseline", _baseline_source("collector/spend.py"))
    module = _load_apart("fw_bench_queries_baseline", path)
    if old_spend is not None:
        module.spend = old_spend
    return module


def _baseline_source(name: str) -> Path:
    """The file ``name`` as of the ``BASELINE`` revision, written to a temporary folder."""
    import subprocess

    source = subprocess.run(
        ["git", "show", f"{BASELINE}:{name}"],
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / Path(name).name
    path.write_text(source)
    return path


def _load_apart(name: str, path: Path) -> Any:
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while importing
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- data


def _now() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)


def _keys(values: np.ndarray) -> np.ndarray:
    """``collector.rollups.bucket_key`` vectorised (LogarithmicMapping: ceil(log2 v × m))."""
    mapping = _mapping()
    return np.ceil(np.log2(values) * mapping._multiplier + mapping._offset).astype(np.int64)


class Generated:
    """Per deployment, the exact 2xx durations (for exact percentiles) and counts."""

    def __init__(self) -> None:
        self.durations: dict[int, list[np.ndarray]] = {}
        #: Per deployment, the epoch minute of each duration above (same order).
        self.minutes: dict[int, list[np.ndarray]] = {}
        self.requests = 0
        self.raw_rows = 0
        self.sample_ids: list[str] = []


def _catalogue(engine: Engine, now: datetime) -> list[int]:
    first = now - timedelta(days=DAYS + 5)
    n_res = -(-DEPLOYMENTS // len(MODELS))
    with engine.begin() as conn:
        upsert(
            conn,
            Resource,
            [
                {
                    "id": i + 1,
                    "arm_id": f"/subscriptions/{SUB}/resourcegroups/rg-{i}/providers/"
                    f"microsoft.cognitiveservices/accounts/res-{i}",
                    "subscription_id": SUB,
                    "resource_group": f"rg-{i}",
                    "name": f"res-{i}",
                    "location": "eastus2",
                    "first_seen": first,
                    "last_seen": now,
                }
                for i in range(n_res)
            ],
        )
        upsert(
            conn,
            Deployment,
            [
                {
                    "id": j + 1,
                    "resource_id": j // len(MODELS) + 1,
                    "name": f"{MODELS[j % len(MODELS)]}-{j:03d}",
                    "model_name": MODELS[j % len(MODELS)],
                    "sku_name": "GlobalStandard",
                    "capacity": 100,
                    "first_seen": first,
                    "last_seen": now,
                }
                for j in range(DEPLOYMENTS)
            ],
        )
        upsert(conn, Price, [{**p, "updated_at": now} for p in list_prices()])
        upsert(
            conn,
            Budget,
            [
                {
                    "name": "all",
                    "scope_kind": "all",
                    "scope_pattern": "*",
                    "amount": Decimal(100000),
                    "currency": "USD",
                    "thresholds": {"percent": [50, 80, 100]},
                    "spend_basis": "billed",
                    "timezone": "UTC",
                    "channels": {"names": []},
                }
            ],
        )
    return [j + 1 for j in range(DEPLOYMENTS)]


def _day_rows(
    rng: np.random.Generator, dep: int, day0: datetime, lam: np.ndarray, raw_left: int
) -> tuple[list[dict], list[dict], list[dict], np.ndarray, np.ndarray, list[str]]:
    """One deployment-day: metric, latency rollup and raw rows, 2xx durations and minutes."""
    counts = rng.poisson(lam)
    n = int(counts.sum())
    minute = np.repeat(np.arange(1440), counts)
    status = rng.choice(STATUS, size=n, p=STATUS_P)
    ok = status == 200
    duration = np.where(
        ok,
        rng.lognormal(7.4 + 0.01 * (dep % 20), 0.7, size=n),
        rng.uniform(2, 50, size=n),
    ).round(3)
    tin = np.where(ok, rng.integers(50, 4000, size=n), 0)
    tout = np.where(ok, rng.integers(10, 1500, size=n), 0)
    times = [day0 + timedelta(minutes=int(m)) for m in range(1440)]
    metrics: list[dict] = []

    def mrow(m: int, metric: str, code: str, **v: Any) -> dict:
        return {
            "deployment_id": dep,
            "minute": times[m],
            "metric": metric,
            "status_code": code,
            "total": v.get("total"),
            "count": v.get("count"),
            "average": v.get("average"),
            "minimum": v.get("minimum"),
            "maximum": v.get("maximum"),
        }

    pairs, pair_n = np.unique(minute * 1000 + status, return_counts=True)
    for code_min, c in zip(pairs.tolist(), pair_n.tolist(), strict=True):
        metrics.append(mrow(code_min // 1000, "ModelRequests", str(code_min % 1000), total=c))
    sin = np.bincount(minute, weights=tin, minlength=1440)
    sout = np.bincount(minute, weights=tout, minlength=1440)
    for m in np.nonzero(sin)[0].tolist():
        metrics.append(mrow(m, "InputTokens", "", total=float(sin[m])))
        metrics.append(mrow(m, "OutputTokens", "", total=float(sout[m])))
    okm, okd = minute[ok], duration[ok]
    if len(okm):
        bounds = np.flatnonzero(np.diff(okm)) + 1
        starts = np.concatenate(([0], bounds))
        mins = np.minimum.reduceat(okd, starts)
        maxs = np.maximum.reduceat(okd, starts)
        sums = np.add.reduceat(okd, starts)
        cnts = np.diff(np.concatenate((starts, [len(okm)])))
        for i, s in enumerate(starts.tolist()):
            metrics.append(
                mrow(
                    int(okm[s]),
                    "TimeToLastByte",
                    "",
                    count=float(cnts[i]),
                    average=float(sums[i] / cnts[i]),
                    minimum=float(mins[i]),
                    maximum=float(maxs[i]),
                )
            )
    # latency rollups: per minute and status class
    cls_code = np.select([status == 200, status == 429, status >= 500], [0, 2, 3], 1)
    names = ("2xx", "4xx", "429", "5xx")
    keys = _keys(duration)
    order = np.lexsort((keys, cls_code, minute))
    minute_s, cls_s, keys_s, dur_s = minute[order], cls_code[order], keys[order], duration[order]
    group = minute_s * 4 + cls_s
    rollups: list[dict] = []
    if n:
        gb = np.flatnonzero(np.diff(group)) + 1
        gstarts = np.concatenate(([0], gb))
        gends = np.concatenate((gb, [n]))
        gsum = np.add.reduceat(dur_s, gstarts)
        gmin = np.minimum.reduceat(dur_s, gstarts)
        gmax = np.maximum.reduceat(dur_s, gstarts)
        for i, (s, e) in enumerate(zip(gstarts.tolist(), gends.tolist(), strict=True)):
            ks, kc = np.unique(keys_s[s:e], return_counts=True)
            rollups.append(
                {
                    "deployment_id": dep,
                    "bucket": times[int(minute_s[s])],
                    "status_class": names[int(cls_s[s])],
                    "count": e - s,
                    "sum_ms": float(gsum[i]),
                    "min_ms": float(gmin[i]),
                    "max_ms": float(gmax[i]),
                    "histogram": dict(zip(map(str, ks.tolist()), kc.tolist(), strict=True)),
                }
            )
    raw: list[dict] = []
    ids: list[str] = []
    take = min(n, raw_left)
    if take:
        secs = rng.uniform(0, 60, size=take)
        base = uuid.uuid4().int
        for i in range(take):
            cid = str(uuid.UUID(int=(base + i) % (1 << 128)))
            raw.append(
                {
                    "correlation_id": cid,
                    "request_id": f"req_{(base + i) % 10**24:024d}",
                    "time": times[int(minute[i])] + timedelta(seconds=float(secs[i])),
                    "deployment_id": dep,
                    "status_code": int(status[i]),
                    "duration_ms": float(duration[i]),
                    "input_tokens": int(tin[i]),
                    "output_tokens": int(tout[i]),
                }
            )
        ids.append(raw[take // 2]["correlation_id"])
    return metrics, rollups, raw, okd, okm, ids


def load(engine: Engine, now: datetime) -> tuple[Generated, dict[str, float]]:
    """Fill the store; returns what was generated and the seconds each phase took."""
    rng = np.random.default_rng(42)
    gen = Generated()
    timings = {"generate+upsert": 0.0}
    ids = _catalogue(engine, now)
    end = now.replace(hour=0, minute=0) + timedelta(days=1)
    start_day = end - timedelta(days=DAYS)
    hours = np.arange(1440) / 60
    shape = 1 + 0.6 * np.sin((hours - 9) / 24 * 2 * np.pi)  # busy afternoons (UTC)
    per_minute = REQUESTS / (DEPLOYMENTS * DAYS * 1440)
    raw_left = REQUESTS * 2 if RAW == "all" else int(RAW)
    t0 = time.perf_counter()
    for d in range(DAYS):
        day0 = start_day + timedelta(days=d)
        lam = per_minute * shape
        day_minute = int(day0.timestamp()) // 60
        if day0 + timedelta(days=1) > now:  # today: only the minutes before now
            cut = int((now - day0).total_seconds() // 60)
            lam = np.where(np.arange(1440) < cut, lam, 0.0)
        with engine.begin() as conn:
            for dep in ids:
                metrics, rolls, raw, okd, okm, sample = _day_rows(rng, dep, day0, lam, raw_left)
                gen.durations.setdefault(dep, []).append(okd)
                gen.minutes.setdefault(dep, []).append(okm.astype(np.int64) + day_minute)
                gen.requests += sum(r["count"] for r in rolls)
                gen.sample_ids.extend(sample)
                upsert(conn, MetricPoint, metrics, batch_size=20_000)
                if rolls:
                    upsert(conn, LatencyRollup, rolls, batch_size=20_000)
                if raw:
                    upsert(conn, Request, raw, batch_size=20_000)
                    raw_left -= len(raw)
                    gen.raw_rows += len(raw)
    timings["generate+upsert"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with engine.begin() as conn:
        coarse.refresh(conn, start_day, end, ids)
    timings["coarse refresh (30 d backfill)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with engine.begin() as conn:  # what a collection cycle adds: the current hour and day
        coarse.refresh(conn, now - timedelta(minutes=5), now, ids)
    timings["coarse refresh (one cycle)"] = time.perf_counter() - t0
    _costs_and_runs(engine, now, start_day)
    return gen, timings


def _costs_and_runs(engine: Engine, now: datetime, start_day: datetime) -> None:
    """Bills per resource group × model × day (from the estimate), a month of runs."""
    from dashboard.queries import estimated_spend

    with engine.connect() as conn:
        est = estimated_spend(conn, start_day.date(), now.date(), list(range(1, DEPLOYMENTS + 1)))
    rows = []
    for e in est:
        if e.day >= now.date() or e.cost is None:
            continue
        for meter, part in (("Input Tokens", Decimal("0.4")), ("Output Tokens", Decimal("0.6"))):
            rows.append(
                {
                    "scope": f"/subscriptions/{SUB}",
                    "cost_type": "ActualCost",
                    "day": e.day,
                    "resource_group": e.resource_group,
                    "resource_arm_id": "",
                    "meter": f"{e.model_name} {meter}",
                    "meter_category": "SaaS",
                    "service_name": "SaaS",
                    "publisher_type": "Marketplace",
                    "charge_type": "Usage",
                    "model_name": e.model_name,
                    "cost": (e.cost * Decimal("1.03") * part).quantize(Decimal("0.000001")),
                    "currency": "USD",
                    "fetched_at": now,
                }
            )
    runs = []
    i = 1
    for job, every in (("metrics", 1), ("logs", 5), ("costs", 240), ("discovery", 60)):
        t = start_day
        while t < now:
            runs.append(
                {
                    "id": i,
                    "job": job,
                    "scope": f"/subscriptions/{SUB}",
                    "window_start": t - timedelta(minutes=every),
                    "window_end": t,
                    "started_at": t,
                    "finished_at": t + timedelta(seconds=2),
                    "status": "ok" if i % 97 else "failed",
                    "rows": 500,
                    "api_calls": 3,
                    "duration_ms": 2000.0,
                    "error": "" if i % 97 else "429 throttled: backing off",
                }
            )
            i += 1
            t += timedelta(minutes=every)
    with engine.begin() as conn:
        # Grouped like the real bill: one row per group × model × day × meter.
        merged: dict[tuple, dict] = {}
        for r in rows:
            key = (r["day"], r["resource_group"], r["meter"])
            if key in merged:
                merged[key]["cost"] += r["cost"]
            else:
                merged[key] = r
        upsert(conn, Cost, list(merged.values()))
        upsert(conn, CollectorRun, runs, batch_size=20_000)
        upsert(
            conn,
            Watermark,
            [
                {
                    "source": s,
                    "scope": f"/subscriptions/{SUB}",
                    "high_water": now,
                    "updated_at": now,
                }
                for s in ("metrics", "logs", "costs")
            ],
        )


# --------------------------------------------------------------------------- pages


def _page_calls(
    now: datetime, preset: str = "30 d", mod: Any = q
) -> dict[str, list[tuple[str, tuple, dict]]]:
    """The query calls each view makes for a time-range preset, all deployments selected.

    Window and chart step come from the app's own ``dashboard.ui`` helpers. ``mod``: the
    queries module (a baseline without ``overview_page`` gets the calls its Overview made).
    """
    from dashboard import ui

    window = ui._window(preset, now, "UTC")
    step = ui.step_for(window.span)
    end = window.end
    ids = tuple(range(1, DEPLOYMENTS + 1))
    today = now.date()
    first, last = window.start.date(), today
    days = q.Window(
        datetime.combine(first, datetime.min.time(), UTC),
        datetime.combine(last + timedelta(days=1), datetime.min.time(), UTC),
    )
    hour = q.Window(end - timedelta(hours=1), end, True)
    return {
        "Overview": [
            *(
                [("overview_page", (window, ids, "CAT", now), {})]
                if hasattr(mod, "overview_page")
                else [
                    ("overview", (window, ids, "CAT"), {}),
                    ("kpis", (window.previous(), ids), {}),
                    ("overview_spend", (window, ids, now), {}),
                ]
            ),
            ("worst_now", (hour, ids), {}),
            ("request_counts", (window, ids), {"by_deployment": False, "step": step}),
        ],
        "Deployment": [
            ("request_counts", (window, ids[:1]), {"by_deployment": False, "step": step}),
            ("latency", (window, ids[:1]), {"by_deployment": False, "step": step}),
            ("latency", (window, ids[:1]), {"by_deployment": False}),
            ("latency_metrics", (window, ids[:1]), {"step": step}),
            ("token_sums", (window, ids[:1]), {"by_deployment": False, "step": step}),
        ],
        "Errors & throttling": [
            ("request_counts", (window, ids), {}),
            ("request_counts", (window, ids), {"by_deployment": False, "step": step}),
            ("top_error_times", (window, ids), {}),
            ("status_totals", (window, ids[:12]), {"step": step}),
        ],
        "Spend": [
            ("spend_view", (first, last, ids, now), {}),
            ("request_counts", (days, ids), {}),
            ("top_meters", (first, last), {}),
            ("budget_alerts", (window.start, window.end, None), {}),
            ("budget_count", (), {}),
        ],
        "Request lookup": [("find_request", ("SAMPLE",), {})],
        "Collector health": [
            ("schema_state", (), {}),
            (
                "freshness",
                (now, {"discovery": 3600, "metrics": 60, "logs": 300, "costs": 14400}),
                {},
            ),
            ("last_runs", (), {}),
            ("runs", (window.start,), {}),
            ("watermarks", (now,), {}),
            ("operational_alerts", (window.start, window.end), {}),
            ("failed_deliveries", (window.start, window.end), {}),
        ],
    }


def _run_page(
    engine: Engine, calls, sample: str, mod: Any = q
) -> tuple[float, dict[str, Any], list[tuple[str, float]]]:
    """Page ms, each call's answer (the last call of a name wins) and each call's ms."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    per_call: list[tuple[str, float]] = []
    with engine.connect() as conn:
        t1 = time.perf_counter()
        cat = mod.catalogue(conn)
        per_call.append(("catalogue", (time.perf_counter() - t1) * 1000))
        for name, args, kwargs in calls:
            args = tuple(cat if a == "CAT" else sample if a == "SAMPLE" else a for a in args)
            t1 = time.perf_counter()
            out[name] = getattr(mod, name)(conn, *args, **kwargs)
            step = kwargs.get("step")
            label = f"{name}({len(args[1]) if len(args) > 1 and isinstance(args[1], tuple) else ''}"
            label += f"{', step=' + str(step) if step else ''})"
            per_call.append((label, (time.perf_counter() - t1) * 1000))
    return (time.perf_counter() - t0) * 1000, out, per_call


def _nearest_rank(values: np.ndarray) -> dict[int, float]:
    values = np.sort(values)
    n = len(values)
    return {p: float(values[max(1, int(np.ceil(p / 100 * n))) - 1]) for p in PS}


def _exact(gen: Generated, dep: int) -> dict[int, float]:
    """Exact percentiles of every generated 2xx duration of ``dep`` (the whole 30 days)."""
    return _nearest_rank(np.concatenate(gen.durations[dep]))


def _exact_window(gen: Generated, window: q.Window) -> dict[int, dict[int, float]]:
    """Exact nearest-rank percentiles per deployment of the generated 2xx durations in ``window``.

    Durations carry the minute they were generated in; windows start and end on whole
    minutes, so these are exactly the requests the rollups of those minutes count.
    """
    lo, hi = int(window.start.timestamp()) // 60, int(window.end.timestamp()) // 60
    out = {}
    for dep, arrs in gen.durations.items():
        minutes = np.concatenate(gen.minutes[dep])
        inside = np.concatenate(arrs)[(minutes >= lo) & (minutes < hi)]
        if len(inside):
            out[dep] = _nearest_rank(inside)
    return out


def _exact_raw(engine: Engine, window: q.Window) -> dict[int, dict[int, float]]:
    """Exact nearest-rank percentiles per deployment of the raw 2xx rows inside ``window``.

    Raw rows carry the second within their minute; windows start and end on whole minutes,
    so the rows inside are exactly the requests the rollups of those minutes count.
    """
    with engine.connect() as conn:
        rows = conn.execute(
            select(Request.deployment_id, Request.duration_ms).where(
                Request.time >= window.start,
                Request.time < window.end,
                Request.status_code.between(200, 299),
            )
        ).all()
    if not rows:
        return {}
    arr = np.array(rows, dtype=np.float64)
    out = {}
    for dep in np.unique(arr[:, 0]).tolist():
        out[int(dep)] = _nearest_rank(arr[arr[:, 0] == dep, 1])
    return out


def _pct_error(exact: dict[int, dict[int, float]], table) -> float:
    worst = 0.0
    for row in table.itertuples():
        truth = exact.get(int(row.deployment_id))
        if truth is None:
            continue
        for p in PS:
            got = getattr(row, f"p{p}")
            worst = max(worst, abs(got - truth[p]) / truth[p])
    return worst


# --------------------------------------------------------------------------- naive baselines


def _naive(engine: Engine, now: datetime) -> dict[str, float]:
    """The same numbers straight from ``requests`` (no rollups), for Overview/Deployment/Errors."""
    from dashboard import ui

    start = ui._window("30 d", now, "UTC").start  # the same window as the pages
    pg = engine.dialect.name == "postgresql"
    hour = "date_trunc('hour', time)" if pg else "substr(time, 1, 13)"
    out = {}

    def timed(fn: Callable[[Any], None]) -> float:
        runs = []
        for _ in range(2):
            t0 = time.perf_counter()
            with engine.connect() as conn:
                fn(conn)
            runs.append((time.perf_counter() - t0) * 1000)
        return min(runs)

    params = {"start": start if pg else start.replace(tzinfo=None).isoformat(" ")}

    def pcts(conn: Any, where: str, group: str) -> None:
        if pg:
            conn.execute(
                text(
                    f"SELECT {group}, percentile_disc(ARRAY[0.5,0.95,0.99]) WITHIN GROUP "
                    f"(ORDER BY duration_ms) FROM requests WHERE time >= :start AND "
                    f"status_code BETWEEN 200 AND 299 {where} GROUP BY {group}"
                ),
                params,
            ).all()
        else:  # SQLite has no percentile: sort and pick, as a naive page would
            rows = conn.execute(
                text(
                    f"SELECT {group}, duration_ms FROM requests WHERE time >= :start AND "
                    f"status_code BETWEEN 200 AND 299 {where} ORDER BY {group}, duration_ms"
                ),
                params,
            ).all()
            del rows

    def overview(conn: Any) -> None:
        conn.execute(
            text(
                "SELECT deployment_id, status_code, count(*), sum(input_tokens), "
                "sum(output_tokens) FROM requests WHERE time >= :start "
                "GROUP BY deployment_id, status_code"
            ),
            params,
        ).all()
        pcts(conn, "", "deployment_id")

    def deployment(conn: Any) -> None:
        conn.execute(
            text(
                f"SELECT {hour}, status_code, count(*) FROM requests WHERE deployment_id = 1 "
                f"AND time >= :start GROUP BY 1, 2"
            ),
            params,
        ).all()
        pcts(conn, "AND deployment_id = 1", hour)

    def errors(conn: Any) -> None:
        conn.execute(
            text(
                f"SELECT {hour}, deployment_id, status_code, count(*) FROM requests "
                f"WHERE time >= :start GROUP BY 1, 2, 3"
            ),
            params,
        ).all()

    out["Overview"] = timed(overview)
    out["Deployment"] = timed(deployment)
    out["Errors & throttling"] = timed(errors)
    return out


# --------------------------------------------------------------------------- main


def _save(gen: Generated, timings: dict[str, float], now: datetime, path: Path) -> None:
    np.savez(
        path,
        deps=np.array(sorted(gen.durations)),
        **{f"d{dep}": np.concatenate(arrs) for dep, arrs in gen.durations.items()},
        **{f"m{dep}": np.concatenate(arrs) for dep, arrs in gen.minutes.items()},
        meta=np.array(
            [now.isoformat(), str(gen.requests), str(gen.raw_rows), *gen.sample_ids[:50]]
        ),
        timings=np.array([[k, str(v)] for k, v in timings.items()]),
    )


def _restore(path: Path) -> tuple[Generated, dict[str, float], datetime]:
    data = np.load(path)
    gen = Generated()
    for dep in data["deps"].tolist():
        gen.durations[dep] = [data[f"d{dep}"]]
        if f"m{dep}" in data:  # stores kept before minutes were saved have none
            gen.minutes[dep] = [data[f"m{dep}"]]
    meta = data["meta"].tolist()
    gen.requests, gen.raw_rows, gen.sample_ids = int(meta[1]), int(meta[2]), meta[3:]
    timings = {k: float(v) for k, v in data["timings"].tolist()}
    return gen, timings, datetime.fromisoformat(meta[0])


def _bench(url: str, now: datetime, keep: Path | None) -> tuple[list[tuple], dict[str, Any]]:
    engine = make_engine(url)
    upgrade(engine)
    if keep is not None and keep.exists():
        gen, timings, now = _restore(keep)
    else:
        gen, timings = load(engine, now)
        if keep is not None:
            _save(gen, timings, now, keep)
    with engine.connect() as conn:
        sizes = {
            t.__tablename__: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (MetricPoint, LatencyRollup, Request)
        }
        for t in (coarse.metric_rollups, coarse.latency_rollups_coarse):
            sizes[t.name] = conn.execute(select(func.count()).select_from(t)).scalar_one()
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    naive = _naive(engine, now) if gen.raw_rows and NAIVE else {}
    ro = readonly_engine(url)
    rows = []
    baseline = _baseline_module() if BASELINE else None
    sample = gen.sample_ids[len(gen.sample_ids) // 2] if gen.sample_ids else "req_none00000000"
    from dashboard import ui

    for preset in PRESETS:
        window = ui._window(preset, now, "UTC")
        exact: dict[int, dict[int, float]] | None = None
        if window.start <= now - timedelta(days=DAYS):  # the window holds every generated day
            exact = {dep: _exact(gen, dep) for dep in gen.durations}
        elif gen.minutes:  # every generated duration with its minute: exact in any window
            exact = _exact_window(gen, window)
        elif gen.raw_rows >= gen.requests:  # every request is a raw row: exact in any window
            exact = _exact_raw(engine, window)
        base_calls = _page_calls(now, preset, baseline) if baseline is not None else {}
        for page, calls in _page_calls(now, preset).items():
            _run_page(ro, calls, sample)  # warm-up: database page cache, not Streamlit's
            if baseline is not None:
                _run_page(ro, base_calls[page], sample, baseline)
            runs, base_runs = [], []
            for _ in range(REPEATS):  # interleaved: both versions see the same machine load
                if baseline is not None:
                    gc.collect()
                    base_runs.append(_run_page(ro, base_calls[page], sample, baseline)[0])
                gc.collect()  # each run starts from the same heap, not a collector backlog
                runs.append(_run_page(ro, calls, sample))
            runs.sort(key=lambda r: r[0])
            ms, out, per_call = runs[len(runs) // 2]
            base_ms = sorted(base_runs)[len(base_runs) // 2] if base_runs else None
            slowest = max(per_call, key=lambda c: c[1])
            error = None
            if exact and page == "Overview":
                table = out["overview_page"]["table"] if "overview_page" in out else None
                error = _pct_error(exact, table if table is not None else out["overview"][1])
            elif exact and page == "Deployment" and 1 in exact:
                with ro.connect() as conn:
                    overall = q.latency(conn, *calls[2][1], **calls[2][2])
                error = max(abs(overall[f"p{p}"].iloc[0] - exact[1][p]) / exact[1][p] for p in PS)
            naive_ms = naive.get(page) if preset == "30 d" else None
            rows.append((preset, page, ms, naive_ms, error, slowest, base_ms))
    ro.dispose()
    engine.dispose()
    return rows, {"timings": timings, "sizes": sizes, "requests": gen.requests, "raw": gen.raw_rows}


def _bench_pg(now: datetime, keep: Path | None, tag: str) -> tuple[list[tuple], dict] | str:
    """The PostgreSQL run in its own schema (kept as ``fw_bench_keep_<tag>`` with a keep dir)."""
    admin = create_engine(PG_URL)
    schema = f"fw_bench_keep_{tag}" if keep else f"fw_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    except Exception as exc:
        admin.dispose()
        return f"skipped: PostgreSQL unreachable ({str(exc).splitlines()[0]})"
    try:
        return _bench(
            f"{PG_URL}?options={quote(f'-csearch_path={schema}')}",
            now,
            keep / f"pg-{tag}.npz" if keep else None,
        )
    finally:
        if keep is None:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def main() -> Table:
    """Run both backends. ``FW_BENCH_DASH_KEEP=DIR`` keeps (and reuses) the loaded stores."""
    now = _now()
    keep_dir = os.environ.get("FW_BENCH_DASH_KEEP")
    tag = f"{DEPLOYMENTS}x{DAYS}x{REQUESTS}x{RAW}"
    keep = Path(keep_dir) if keep_dir else None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    results: dict[str, tuple[list[tuple], dict[str, Any]] | str] = {}
    if "sqlite" in BACKENDS:
        with tempfile.TemporaryDirectory() as tmp:
            folder = keep or Path(tmp)
            results["SQLite"] = _bench(
                f"sqlite:///{folder / f'dash-{tag}.db'}",
                now,
                keep / f"sqlite-{tag}.npz" if keep else None,
            )
    if "postgresql" in BACKENDS or "pg" in BACKENDS:
        results["PostgreSQL"] = _bench_pg(now, keep, tag)
    notes = []
    for backend, result in results.items():
        if isinstance(result, str):
            continue
        info = result[1]
        sizes = ", ".join(f"{k} {v:,}" for k, v in info["sizes"].items())
        load_t = ", ".join(f"{k} {v:.0f} s" for k, v in info["timings"].items())
        notes.append(
            f"{backend}: {info['requests']:,} requests ({info['raw']:,} raw rows); rows: "
            f"{sizes}; load: {load_t}"
        )
    table = Table(
        "backend",
        "range",
        "page",
        "queries ms",
        *([f"baseline {BASELINE} ms", "ratio"] if BASELINE else []),
        "naive raw ms",
        "max pct error",
        "target",
        "slowest query (ms)",
        title=(
            f"Dashboard pages ({', '.join(PRESETS)}), {DEPLOYMENTS} deployments × {DAYS} days, "
            f"{REQUESTS:,} requests (histogram accuracy {RELATIVE_ACCURACY:.1%})"
        ),
        caption="\n".join(notes),
    )
    for backend, result in results.items():
        if isinstance(result, str):
            table.add_row(backend, "", result, *[""] * (7 if BASELINE else 5))
            continue
        rows, _info = result
        limit = 300 if backend == "PostgreSQL" else 1000
        for preset, page, ms, naive, error, slowest, base_ms in rows:
            ok = ms <= limit and (error is None or error <= 0.01)
            base = [f"{base_ms:,.0f}", f"{ms / base_ms:.2f}"] if base_ms else ["–", "–"]
            table.add_row(
                backend,
                preset,
                page,
                f"{ms:,.0f}",
                *(base if BASELINE else []),
                f"{naive:,.0f}" if naive is not None else "–",
                f"{100 * error:.2f} %" if error is not None else "–",
                f"≤ {limit} ms, ≤ 1 % " + ("ok" if ok else "MISSED"),
                f"{slowest[0]} {slowest[1]:,.0f}",
            )
    return table


if __name__ == "__main__":
    from rich.console import Console

    Console().print(main())
