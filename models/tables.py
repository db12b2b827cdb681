"""The store's tables (DESIGN §5).

Every table has a natural key (a unique constraint or the primary key itself), so every write can
be an upsert and a repeated or overlapping collection window changes nothing. Key columns that may
be "absent" hold ``''`` rather than NULL, because NULLs never conflict in a unique constraint.
Indexes lead with the deployment and then time: the dashboard asks "this deployment, this range".
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from models.types import BigIntPK, UTCDateTime

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

Money = Numeric(18, 6)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, Decimal: Money}


class Resource(Base):
    """A Foundry resource (Cognitive Services account of kind AIServices)."""

    __tablename__ = "resources"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    arm_id: Mapped[str] = mapped_column(String(512), unique=True, comment="lower-cased ARM id")
    subscription_id: Mapped[str] = mapped_column(String(64), index=True)
    resource_group: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    location: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64), default="AIServices", server_default="AIServices")
    endpoint: Mapped[str] = mapped_column(String(512), default="", server_default="")
    workspace_arm_id: Mapped[str] = mapped_column(String(512), default="", server_default="")
    workspace_customer_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    deleted_at: Mapped[datetime | None]


class Deployment(Base):
    """A model deployment inside a resource; kept after deletion (``deleted_at``)."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("resource_id", "name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    model_name: Mapped[str] = mapped_column(String(128), default="", server_default="", index=True)
    model_version: Mapped[str] = mapped_column(String(64), default="", server_default="")
    model_format: Mapped[str] = mapped_column(
        String(64), default="Anthropic", server_default="Anthropic"
    )
    sku_name: Mapped[str] = mapped_column(String(64), default="", server_default="")
    capacity: Mapped[int | None] = mapped_column(Integer)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    deleted_at: Mapped[datetime | None]


class MetricPoint(Base):
    """One Azure Monitor metric value: deployment × metric × status code × minute."""

    __tablename__ = "metric_points"

    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    minute: Mapped[datetime] = mapped_column(primary_key=True)
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    status_code: Mapped[str] = mapped_column(
        String(8),
        primary_key=True,
        default="",
        server_default="",
        comment="'' when the metric has no status split",
    )
    total: Mapped[float | None] = mapped_column(Float)
    count: Mapped[float | None] = mapped_column(Float)
    average: Mapped[float | None] = mapped_column(Float)
    minimum: Mapped[float | None] = mapped_column(Float)
    maximum: Mapped[float | None] = mapped_column(Float)


