"""Operational rules: 429 rate, error rate, p95 latency per deployment; data staleness.

Each rule is evaluated per *subject* (a deployment, or a watermark's source and scope) over a
sliding window ``[now − delay − window, now − delay)``; ``delay`` leaves out the minutes the
collector has not fetched yet. A subject is in one of three states:

- breached: the value is above the threshold (with at least ``min_requests`` requests);
- clear: the value is at or below it (with at least ``min_requests`` requests);
- unknown: too few requests to tell — nothing changes (an open alert stays open).

Episodes: a breach with no open episode fires ``(rule:name:subject, epN, threshold, firing)``;
the next clear evaluation stores ``(…, epN, …, resolved)`` and sends the resolve message. A new
episode does not fire within ``cooldown`` of the previous firing (flapping sends one alert per
cool-down, not one per check). ``N`` counts the subject's earlier firings, so concurrent
checkers compute the same key and the unique constraint keeps one. An open episode whose
subject is no longer evaluated (deployment deleted, out of the pattern, watermark gone) is
resolved with that reason.

Sources: requests by status from ``metric_points`` (``ModelRequests`` split by ``StatusCode``,
Azure Monitor's per-minute totals); latency from ``latency_rollups`` histograms (from the
request logs), merged over the window, p95 by ``collector.rollups.percentiles``; staleness from
``watermarks`` (now − high-water mark).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatch
from typing import Any

from sqlalchemy import Connection, func, select

from alerts.config import RULE_LABELS, AlertConfig, RuleConfig, format_duration
from alerts.events import Candidate, EventState, rule_key
from collector.rollups import merge, percentiles, status_class
from models.tables import AlertEvent, Deployment, LatencyRollup, MetricPoint, Resource, Watermark

REQUESTS_METRIC = "modelrequests"
PAGES = {"rate_429": "errors", "error_rate": "errors", "latency_p95": "deployment"}


@dataclass(frozen=True)
class Reading:
    """One subject's value for one rule at one check."""

    subject: str
    label: str  # how a person names the subject
    value: float | None  # None: unknown (too little data)
    requests: int = 0

    def state(self, rule: RuleConfig) -> str:
        if self.value is None:
            return "unknown"
        limit = (
            rule.max_lag.total_seconds()
            if rule.kind == "staleness" and rule.max_lag
            else float(rule.threshold or 0)
        )
        return "breached" if self.value > limit else "clear"


def _window(rule: RuleConfig, now: datetime) -> tuple[datetime, datetime]:
    end = now - rule.delay
    return end - rule.window, end


def _deployments(conn: Connection, pattern: str) -> dict[int, tuple[str, str]]:
    """Live deployments matching ``pattern``: id → (subject, label)."""
    rows = conn.execute(
        select(Deployment.id, Deployment.name, Resource.name.label("resource"))
        .join(Resource, Resource.id == Deployment.resource_id)
        .where(Deployment.deleted_at.is_(None))
    ).all()
    pat = pattern.lower()
    out: dict[int, tuple[str, str]] = {}
    for r in rows:
        full = f"{r.resource}/{r.name}"
        if fnmatch(r.name.lower(), pat) or fnmatch(full.lower(), pat):
            out[r.id] = (full, f"{r.name} ({r.resource})")
    return out


def _status_class(code: str) -> str:
    try:
        return status_class(int(code))
    except (TypeError, ValueError):
        return "other"


