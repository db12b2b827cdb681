"""What ``foundry-watch status`` reports: schema version, row counts, last run per source."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, inspect, select

from models.db import check_connection
from models.migrations import current_revision, head_revision
from models.tables import STATUS_TABLES, CollectorRun, Watermark


@dataclass
class StoreStatus:
    database: str
    schema_revision: str | None
    schema_head: str
    row_counts: dict[str, int] = field(default_factory=dict)
    last_runs: list[dict[str, Any]] = field(default_factory=list)
    watermarks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def schema_current(self) -> bool:
        return self.schema_revision == self.schema_head

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "schema_current": self.schema_current}


def read_status(engine: Engine) -> StoreStatus:
    """Read the store's state without writing anything; works on an empty database too."""
    check_connection(engine)
    report = StoreStatus(
        database=engine.url.render_as_string(hide_password=True),
        schema_revision=current_revision(engine),
        schema_head=head_revision(),
    )
    existing = set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        for model in STATUS_TABLES:
            table = model.__table__
            if table.name in existing:
                count = conn.execute(select(func.count()).select_from(table)).scalar_one()
                report.row_counts[table.name] = count
        if CollectorRun.__tablename__ in existing:
            report.last_runs = _last_runs(conn)
        if Watermark.__tablename__ in existing:
            report.watermarks = _watermarks(conn)
    return report


def _watermarks(conn: Any) -> list[dict[str, Any]]:
    """How far each source got per scope, and how far behind now that is."""
    now = datetime.now(UTC)
    rows = conn.execute(
        select(Watermark.source, Watermark.scope, Watermark.high_water).order_by(
            Watermark.source, Watermark.scope
        )
    )
    return [
        {
            "source": w.source,
            "scope": w.scope,
            "high_water": w.high_water.isoformat(),
            "lag_s": round((now - w.high_water).total_seconds()),
        }
        for w in rows
    ]


def _last_runs(conn: Any) -> list[dict[str, Any]]:
    latest = (
        select(CollectorRun.job, CollectorRun.scope, func.max(CollectorRun.id).label("id"))
        .group_by(CollectorRun.job, CollectorRun.scope)
        .subquery()
    )
    rows = conn.execute(
        select(CollectorRun).join(latest, CollectorRun.id == latest.c.id).order_by(CollectorRun.job)
    ).all()
    return [
        {
            "job": run.job,
            "scope": run.scope,
            "status": run.status,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "rows": run.rows,
            "error": run.error.splitlines()[0] if run.error else "",
        }
        for run in rows
    ]