class Request(Base):
    """One request, from Log Analytics, from client capture, or both joined on the apim id."""

    __tablename__ = "requests"
    __table_args__ = (
        Index(None, "deployment_id", "time"),
        Index(None, "time"),
        Index(None, "request_id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    correlation_id: Mapped[str] = mapped_column(
        String(64), unique=True, comment="Azure CorrelationId == apim-request-id"
    )
    request_id: Mapped[str] = mapped_column(
        String(64), default="", server_default="", comment="Anthropic req_…"
    )
    time: Mapped[datetime]
    resource_id: Mapped[int | None] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    deployment_id: Mapped[int | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE")
    )
    deployment_name: Mapped[str] = mapped_column(String(128), default="", server_default="")
    model_name: Mapped[str] = mapped_column(String(128), default="", server_default="")
    operation_name: Mapped[str] = mapped_column(String(128), default="", server_default="")
    status_code: Mapped[int] = mapped_column(Integer)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    stream: Mapped[bool | None] = mapped_column(Boolean)
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_read_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_write_5m_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_write_1h_tokens: Mapped[int | None] = mapped_column(Integer)
    caller_ip: Mapped[str] = mapped_column(String(64), default="", server_default="")
    source: Mapped[str] = mapped_column(
        String(16), default="logs", server_default="logs", comment="logs|capture|both"
    )


class LatencyRollup(Base):
    """Per deployment, minute and status class: count, sum and a mergeable histogram.

    Percentiles over any range are read by merging histograms, never by scanning ``requests``.
    """

    __tablename__ = "latency_rollups"

    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    status_class: Mapped[str] = mapped_column(String(8), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    sum_ms: Mapped[float] = mapped_column(Float)
    min_ms: Mapped[float | None] = mapped_column(Float)
    max_ms: Mapped[float | None] = mapped_column(Float)
    histogram: Mapped[dict[str, Any]] = mapped_column(JSON, comment="bucket index -> count")


class MetricRollup(Base):
    """``metric_points`` summed per hour and per day: what 30-day views read.

    Totals and counts add, minima/maxima take min/max, averages are count-weighted, so a range
    served by days, then hours, then minutes at its ragged edges equals a minute-level scan.
    Written by ``collector.coarse_rollups.refresh`` in the same transaction as the minutes.
    Key order puts the metric before time: a page asks "these metrics of these deployments
    over this range", one contiguous key range per (deployment, metric).
    """

    __tablename__ = "metric_rollups"
    __table_args__ = {"sqlite_with_rowid": False}

    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    grain: Mapped[str] = mapped_column(String(8), primary_key=True, comment="hour|day")
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(primary_key=True, comment="UTC start of hour/day")
    status_code: Mapped[str] = mapped_column(
        String(8), primary_key=True, default="", server_default=""
    )
    total: Mapped[float | None] = mapped_column(Float)
    count: Mapped[float | None] = mapped_column(Float)
    average: Mapped[float | None] = mapped_column(Float)
    minimum: Mapped[float | None] = mapped_column(Float)
    maximum: Mapped[float | None] = mapped_column(Float)


class LatencyRollupCoarse(Base):
    """``latency_rollups`` merged per hour and per day (histograms in ``collector.dense`` form).

    A day of a busy deployment holds hundreds of histogram buckets; the dense binary form is
    read by numpy without parsing, which keeps 30-day percentiles fast.
    """

    __tablename__ = "latency_rollups_coarse"
    __table_args__ = {"sqlite_with_rowid": False}

    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    grain: Mapped[str] = mapped_column(String(8), primary_key=True, comment="hour|day")
    status_class: Mapped[str] = mapped_column(String(8), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(primary_key=True, comment="UTC start of hour/day")
    count: Mapped[int] = mapped_column(Integer)
    sum_ms: Mapped[float] = mapped_column(Float)
    min_ms: Mapped[float | None] = mapped_column(Float)
    max_ms: Mapped[float | None] = mapped_column(Float)
    histogram: Mapped[bytes] = mapped_column(LargeBinary)


class Cost(Base):
    """One Cost Management row: scope × cost type × day × resource × meter × charge."""

    __tablename__ = "costs"
    __table_args__ = (
        UniqueConstraint(
            "scope",
            "cost_type",
            "day",
            "resource_group",
            "resource_arm_id",
            "meter",
            "publisher_type",
            "charge_type",
        ),
        Index(None, "day"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    scope: Mapped[str] = mapped_column(String(512))
    cost_type: Mapped[str] = mapped_column(String(32), comment="ActualCost|AmortizedCost")
    day: Mapped[date] = mapped_column(Date)
    resource_group: Mapped[str] = mapped_column(
        String(128), default="", server_default="", comment="lower-cased"
    )
    resource_arm_id: Mapped[str] = mapped_column(
        String(512), default="", server_default="", comment="lower-cased"
    )
    meter: Mapped[str] = mapped_column(String(256), default="", server_default="")
    meter_category: Mapped[str] = mapped_column(String(128), default="", server_default="")
    service_name: Mapped[str] = mapped_column(String(128), default="", server_default="")
    publisher_type: Mapped[str] = mapped_column(String(64), default="", server_default="")
    charge_type: Mapped[str] = mapped_column(String(64), default="", server_default="")
    model_name: Mapped[str] = mapped_column(String(128), default="", server_default="", index=True)
    cost: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(String(8))
    fetched_at: Mapped[datetime]


class Price(Base):
    """List price per model in currency per million tokens; editable by the user."""

    __tablename__ = "prices"

    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    currency: Mapped[str] = mapped_column(String(8), default="USD", server_default="USD")
    input_per_mtok: Mapped[Decimal]
    output_per_mtok: Mapped[Decimal]
    cache_write_5m_per_mtok: Mapped[Decimal]
    cache_write_1h_per_mtok: Mapped[Decimal]
    cache_read_per_mtok: Mapped[Decimal]
    updated_at: Mapped[datetime]


class Budget(Base):
    """A monthly budget over a scope (all, subscription, resource or deployment pattern)."""

    __tablename__ = "budgets"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    scope_kind: Mapped[str] = mapped_column(String(32), default="all", server_default="all")
    scope_pattern: Mapped[str] = mapped_column(String(512), default="*", server_default="*")
    amount: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(String(8), default="USD", server_default="USD")
    thresholds: Mapped[dict[str, Any]] = mapped_column(JSON, comment='{"percent": [50, 80, 100]}')
    spend_basis: Mapped[str] = mapped_column(String(32), default="billed", server_default="billed")
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    channels: Mapped[dict[str, Any]] = mapped_column(JSON, comment='{"names": [...]}')


class AlertEvent(Base):
    """An alert that fired; unique per rule, period, threshold and kind so it fires once."""

    __tablename__ = "alert_events"
    __table_args__ = (UniqueConstraint("rule", "period", "threshold", "kind"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    rule: Mapped[str] = mapped_column(String(256), comment="budget name or operational rule key")
    period: Mapped[str] = mapped_column(String(64), comment="e.g. 2026-11 or an episode start")
    threshold: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32), comment="actual|forecast|firing|resolved")
    fired_at: Mapped[datetime]
    value: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text, default="", server_default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AlertDelivery(Base):
    """Delivery of one alert to one channel, so a retry never re-sends what arrived."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (UniqueConstraint("alert_event_id", "channel"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    alert_event_id: Mapped[int] = mapped_column(ForeignKey("alert_events.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), comment="pending|sent|failed")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str] = mapped_column(Text, default="", server_default="")
    delivered_at: Mapped[datetime | None]


class Watermark(Base):
    """How far a source has been collected for a scope; advanced with the rows it covers."""

    __tablename__ = "watermarks"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    scope: Mapped[str] = mapped_column(String(512), primary_key=True)
    high_water: Mapped[datetime]
    updated_at: Mapped[datetime]


class CollectorRun(Base):
    """One run of one job on one scope: what it asked, what it got, how it ended."""

    __tablename__ = "collector_runs"
    __table_args__ = (Index(None, "job", "started_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    job: Mapped[str] = mapped_column(String(32))
    scope: Mapped[str] = mapped_column(String(512), default="", server_default="")
    window_start: Mapped[datetime | None]
    window_end: Mapped[datetime | None]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), comment="running|ok|partial|failed")
    rows: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    api_calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    duration_ms: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str] = mapped_column(Text, default="", server_default="")


#: Tables a user may count in ``foundry-watch status``, in the order they are shown.
STATUS_TABLES = [
    Resource,
    Deployment,
    MetricPoint,
    Request,
    LatencyRollup,
    Cost,
    Price,
    Budget,
    AlertEvent,
    Watermark,
    CollectorRun,
]