def rate_readings(conn: Connection, rule: RuleConfig, now: datetime) -> list[Reading]:
    """Share of requests in the rule's status classes (429, or 5xx…) per deployment."""
    deps = _deployments(conn, rule.deployments)
    start, end = _window(rule, now)
    rows = conn.execute(
        select(
            MetricPoint.deployment_id,
            MetricPoint.status_code,
            func.sum(MetricPoint.total).label("total"),
        )
        .where(
            func.lower(MetricPoint.metric) == REQUESTS_METRIC,
            MetricPoint.minute >= start,
            MetricPoint.minute < end,
        )
        .group_by(MetricPoint.deployment_id, MetricPoint.status_code)
    ).all()
    classes = {"429"} if rule.kind == "rate_429" else set(rule.classes)
    totals: dict[int, float] = defaultdict(float)
    hits: dict[int, float] = defaultdict(float)
    for r in rows:
        if r.deployment_id not in deps or r.total is None:
            continue
        totals[r.deployment_id] += float(r.total)
        if _status_class(r.status_code) in classes:
            hits[r.deployment_id] += float(r.total)
    out = []
    for dep_id, (subject, label) in deps.items():
        n = round(totals.get(dep_id, 0.0))
        value = hits[dep_id] / totals[dep_id] * 100 if n >= rule.min_requests else None
        out.append(Reading(subject, label, value, n))
    return out


def latency_readings(conn: Connection, rule: RuleConfig, now: datetime) -> list[Reading]:
    """p95 of request duration (ms) per deployment from the merged minute histograms."""
    deps = _deployments(conn, rule.deployments)
    start, end = _window(rule, now)
    rows = conn.execute(
        select(LatencyRollup.deployment_id, LatencyRollup.count, LatencyRollup.histogram).where(
            LatencyRollup.bucket >= start,
            LatencyRollup.bucket < end,
            LatencyRollup.status_class.in_(rule.classes),
        )
    ).all()
    hists: dict[int, list[dict]] = defaultdict(list)
    counts: dict[int, int] = defaultdict(int)
    for r in rows:
        if r.deployment_id in deps:
            hists[r.deployment_id].append(r.histogram or {})
            counts[r.deployment_id] += int(r.count or 0)
    out = []
    for dep_id, (subject, label) in deps.items():
        n = counts.get(dep_id, 0)
        p95 = None
        if n >= rule.min_requests:
            p95 = percentiles(merge(hists.get(dep_id, [])), [95])[95]
        out.append(Reading(subject, label, p95, n))
    return out


def staleness_readings(conn: Connection, rule: RuleConfig, now: datetime) -> list[Reading]:
    """How far behind now each matching watermark is, in seconds."""
    rows = conn.execute(select(Watermark.source, Watermark.scope, Watermark.high_water)).all()
    out = []
    for r in rows:
        if not fnmatch(r.source.lower(), rule.source.lower()):
            continue
        lag = max(0.0, (now - r.high_water).total_seconds())
        out.append(Reading(f"{r.source} {r.scope}", f"{r.source} collection for {r.scope}", lag))
    return out


READERS = {
    "rate_429": rate_readings,
    "error_rate": rate_readings,
    "latency_p95": latency_readings,
    "staleness": staleness_readings,
}


def _show(rule: RuleConfig, value: float) -> str:
    if rule.kind == "staleness":
        return format_duration(timedelta(seconds=int(value)))
    if rule.kind == "latency_p95":
        return f"{value:,.0f} ms"
    return f"{value:.1f} %"


def _facts(rule: RuleConfig, reading: Reading, now: datetime) -> list[list[str]]:
    facts = [["Subject", reading.label]]
    if reading.value is not None:
        facts.append([RULE_LABELS[rule.kind].capitalize(), _show(rule, reading.value)])
    facts.append(["Threshold", rule.threshold_text()])
    if rule.kind != "staleness":
        end = _window(rule, now)[1]
        facts.append(["Window", f"{format_duration(rule.window)} to {end:%Y-%m-%d %H:%M} UTC"])
        facts.append(["Requests", f"{reading.requests:,}"])
    return facts


def _firing_text(rule: RuleConfig, r: Reading) -> tuple[str, str]:
    assert r.value is not None
    if rule.kind == "staleness":
        title = f"{r.label} is {_show(rule, r.value)} behind"
        return title, f"Data staleness: {title} (max {rule.threshold_text()})"
    label = RULE_LABELS[rule.kind]
    title = f"{label} {_show(rule, r.value)} on {r.label}"
    over = format_duration(rule.window)
    return title, (
        f"{label.capitalize()} {_show(rule, r.value)} on {r.label} over {over} "
        f"(threshold {rule.threshold_text()}, {r.requests:,} requests)"
    )


