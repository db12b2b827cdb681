"""``foundry-watch alerts list|check|test CHANNEL`` (mounted by ``collector.cli``).

The settings come from the root command's context (``ctx.find_root().obj``), as for every
other command. Channel secrets are never printed: URLs show scheme and host only, passwords
not at all, errors are scrubbed. Exit codes: 0 ok, 1 a check or a send failed, 2 bad config
or usage.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from alerts.config import AlertConfig, format_duration, load_alert_config
from alerts.secrets import install_log_filter, scrub
from models.settings import ConfigError, load_settings

alerts_app = typer.Typer(help="Budget and operational alerts.", no_args_is_help=True)
out = Console()


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"foundry-watch: {scrub(message)}\n")
    raise typer.Exit(code)


def _settings(ctx: typer.Context) -> Any:
    settings = ctx.find_root().obj
    return settings if settings is not None else load_settings()


def _config(ctx: typer.Context) -> AlertConfig:
    try:
        return load_alert_config(_settings(ctx))
    except ConfigError as exc:
        _fail(f"configuration error: {exc}", 2)
        raise  # unreachable: _fail exits


def describe(config: AlertConfig) -> dict[str, Any]:
    """The config as plain data with every secret masked (``alerts list --json``)."""
    return {
        "budgets": [
            {
                "name": b.name,
                "scope": b.scope,
                "pattern": b.pattern,
                "amount": str(b.amount),
                "currency": b.currency,
                "thresholds": b.thresholds,
                "forecast_thresholds": b.forecast_thresholds,
                "spend": b.spend,
                "timezone": b.timezone,
                "channels": config.channels_for(b),
                "refire_after_drop": b.refire_after_drop,
            }
            for b in config.budgets
        ],
        "rules": [
            {
                "name": r.name,
                "kind": r.kind,
                "subject": r.source if r.kind == "staleness" else r.deployments,
                "threshold": r.threshold_text(),
                "window": format_duration(r.window),
                "min_requests": r.min_requests,
                "cooldown": format_duration(r.cooldown),
                "channels": config.channels_for(r),
            }
            for r in config.alerts.rules
        ],
        "channels": {name: ch.describe() for name, ch in config.channels.items()},
    }


@alerts_app.command("list")
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Budgets, operational rules and channels from the config file (secrets masked)."""
    data = describe(_config(ctx))
    if as_json:
        out.print_json(json.dumps(data))
        return
    budgets = Table(
        "budget", "scope", "monthly", "thresholds", "spend", "month in", "channels", title="Budgets"
    )
    for b in data["budgets"]:
        marks = ", ".join(f"{t:g}" for t in b["thresholds"]) + " %"
        if b["forecast_thresholds"]:
            marks += " (forecast " + ", ".join(f"{t:g}" for t in b["forecast_thresholds"]) + " %)"
        scope = "all" if b["scope"] == "all" else f"{b['scope']} {b['pattern']}"
        budgets.add_row(
            b["name"],
            scope,
            f"{b['amount']} {b['currency']}",
            marks,
            b["spend"],
            b["timezone"],
            ", ".join(b["channels"]) or "-",
        )
    if not data["budgets"]:
        budgets.add_row("-", "no [[budgets]] in the config file", "", "", "", "", "")
    out.print(budgets)
    rules = Table("rule", "kind", "on", "threshold", "window", "cool-down", "channels")
    rules.title = "Operational rules"
    for r in data["rules"]:
        rules.add_row(
            r["name"],
            r["kind"],
            r["subject"],
            r["threshold"],
            r["window"] if r["kind"] != "staleness" else "-",
            r["cooldown"],
            ", ".join(r["channels"]) or "-",
        )
    out.print(rules)
    channels = Table("channel", "target", title="Channels")
    for name, text in data["channels"].items():
        channels.add_row(name, text)
    out.print(channels)


