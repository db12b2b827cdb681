"""Recording alerts exactly once: insert first, then (elsewhere) send.

An alert is the row ``alert_events(rule, period, threshold, kind)``; that tuple is unique in
the store. Every checker (the scheduled job, ``alerts check``, two of them at once) inserts its
candidates with ``INSERT … ON CONFLICT DO NOTHING`` through ``models.db.upsert``: whoever
commits first owns the alert, the others' inserts do nothing. The owner is recognised by the
random ``check_id`` it wrote into ``details``; only the owner creates the alert's
``alert_deliveries`` rows (one per channel, ``pending``), in the same transaction as the event,
so an event never exists without its deliveries and a later config change never adds channels
to an old alert. Sending happens afterwards, from the deliveries (``alerts.delivery``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from models.db import upsert
from models.tables import AlertDelivery, AlertEvent

RULE_MAX = 256


def rule_key(*parts: str) -> str:
    """``rule:name:subject``, shortened with a hash when it would not fit the column."""
    key = ":".join(parts)
    if len(key) <= RULE_MAX:
        return key
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return f"{key[: RULE_MAX - 13]}#{digest}"


@dataclass
class Candidate:
    """An alert a checker wants to exist (it may exist already: then nothing happens)."""

    rule: str
    period: str
    threshold: str
    kind: str
    value: float | None
    message: str
    details: dict[str, Any]
    channels: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.rule, self.period, self.threshold, self.kind


@dataclass
class EventState:
    """The stored events of one rule (optionally of one period prefix), oldest first."""

    rule: str
    rows: list[Any]

    @classmethod
    def load(cls, conn: Connection, rule: str, prefix: str | None = None) -> EventState:
        stmt = select(
            AlertEvent.id,
            AlertEvent.rule,
            AlertEvent.period,
            AlertEvent.threshold,
            AlertEvent.kind,
            AlertEvent.fired_at,
            AlertEvent.value,
        ).where(AlertEvent.rule == rule)
        if prefix is not None:
            stmt = stmt.where(AlertEvent.period.like(f"{prefix}%"))
        return cls(rule, list(conn.execute(stmt.order_by(AlertEvent.id)).all()))

    def exists(self, period: str, threshold: str, kind: str) -> bool:
        return any(
            r.period == period and r.threshold == threshold and r.kind == kind for r in self.rows
        )

    def budget_period(self, month: str, threshold: str, kind: str) -> str:
        """``YYYY-MM``, or ``YYYY-MM#n`` after n-1 re-arms (``<kind>-cleared`` markers)."""
        cleared = sum(
            1
            for r in self.rows
            if r.threshold == threshold
            and r.kind == f"{kind}-cleared"
            and (r.period == month or r.period.startswith(f"{month}#"))
        )
        return month if cleared == 0 else f"{month}#{cleared + 1}"

    # operational rules: episodes "ep1", "ep2", … each with one firing and at most one resolved
    def firings(self) -> list[Any]:
        return [r for r in self.rows if r.kind == "firing"]

    def open_firing(self) -> Any | None:
        """The last firing if its episode has no resolved event yet."""
        firings = self.firings()
        if not firings:
            return None
        last = firings[-1]
        return None if self.exists(last.period, last.threshold, "resolved") else last

    def next_episode(self) -> str:
        return f"ep{len(self.firings()) + 1}"


def record(
    engine: Engine, candidates: list[Candidate], now: datetime, check_id: str
) -> list[tuple[Candidate, int]]:
    """Insert each candidate unless its key exists; returns the candidates *this* checker
    created, with their event ids (their deliveries were created with them)."""
    created: list[tuple[Candidate, int]] = []
    for c in candidates:
        with engine.begin() as conn:
            created_id = _record_one(conn, c, now, check_id)
        if created_id is not None:
            created.append((c, created_id))
    return created


def _record_one(conn: Connection, c: Candidate, now: datetime, check_id: str) -> int | None:
    # Write first: on SQLite the write lock is taken before anything is read in the
    # transaction, so two checkers serialise instead of failing on a stale snapshot.
    upsert(
        conn,
        AlertEvent,
        [
            {
                "rule": c.rule,
                "period": c.period,
                "threshold": c.threshold,
                "kind": c.kind,
                "fired_at": now,
                "value": c.value,
                "message": c.message,
                "details": {**c.details, "check_id": check_id, "channels": c.channels},
            }
        ],
        update=[],  # ON CONFLICT DO NOTHING: the first checker's row stays
    )
    row = conn.execute(
        select(AlertEvent.id, AlertEvent.details).where(
            AlertEvent.rule == c.rule,
            AlertEvent.period == c.period,
            AlertEvent.threshold == c.threshold,
            AlertEvent.kind == c.kind,
        )
    ).one()
    if (row.details or {}).get("check_id") != check_id:
        return None  # another checker (or an earlier check) owns this alert
    if c.channels:
        upsert(
            conn,
            AlertDelivery,
            [
                {
                    "alert_event_id": row.id,
                    "channel": channel,
                    "status": "pending",
                    "attempts": 0,
                    "last_error": "",
                    "delivered_at": None,
                }
                for channel in dict.fromkeys(c.channels)
            ],
            update=[],
        )
    return int(row.id)