def _resolved_text(rule: RuleConfig, r: Reading | None) -> tuple[str, str]:
    label = RULE_LABELS[rule.kind]
    if r is None:
        return f"Resolved: {rule.name}", "no longer evaluated (deleted or out of the rule's scope)"
    assert r.value is not None
    if rule.kind == "staleness":
        title = f"Resolved: {r.label} caught up"
        return title, f"{title} ({_show(rule, r.value)} behind, max {rule.threshold_text()})"
    title = f"Resolved: {label} on {r.label}"
    return title, f"{title} back to {_show(rule, r.value)} (threshold {rule.threshold_text()})"


def rule_candidates(
    conn: Connection, rule: RuleConfig, config: AlertConfig, now: datetime
) -> list[Candidate]:
    readings = READERS[rule.kind](conn, rule, now)
    page = PAGES.get(rule.kind, "health")
    base = config.alerts.dashboard_url
    link = f"{base}/{page}" if base else ""
    channels = config.channels_for(rule)
    states = _states(conn, rule)
    out: list[Candidate] = []
    seen: set[str] = set()
    for reading in readings:
        key = rule_key("rule", rule.name, reading.subject)
        seen.add(key)
        state = states.get(key, EventState(key, []))
        status = reading.state(rule)
        open_firing = state.open_firing()
        details: dict[str, Any] = {
            "type": "rule",
            "rule_kind": rule.kind,
            "subject": reading.subject,
            "facts": _facts(rule, reading, now),
            "link": link,
        }
        if status == "breached" and open_firing is None:
            last = state.firings()[-1] if state.firings() else None
            if last is not None and now - last.fired_at < rule.cooldown:
                continue  # cooling down
            title, message = _firing_text(rule, reading)
            out.append(
                Candidate(
                    key,
                    state.next_episode(),
                    rule.threshold_text(),
                    "firing",
                    reading.value,
                    message,
                    {**details, "title": title},
                    channels,
                )
            )
        elif status == "clear" and open_firing is not None:
            title, message = _resolved_text(rule, reading)
            out.append(
                Candidate(
                    key,
                    open_firing.period,
                    open_firing.threshold,
                    "resolved",
                    reading.value,
                    message,
                    {**details, "title": title},
                    channels,
                )
            )
    for key, state in states.items():
        open_firing = state.open_firing()
        if key not in seen and open_firing is not None:
            title, message = _resolved_text(rule, None)
            out.append(
                Candidate(
                    key,
                    open_firing.period,
                    open_firing.threshold,
                    "resolved",
                    None,
                    f"{title}: {key.split(':', 2)[-1]} {message}",
                    {"type": "rule", "rule_kind": rule.kind, "title": title, "link": link},
                    channels,
                )
            )
    return out


def _states(conn: Connection, rule: RuleConfig) -> dict[str, EventState]:
    prefix = rule_key("rule", rule.name, "")
    rows = conn.execute(
        select(
            AlertEvent.id,
            AlertEvent.rule,
            AlertEvent.period,
            AlertEvent.threshold,
            AlertEvent.kind,
            AlertEvent.fired_at,
            AlertEvent.value,
        )
        .where(AlertEvent.rule.like(f"{prefix}%"), AlertEvent.kind.in_(["firing", "resolved"]))
        .order_by(AlertEvent.id)
    ).all()
    out: dict[str, EventState] = {}
    for r in rows:
        if r.rule.startswith(prefix):  # LIKE treats _ and % in names as wildcards
            out.setdefault(r.rule, EventState(r.rule, [])).rows.append(r)
    return out


def check_rules(conn: Connection, config: AlertConfig, now: datetime) -> list[Candidate]:
    out: list[Candidate] = []
    for rule in config.alerts.rules:
        out += rule_candidates(conn, rule, config, now)
    return out
