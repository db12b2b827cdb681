"""Exactly once: concurrent checkers (threads and processes), and restarts — including the
documented worst case, a kill between send and record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from alerts.channels import send
from alerts.config import load_alert_config
from alerts.job import check
from models.db import make_engine
from models.tables import AlertDelivery, AlertEvent
from tests.alerts.conftest import HOOK, SLACK, Clock, Mailbox, Receiver, Store, webhook_channels

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 11, 20, 10, tzinfo=UTC)


def raw_config(receiver: Receiver, smtp: Mailbox | None = None, **alerts: Any) -> dict[str, Any]:
    channels = webhook_channels(receiver)
    names = ["hook", "slack"]
    if smtp is not None:
        channels["mail"] = smtp.channel()
        names.append("mail")
    return {
        "budgets": [
            {"name": "team", "amount": 1000, "spend": "billed", "thresholds": [50, 80, 100],
             "forecast_thresholds": [], "channels": names}
        ],
        "channels": channels,
        "alerts": {
            "default_channels": names,
            "rules": [
                {"name": "throttling", "kind": "rate_429", "threshold": 5, "delay": "0s",
                 "min_requests": 50}
            ],
            **alerts,
        },
    }  # fmt: skip


def seed_month(store: Store, month_start: date, per_day: str, days: int) -> None:
    for i in range(days):
        store.add_bill(month_start + timedelta(days=i), "claude-sonnet-4-5", per_day)


def assert_exactly_once(store: Store, receiver: Receiver, events: int, delivered: int) -> None:
    """``events`` recorded, ``delivered`` of them sent (to hook and slack), each once."""
    with store.engine.connect() as conn:
        n_events = conn.execute(select(func.count()).select_from(AlertEvent)).scalar_one()
        rows = conn.execute(select(AlertDelivery.status, AlertDelivery.attempts)).all()
    assert n_events == events
    assert len(rows) == delivered * 2
    assert {tuple(r) for r in rows} == {("sent", 1)}
    got = Counter((r.path, r.body.get("id") or r.body["text"]) for r in receiver.requests)
    assert set(got.values()) == {1}, "no alert twice on a channel"
    assert Counter(path for path, _key in got) == {HOOK: delivered, SLACK: delivered}


def race(url: str, cfg: Any, now: datetime) -> tuple[list[Any], list[BaseException]]:
    """Two checkers, each with its own engine (pool), released at the same instant."""
    engines = [make_engine(url) for _ in range(2)]
    barrier = threading.Barrier(2)
    reports: list[Any] = []
    errors: list[BaseException] = []

    def run(engine: Any) -> None:
        try:
            barrier.wait()
            reports.append(check(engine, cfg, lambda: now))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for e in engines:
        e.dispose()
    return reports, errors


def test_two_threads_checking_at_once(store: Store, receiver: Receiver) -> None:
    cfg = load_alert_config(raw_config(receiver))
    url = store.url()
    rounds = [
        (date(2025, 9, 1), datetime(2025, 9, 30, 10, 10, tzinfo=UTC)),
        (date(2025, 10, 1), datetime(2025, 10, 31, 10, 10, tzinfo=UTC)),
        (date(2025, 11, 1), datetime(2025, 11, 30, 10, 10, tzinfo=UTC)),
    ]
    for n, (first, now) in enumerate(rounds, start=1):
        seed_month(store, first, "40", 28)  # 1,120: 50, 80 and 100 % cross together
        store.add_requests("prod-sonnet", now - timedelta(minutes=10), 10, {"200": 90, "429": 10})
        reports, errors = race(url, cfg, now)
        assert not errors, errors
        assert all(not r.errors for r in reports), [r.errors for r in reports]
        # per round: 3 budget thresholds of a new month, crossed together: recorded, and the
        # highest sent; round 1 also the 429 firing (it stays open: every round's window is
        # throttled again)
        assert sum(len(r.created) for r in reports) == (4 if n == 1 else 3)
        assert_exactly_once(store, receiver, events=4 + 3 * (n - 1), delivered=2 + (n - 1))


def test_two_processes_checking_at_once(store: Store, receiver: Receiver, smtp: Mailbox) -> None:
    raw = raw_config(receiver, smtp)
    now = datetime(2025, 11, 30, 10, 10, tzinfo=UTC)
    seed_month(store, date(2025, 11, 1), "40", 28)
    store.add_requests("prod-sonnet", now - timedelta(minutes=10), 10, {"200": 90, "429": 10})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [store.url(), json.dumps(raw), now.isoformat()]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.alerts._checker", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:  # both imported and connected: release them together
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _err in outputs]
    assert all(not r["errors"] for r in results)
    assert sum(len(r["created"]) for r in results) == 4
    # 2 alerts sent (budget 100 %, 429 firing) × 3 channels, once each
    assert sum(len(r["sent"]) for r in results) == 6
    with store.engine.connect() as conn:
        rows = conn.execute(select(AlertDelivery.status, AlertDelivery.attempts)).all()
    assert {tuple(r) for r in rows} == {("sent", 1)} and len(rows) == 6
    assert len(smtp.messages) == 2
    assert len({m["Message-ID"] for m in smtp.messages}) == 2
    assert len(receiver.to(HOOK)) == len(receiver.to(SLACK)) == 2


class Killed(BaseException):
    """Stands in for kill -9: nothing after it runs, no ``except Exception`` catches it."""


def kill_after_send(name: str, channel: Any, view: Any) -> None:
    send(name, channel, view)
    raise Killed


def kill_before_send(name: str, channel: Any, view: Any) -> None:
    raise Killed


def _one_budget_alert(store: Store, receiver: Receiver, **alerts: Any) -> Any:
    raw = raw_config(receiver, **alerts)
    raw["budgets"][0]["thresholds"] = [50]
    raw["budgets"][0]["channels"] = ["hook"]
    raw["alerts"]["rules"] = []
    seed_month(store, date(2025, 11, 1), "40", 15)
    return load_alert_config(raw)


def delivery_state(store: Store) -> tuple[str, int]:
    with store.engine.connect() as conn:
        row = conn.execute(select(AlertDelivery.status, AlertDelivery.attempts)).one()
    return row.status, row.attempts


def test_kill_between_send_and_record_resends_once_after_the_timeout(
    store: Store, receiver: Receiver
) -> None:
    """The documented worst case: at-least-once, one duplicate with the same alert id."""
    cfg = _one_budget_alert(store, receiver)
    clock = Clock(T0)
    with pytest.raises(Killed):
        check(store.engine, cfg, clock, sender=kill_after_send)
    assert len(receiver.to(HOOK)) == 1
    assert delivery_state(store) == ("sending", 1)

    restarted = make_engine(store.url())  # a new process, a new pool
    clock.advance(minutes=5)  # within sending_timeout (10 min): maybe still in flight elsewhere
    check(restarted, cfg, clock)
    assert len(receiver.to(HOOK)) == 1 and delivery_state(store) == ("sending", 1)
    clock.advance(minutes=6)
    check(restarted, cfg, clock)
    assert delivery_state(store) == ("sent", 2)
    first, second = (r.body for r in receiver.to(HOOK))
    assert first["id"] == second["id"] == "budget:team|2025-11|50|actual"
    check(restarted, cfg, Clock(T0 + timedelta(hours=1)))
    assert len(receiver.to(HOOK)) == 2, "and never again"
    restarted.dispose()


def test_kill_with_resend_disabled_is_at_most_once(store: Store, receiver: Receiver) -> None:
    cfg = _one_budget_alert(store, receiver, resend_interrupted=False)
    clock = Clock(T0)
    with pytest.raises(Killed):
        check(store.engine, cfg, clock, sender=kill_after_send)
    clock.advance(minutes=11)
    check(store.engine, cfg, clock)
    assert delivery_state(store) == ("interrupted", 1)
    assert len(receiver.to(HOOK)) == 1


def test_kill_after_claim_before_send_still_delivers(store: Store, receiver: Receiver) -> None:
    cfg = _one_budget_alert(store, receiver)
    clock = Clock(T0)
    with pytest.raises(Killed):
        check(store.engine, cfg, clock, sender=kill_before_send)
    assert receiver.to(HOOK) == []
    clock.advance(minutes=11)
    check(store.engine, cfg, clock)
    assert len(receiver.to(HOOK)) == 1 and delivery_state(store) == ("sent", 2)


def test_kill_after_recording_before_any_send(store: Store, receiver: Receiver) -> None:
    """The event and its pending deliveries are committed together: a restart sends them."""
    cfg = _one_budget_alert(store, receiver)
    check(store.engine, cfg, Clock(T0), send=False)
    assert delivery_state(store) == ("pending", 0)
    check(make_engine(store.url()), cfg, Clock(T0 + timedelta(seconds=30)))
    assert len(receiver.to(HOOK)) == 1 and delivery_state(store) == ("sent", 1)