@alerts_app.command("check")
def check_cmd(
    ctx: typer.Context,
    send: Annotated[bool, typer.Option(help="Send due notifications (else only record).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Evaluate budgets and rules now, record new alerts and send what is due."""
    from alerts.job import check
    from models.db import DatabaseUnavailable, check_connection, make_engine
    from models.migrations import SchemaOutOfDate, ensure_current

    install_log_filter("foundry_watch.alerts")
    config = _config(ctx)
    settings = _settings(ctx)
    engine = make_engine(settings.database_url)
    try:
        check_connection(engine)
        ensure_current(engine)
    except (DatabaseUnavailable, SchemaOutOfDate) as exc:
        _fail(str(exc), 1)
    report = check(engine, config, send=send)
    if as_json:
        out.print_json(json.dumps(_report_data(report), default=str))
    else:
        _print_report(report)
    failed = report.errors or any(d.status == "failed" for d in report.deliveries)
    if failed:
        raise typer.Exit(1)


def _report_data(report: Any) -> dict[str, Any]:
    return {
        "budgets": [
            {
                "budget": s.budget.name,
                "month": s.period,
                "currency": s.budget.currency,
                "amount": str(s.budget.amount),
                "month_to_date": str(s.forecast.month_to_date),
                "actual_pct": round(s.actual_pct, 2),
                "forecast": None if s.forecast.month_end is None else str(s.forecast.month_end),
                "forecast_pct": None if s.forecast_pct is None else round(s.forecast_pct, 2),
                "notes": s.notes,
            }
            for s in report.budgets
        ],
        "new_alerts": [
            {
                "id": event_id,
                "rule": c.rule,
                "period": c.period,
                "threshold": c.threshold,
                "kind": c.kind,
                "value": c.value,
                "message": c.message,
            }
            for c, event_id in zip(report.new, report.created, strict=True)
        ],
        "deliveries": [
            {"channel": d.channel, "event": d.alert_event_id, "status": d.status, "error": d.error}
            for d in report.deliveries
        ],
        "errors": report.errors,
    }


def _print_report(report: Any) -> None:
    from alerts.budgets import money

    if report.budgets:
        table = Table("budget", "month", "spent", "%", "forecast", "%", "notes", title="Budgets")
        for s in report.budgets:
            f, cur = s.forecast, s.budget.currency
            notes = "; ".join(s.notes)
            if f.month_end is None:
                notes = "; ".join(filter(None, [notes, "forecast: too little history"]))
            table.add_row(
                s.budget.name,
                s.period,
                money(f.month_to_date, cur),
                f"{s.actual_pct:.0f}",
                "-" if f.month_end is None else money(f.month_end, cur),
                "-" if s.forecast_pct is None else f"{s.forecast_pct:.0f}",
                notes,
            )
        out.print(table)
    if report.new:
        for c in report.new:
            out.print(f"[bold]{c.kind}[/] {c.message}")
    else:
        out.print("no new alerts")
    for d in report.deliveries:
        colour = "green" if d.status == "sent" else "red"
        out.print(f"  [{colour}]{d.status}[/] to {d.channel} (alert {d.alert_event_id}) {d.error}")
    for scope, error in report.errors.items():
        out.print(f"[red]{scope} failed[/]: {error}")


@alerts_app.command("test")
def test_cmd(
    ctx: typer.Context,
    channel: Annotated[str, typer.Argument(help="Channel name from [channels.NAME].")],
) -> None:
    """Send a test message to one channel."""
    from alerts.channels import AlertView, DeliveryError, send

    install_log_filter("foundry_watch.alerts")
    config = _config(ctx)
    if channel not in config.channels:
        known = ", ".join(sorted(config.channels)) or "none configured"
        _fail(f"unknown channel {channel!r} (channels: {known})", 2)
    target = config.channels[channel]
    try:
        send(channel, target, AlertView.test_message(channel, config.alerts.dashboard_url))
    except DeliveryError as exc:
        _fail(f"test message not delivered: {exc}", 1)
    out.print(f"test message sent to {channel} ({target.describe()})")
