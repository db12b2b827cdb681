"""The ``alerts`` job: evaluate budgets and rules, record new alerts, send what is due.

Runs in the collector's scheduler like a collection source (``run(ctx)``), and on demand from
``foundry-watch alerts check``. Any number of checkers may run at once: alerts are recorded
first through the unique key of ``alert_events`` and sent from claimed ``alert_deliveries``
rows (see ``alerts.events`` and ``alerts.delivery``), so each fires and is delivered once.
Each phase is recorded in ``collector_runs`` (job ``alerts``, scope ``budgets``, ``rules`` or
``delivery``) so the Collector health page shows it like any job.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine

from alerts.budgets import BudgetStatus, check_budgets, sync_budget_table
from alerts.config import AlertConfig, load_alert_config
from alerts.delivery import DeliveryResult, Sender, deliver
from alerts.events import Candidate, record
from alerts.rules import check_rules
from alerts.secrets import install_log_filter, scrub
from collector.jobs.base import JobContext, ScopeOutcome, skipped
from collector.runs import start_run, utcnow

log = logging.getLogger("foundry_watch.alerts")
JOB = "alerts"


@dataclass
class CheckReport:
    budgets: list[BudgetStatus] = field(default_factory=list)
    #: what the evaluation found (some may exist already, or be recorded by another checker)
    candidates: list[Candidate] = field(default_factory=list)
    #: the alerts this check recorded, and their event ids
    new: list[Candidate] = field(default_factory=list)
    created: list[int] = field(default_factory=list)
    deliveries: list[DeliveryResult] = field(default_factory=list)
    phases: dict[str, ScopeOutcome] = field(default_factory=dict)

    @property
    def errors(self) -> dict[str, str]:
        return {k: o.error for k, o in self.phases.items() if o.status == "failed"}

    def outcomes(self) -> list[ScopeOutcome]:
        return list(self.phases.values())


def check(
    engine: Engine,
    config: AlertConfig,
    clock: Callable[[], datetime] = utcnow,
    *,
    send: bool = True,
    sender: Sender | None = None,
    record_runs: bool = True,
) -> CheckReport:
    """One full check. ``send=False`` evaluates and records but leaves delivery to later."""
    install_log_filter("foundry_watch.alerts")
    report = CheckReport()
    check_id = uuid.uuid4().hex
    now = clock()

    def phase(scope: str, body: Callable[[], int], status_of: Callable[[], tuple[str, str]]):
        run = start_run(engine, JOB, scope) if record_runs else None
        try:
            rows = body()
            status, error = status_of()
        except Exception as exc:
            log.debug("alerts %s failed", scope, exc_info=True)
            error = scrub(f"alerts {scope}: {type(exc).__name__}: {exc}".splitlines()[0])
            log.error(error)
            rows, status = 0, "failed"
        report.phases[scope] = ScopeOutcome(JOB, scope, status, rows, 0, error)
        if run is not None:
            with engine.begin() as conn:
                run.finish(conn, status=status, rows=rows, error=error)

    def _record(candidates: list[Candidate]) -> int:
        created = record(engine, candidates, now, check_id)
        report.new += [c for c, _id in created]
        report.created += [i for _c, i in created]
        return len(created)

    def budgets() -> int:
        with engine.begin() as conn:
            sync_budget_table(conn, config)
        with engine.connect() as conn:
            statuses, candidates = check_budgets(conn, config, now)
        report.budgets = statuses
        report.candidates += candidates
        return _record(candidates)

    def rules() -> int:
        with engine.connect() as conn:
            candidates = check_rules(conn, config, now)
        report.candidates += candidates
        return _record(candidates)

    def delivery() -> int:
        report.deliveries = deliver(engine, config, clock, **({"sender": sender} if sender else {}))
        return sum(1 for d in report.deliveries if d.status == "sent")

    def delivery_status() -> tuple[str, str]:
        failed = [d for d in report.deliveries if d.status == "failed"]
        return ("partial", failed[0].error) if failed else ("ok", "")

    phase("budgets", budgets, lambda: ("ok", ""))
    phase("rules", rules, lambda: ("ok", ""))
    if send:
        phase("delivery", delivery, delivery_status)
    return report


def run(ctx: JobContext) -> list[ScopeOutcome]:
    """Scheduler entry point: config from the settings (``budgets``, ``channels``, ``alerts``)."""
    config = load_alert_config(ctx.settings)
    if not (config.budgets or config.alerts.rules or config.channels):
        return [skipped(ctx, JOB, "", "no budgets, rules or channels configured")]
    return check(ctx.engine, config, ctx.clock).outcomes()
