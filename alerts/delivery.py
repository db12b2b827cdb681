"""Sending recorded alerts: each (alert, channel) once, retried on later checks until it lands.

State of an ``alert_deliveries`` row::

    pending ──claim──► sending ──ok──► sent
       ▲                  │  └─error─► failed ──claim (next check)──► sending …
       └──────────────────┘ (crash: 'sending' older than sending_timeout, see below)

- **Claim** is one conditional UPDATE (``status``/``attempts`` as last read → ``sending``,
  ``attempts + 1``, ``delivered_at`` = claim time): a compare-and-set, so of two checkers
  (threads or processes, SQLite or PostgreSQL) exactly one gets the row and sends.
- **Send** happens outside any transaction; then **finish** writes ``sent`` (with
  ``delivered_at``) or ``failed`` (``last_error`` scrubbed of secrets). A channel that already
  got the alert is ``sent`` and is never claimed again, so a retry of a failing channel never
  repeats what the others received.
- ``failed`` rows are claimed again by the next check, up to ``max_attempts`` checks.

Worst case — killed between send and record: the row stays ``sending`` with its claim time in
``delivered_at``. A check after ``sending_timeout`` (default 10 min, well above the longest a
send can take: attempts × timeout + backoff) re-claims it and, with ``resend_interrupted``
(default), sends again: **at-least-once** for that window, i.e. at most one duplicate per crash,
carrying the same alert key (webhook ``id``, email ``Message-ID``) so it can be recognised. With
``resend_interrupted = false`` it is marked ``interrupted`` instead: **at-most-once** (a crash
may lose that one message). A crash *before* the send leaves the same trace, so both modes
trade exactly the same window. Nothing else can duplicate or lose a message: the event and its
pending deliveries are committed together before any send.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, and_, or_, select, update

from alerts.channels import AlertView, DeliveryError, send
from alerts.config import AlertConfig, Channel
from alerts.secrets import scrub
from models.tables import AlertDelivery, AlertEvent

log = logging.getLogger("foundry_watch.alerts")

Sender = Callable[[str, Channel, AlertView], None]


@dataclass(frozen=True)
class DeliveryResult:
    delivery_id: int
    alert_event_id: int
    channel: str
    status: str  # sent | failed | interrupted
    attempts: int
    error: str = ""


def due(engine: Engine, config: AlertConfig, now: datetime) -> list[tuple]:
    """Deliveries to (re)try now: pending, failed below the attempt cap, or stale 'sending'."""
    opts = config.alerts
    stale = now - opts.sending_timeout
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(
                    AlertDelivery.id,
                    AlertDelivery.alert_event_id,
                    AlertDelivery.channel,
                    AlertDelivery.status,
                    AlertDelivery.attempts,
                )
                .where(
                    or_(
                        AlertDelivery.status == "pending",
                        and_(
                            AlertDelivery.status == "failed",
                            AlertDelivery.attempts < opts.max_attempts,
                        ),
                        and_(
                            AlertDelivery.status == "sending",
                            AlertDelivery.delivered_at < stale,
                        ),
                    )
                )
                .order_by(AlertDelivery.id)
            ).all()
        )


def claim(engine: Engine, row: tuple, now: datetime) -> bool:
    """Compare-and-set ``row`` (as read) to ``sending``; True if this checker won it."""
    with engine.begin() as conn:
        result = conn.execute(
            update(AlertDelivery)
            .where(
                AlertDelivery.id == row.id,
                AlertDelivery.status == row.status,
                AlertDelivery.attempts == row.attempts,
            )
            .values(status="sending", attempts=row.attempts + 1, delivered_at=now)
        )
        return result.rowcount == 1


def finish(
    engine: Engine, delivery_id: int, attempts: int, status: str, error: str, now: datetime | None
) -> None:
    """Record the outcome of the send this checker claimed (guarded by its attempt number)."""
    with engine.begin() as conn:
        conn.execute(
            update(AlertDelivery)
            .where(
                AlertDelivery.id == delivery_id,
                AlertDelivery.status == "sending",
                AlertDelivery.attempts == attempts,
            )
            .values(status=status, last_error=error[:2000], delivered_at=now)
        )


def _give_up_interrupted(engine: Engine, row: tuple) -> bool:
    with engine.begin() as conn:
        return (
            conn.execute(
                update(AlertDelivery)
                .where(
                    AlertDelivery.id == row.id,
                    AlertDelivery.status == "sending",
                    AlertDelivery.attempts == row.attempts,
                )
                .values(
                    status="interrupted",
                    last_error="interrupted while sending (crash?); not re-sent "
                    "(resend_interrupted = false)",
                )
            ).rowcount
            == 1
        )


def deliver(
    engine: Engine,
    config: AlertConfig,
    clock: Callable[[], datetime],
    sender: Sender = send,
) -> list[DeliveryResult]:
    """Send every due delivery this checker can claim; returns what happened to each."""
    results: list[DeliveryResult] = []
    events: dict[int, AlertView] = {}
    for row in due(engine, config, clock()):
        if row.status == "sending" and not config.alerts.resend_interrupted:
            if _give_up_interrupted(engine, row):
                results.append(
                    DeliveryResult(
                        row.id, row.alert_event_id, row.channel, "interrupted", row.attempts
                    )
                )
            continue
        if not claim(engine, row, clock()):
            continue  # another checker has it
        attempts = row.attempts + 1
        if row.alert_event_id not in events:
            with engine.connect() as conn:
                event = conn.execute(
                    select(AlertEvent).where(AlertEvent.id == row.alert_event_id)
                ).one()
            events[row.alert_event_id] = AlertView.of_event(event)
        view = events[row.alert_event_id]
        channel = config.channels.get(row.channel)
        try:
            if channel is None:
                raise DeliveryError(f"{row.channel}: channel is no longer configured")
            sender(row.channel, channel, view)
        except Exception as exc:
            error = scrub(str(exc) if isinstance(exc, DeliveryError) else f"{row.channel}: {exc}")
            finish(engine, row.id, attempts, "failed", error, None)
            log.warning("alert %s not delivered (attempt %d): %s", view.key, attempts, error)
            results.append(
                DeliveryResult(row.id, row.alert_event_id, row.channel, "failed", attempts, error)
            )
            continue
        finish(engine, row.id, attempts, "sent", "", clock())
        log.info("alert %s sent to %s", view.key, row.channel)
        results.append(DeliveryResult(row.id, row.alert_event_id, row.channel, "sent", attempts))
    return results
