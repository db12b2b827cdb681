"""``alerts list|check|test`` through Typer, mounted the way ``collector.cli`` will mount it,
with the config read from a TOML file through the proposed Settings fields; and the job's
``run(ctx)``."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner

from alerts.cli import alerts_app
from alerts.config import load_alert_config
from alerts.job import run
from collector.jobs.base import JobContext
from models.tables import AlertDelivery, CollectorRun
from tests.alerts.conftest import (
    HEADER_SECRET,
    HOOK,
    SLACK,
    SMTP_PASSWORD,
    TEAMS,
    Mailbox,
    Receiver,
    Store,
    assert_no_secret,
    load_proposed,
)


def write_config(tmp_path: Path, store: Store, receiver: Receiver, smtp: Mailbox) -> Path:
    """The README example, pointed at the local receivers."""
    ca = receiver.ca_file
    text = f'''
database_url = "{store.url()}"

[alerts]
dashboard_url = "https://foundry-watch.example.com"
interval = "5m"
default_channels = ["oncall"]

[[alerts.rules]]
name = "throttling"
kind = "rate_429"
deployments = "*"
threshold = 5
window = "10m"
min_requests = 50
cooldown = "30m"

[[alerts.rules]]
name = "collector-behind"
kind = "staleness"
source = "metrics"
max_lag = "20m"

[[budgets]]
name = "claude-total"
amount = 1000
currency = "USD"
thresholds = [50, 80, 100]
spend = "billed"
timezone = "Europe/Berlin"
channels = ["finops-mail", "finops-teams"]

[[budgets]]
name = "prod"
scope = "deployment"
pattern = "prod-*"
amount = 400

[channels.oncall]
type = "slack"
url = "{receiver.url(SLACK)}"
ca_file = "{ca}"

[channels.finops-teams]
type = "teams"
url = "{receiver.url(TEAMS)}"
ca_file = "{ca}"

[channels.audit]
type = "webhook"
url = "{receiver.url(HOOK)}"
headers = {{ Authorization = "{HEADER_SECRET}" }}
ca_file = "{ca}"

[channels.finops-mail]
type = "email"
host = "{smtp.host}"
port = {smtp.port}
username = "alerts@example.com"
password = "{SMTP_PASSWORD}"
from = "foundry-watch <alerts@example.com>"
to = ["finops@example.com"]
ca_file = "{ca}"
'''
    path = tmp_path / "foundry-watch.toml"
    path.write_text(text)
    return path


def cli_app() -> typer.Typer:
    """The root app as ``collector.cli`` builds it, plus the one mounting line."""
    app = typer.Typer()

    @app.callback()
    def root(ctx: typer.Context, config: Annotated[Path, typer.Option("--config")]) -> None:
        ctx.obj = load_proposed(config)

    app.add_typer(alerts_app, name="alerts")
    return app


@pytest.fixture
def cli(tmp_path: Path, store: Store, receiver: Receiver, smtp: Mailbox):
    path = write_config(tmp_path, store, receiver, smtp)
    runner = CliRunner()
    app = cli_app()

    def invoke(*args: str):
        return runner.invoke(app, ["--config", str(path), *args], env={"COLUMNS": "250"})

    return invoke


def test_list_masks_secrets(cli) -> None:
    result = cli("alerts", "list")
    assert result.exit_code == 0, result.output
    assert "claude-total" in result.output and "Europe/Berlin" in result.output
    assert "https://127.0.0.1:" in result.output and "/****" in result.output
    assert_no_secret(result.output)
    data = json.loads(cli("alerts", "list", "--json").output)
    assert [b["name"] for b in data["budgets"]] == ["claude-total", "prod"]
    assert data["budgets"][1]["channels"] == ["oncall"]  # the default channel
    assert data["budgets"][1]["spend"] == "billed+estimated"
    assert data["channels"]["finops-mail"].startswith("email via 127.0.0.1:")
    assert [r["name"] for r in data["rules"]] == ["throttling", "collector-behind"]
    assert_no_secret(json.dumps(data))


def test_test_command_sends_to_each_channel(cli, receiver: Receiver, smtp: Mailbox) -> None:
    for name in ("oncall", "finops-teams", "audit", "finops-mail"):
        result = cli("alerts", "test", name)
        assert result.exit_code == 0, result.output
        assert f"test message sent to {name}" in result.output
        assert_no_secret(result.output)
    assert receiver.to(HOOK)[0].body["test"] is True
    assert "test of the alert channel 'oncall'" in receiver.to(SLACK)[0].body["text"]
    assert receiver.to(TEAMS)[0].body["attachments"][0]["content"]["type"] == "AdaptiveCard"
    assert smtp.messages[0]["Subject"] == "[foundry-watch] ✓ foundry-watch test message"
    unknown = cli("alerts", "test", "nope")
    assert unknown.exit_code == 2 and "unknown channel 'nope'" in unknown.output


def test_test_command_failure_is_one_scrubbed_line(cli, receiver: Receiver) -> None:
    receiver.fail[HOOK] = [403]
    result = cli("alerts", "test", "audit")
    assert result.exit_code == 1
    assert "test message not delivered: audit: HTTP 403" in result.output
    assert_no_secret(result.output)


def test_check_command(cli, store: Store, receiver: Receiver, smtp: Mailbox) -> None:
    for day in range(1, 20):
        store.add_bill(date(2025, 11, day), "claude-sonnet-4-5", "30")
    result = cli("alerts", "check", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    budgets = {b["budget"]: b for b in report["budgets"]}
    assert budgets["claude-total"]["currency"] == "USD"
    # whatever today is, the November bills are history here; the check must just work
    assert set(budgets) == {"claude-total", "prod"}
    assert report["errors"] == {}
    again = cli("alerts", "check")
    assert again.exit_code == 0, again.output
    assert_no_secret(result.output, again.output)


def test_bad_config_is_exit_2_without_the_secret(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[channels.x]\ntype = "slack"\nurl = "http://hooks.example.com/services/slackTOKEN987654"\n'
    )
    result = CliRunner().invoke(cli_app(), ["--config", str(path), "alerts", "list"])
    assert result.exit_code == 2
    assert "invalid alert setting channels.x: url must be https://" in result.output
    assert_no_secret(result.output)


def test_job_run_from_settings(tmp_path: Path, store: Store, receiver: Receiver, smtp) -> None:
    path = write_config(tmp_path, store, receiver, smtp)
    settings = load_proposed(path)
    now = datetime.now(UTC)
    # spend of this month in Berlin: 60 % of the total budget
    store.add_bill(now.date() - timedelta(days=0), "claude-sonnet-4-5", "600")
    ctx = JobContext(settings=settings, engine=store.engine, credential=None, clock=lambda: now)
    outcomes = run(ctx)
    assert [(o.job, o.scope, o.status) for o in outcomes] == [
        ("alerts", "budgets", "ok"),
        ("alerts", "rules", "ok"),
        ("alerts", "delivery", "ok"),
    ]
    with store.engine.connect() as conn:
        runs = conn.execute(select(CollectorRun.job, CollectorRun.scope, CollectorRun.status)).all()
        sent = conn.execute(select(AlertDelivery.channel, AlertDelivery.status)).all()
    assert {tuple(r) for r in runs} >= {("alerts", "budgets", "ok"), ("alerts", "delivery", "ok")}
    if now.astimezone(load_alert_config(settings).budgets[0].zone).month == now.month:
        assert ("finops-mail", "sent") in {tuple(r) for r in sent}
        assert len(smtp.messages) == 1


def test_runs_as_a_scheduler_source(
    tmp_path: Path, store: Store, receiver: Receiver, smtp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the one-line registration in ``collector.jobs.SOURCES``, ``run_cycle`` runs it."""
    from collector import jobs
    from collector.service import run_cycle

    monkeypatch.setitem(jobs.SOURCES, "alerts", "alerts.job")
    settings = load_proposed(write_config(tmp_path, store, receiver, smtp))
    ctx = JobContext(settings=settings, engine=store.engine, credential=None)
    outcomes = run_cycle(ctx, ["alerts"])
    assert [o.scope for o in outcomes] == ["budgets", "rules", "delivery"]
    assert all(o.status == "ok" for o in outcomes), outcomes
