"""The ``foundry-watch`` command line.

The global callback builds the settings once and hands them to every command through the Typer
context. Expected failures (bad config, unreachable database, old schema) end in one line on
stderr and a documented exit code, never a traceback: 0 ok, 1 failure, 2 usage or configuration.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from alerts.cli import alerts_app
from collector.jobs import SOURCES
from collector.jobs.base import JobContext, ScopeOutcome
from collector.lock import CollectorLock, LockHeld
from collector.request_cmd import request
from collector.service import StopRequest, run_cycle, serve, stop_on_signals, summarize
from collector.service import backfill as run_backfill
from collector.status import StoreStatus, read_status
from models.db import DatabaseUnavailable, check_connection, make_engine, safe_url
from models.migrations import SchemaOutOfDate, ensure_current, upgrade
from models.settings import ConfigError, Settings, load_settings

app = typer.Typer(
    name="foundry-watch",
    help="Watch latency, errors, 429s and spend of Claude deployments on Microsoft Foundry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(alerts_app, name="alerts")
app.command("request")(request)

out = Console()


def _version(value: bool) -> None:
    if value:
        out.print(f"foundry-watch {package_version('foundry-watch')}")
        raise typer.Exit()


@app.callback()
def configure(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML config file (else $FOUNDRY_WATCH_CONFIG)."),
    ] = None,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="Overrides $DATABASE_URL.")
    ] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="DEBUG|INFO|…")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Full error detail.")] = False,
    _show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
) -> None:
    """Build the settings once; every command reads them from the context."""
    settings = load_settings(config, database_url=database_url, log_level=log_level)
    logging.basicConfig(
        level=logging.DEBUG if verbose else settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not verbose:
        # Alembic narrates every connection and the Azure SDKs every HTTP call at INFO; the
        # commands report what happened themselves (progress bars, tables, one-line errors).
        for noisy in ("alembic", "azure", "httpx", "uvicorn"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    ctx.obj = settings


def _settings(ctx: typer.Context) -> Settings:
    return ctx.find_root().obj


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create or migrate the schema to the version this code needs."""
    settings = _settings(ctx)
    engine = make_engine(settings.database_url)
    check_connection(engine)
    before, after = upgrade(engine)
    where = safe_url(settings.database_url)
    if before == after:
        out.print(f"schema already at {after} in {where}")
    else:
        out.print(f"schema upgraded {before or '(empty)'} -> {after} in {where}")


@db_app.command("grant-readonly")
def db_grant_readonly(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(help="PostgreSQL role the dashboard connects as.")],
    password_env: Annotated[
        str | None,
        typer.Option(
            "--password-env",
            help="Name of an environment variable holding the role's password "
            "(never a command-line argument: it would show in ps and shell history).",
        ),
    ] = None,
) -> None:
    """Create (if missing) a login role that can only read the store: the dashboard's."""
    from dashboard.readonly import grant_readonly

    settings = _settings(ctx)
    password = None
    if password_env is not None:
        password = os.environ.get(password_env)
        if not password:
            _fail(f"--password-env {password_env}: that environment variable is not set", 2)
    engine = make_engine(settings.database_url)
    check_connection(engine)
    try:
        done = grant_readonly(engine, role, password)
    except ValueError as exc:
        _fail(str(exc), 2)
    for statement in done:
        out.print(statement, markup=False, highlight=False)
    out.print(
        f"role {role} can read {safe_url(settings.database_url)}; point the dashboard's "
        "DATABASE_URL at it",
        markup=False,
    )


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Schema version, row counts and the last collector run per source."""
    settings = _settings(ctx)
    report = read_status(make_engine(settings.database_url))
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
        return
    _print_status(report)


def _print_status(report: StoreStatus) -> None:
    out.print(f"database: {report.database}")
    schema = report.schema_revision or "(none)"
    note = "" if report.schema_current else f"  [yellow]code needs {report.schema_head}[/]"
    out.print(f"schema:   {schema}{note}")
    counts = Table("table", "rows", title="Store")
    for name, count in report.row_counts.items():
        counts.add_row(name, f"{count:,}")
    out.print(counts)
    runs = Table("source", "scope", "status", "finished", "rows", "error", title="Last runs")
    for run in report.last_runs:
        runs.add_row(
            run["job"],
            run["scope"],
            run["status"],
            run["finished_at"] or "-",
            str(run["rows"]),
            escape(run["error"]),
        )
    if not report.last_runs:
        runs.add_row("-", "-", "no collector runs yet", "-", "-", "-")
    out.print(runs)
    if report.watermarks:
        lag = Table("source", "scope", "collected up to", "behind now", title="Watermarks")
        for w in report.watermarks:
            lag.add_row(w["source"], w["scope"], w["high_water"], _duration(w["lag_s"]))
        out.print(lag)


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


@app.command()
def demo(
    ctx: typer.Context,
    days: Annotated[int, typer.Option(help="Days to backfill.")] = 30,
    emulator_port: Annotated[int, typer.Option(help="Emulator HTTPS port (0 = any).")] = 0,
    dashboard_port: Annotated[int, typer.Option(help="Dashboard port.")] = 8501,
    keep_running: Annotated[
        bool,
        typer.Option(help="After the backfill, serve the dashboard and keep collecting."),
    ] = True,
) -> None:
    """The embedded default end to end: emulator, SQLite store, 30-day backfill, dashboard,
    and continuous collection until Ctrl-C."""
    import os
    import subprocess

    from emulator.server import EmulatorServer

    settings = _settings(ctx)
    engine = make_engine(settings.database_url)
    check_connection(engine)
    before, after = upgrade(engine)
    schema = f"schema {before or '(empty)'} -> {after}"
    out.print(f"[bold]store[/]: {safe_url(settings.database_url)} ({schema})")
    server = EmulatorServer(seed=42, port=emulator_port, data_dir=Path(".foundry-watch/emulator"))
    server.start()
    out.print(f"[bold]emulator[/]: {server.base_url} (CA {server.ca_file})")
    env = server.env()
    # DefaultAzureCredential finds the emulator's managed-identity endpoint in the environment.
    os.environ.update(env)
    settings = settings.model_copy(
        update={
            "subscriptions": env["FOUNDRY_WATCH_SUBSCRIPTIONS"].split(","),
            "arm_endpoint": env["FOUNDRY_WATCH_ARM_ENDPOINT"],
            "metrics_endpoint": env["FOUNDRY_WATCH_METRICS_ENDPOINT"],
            "logs_endpoint": env["FOUNDRY_WATCH_LOGS_ENDPOINT"],
            "arm_audience": env["FOUNDRY_WATCH_ARM_AUDIENCE"],
            "metrics_audience": env["FOUNDRY_WATCH_METRICS_AUDIENCE"],
            "logs_audience": env["FOUNDRY_WATCH_LOGS_AUDIENCE"],
            "ca_bundle": Path(server.ca_file),
        }
    )
    dashboard_proc = None
    try:
        job_ctx = _job_context(settings)
        with CollectorLock(job_ctx.engine):
            out.print(f"[bold]backfill[/]: {days} days from the emulator")
            with stop_on_signals(job_ctx) as stop:
                outcomes = _backfill_with_progress(job_ctx, days)
            if stop.signum:  # Ctrl-C during the backfill: the finished chunks are kept
                _stopped(stop)
            if any(o.status == "failed" for o in outcomes):
                raise typer.Exit(1)
            if not keep_running:
                return
            dashboard_proc = subprocess.Popen(
                [sys.executable, "-m", "collector.cli", "dashboard", "--port", str(dashboard_port)],
                env={**os.environ, "DATABASE_URL": settings.database_url},
            )
            out.print(f"[bold]dashboard[/]: http://localhost:{dashboard_port}  (Ctrl-C stops)")
            serve(job_ctx)
    finally:
        try:
            if dashboard_proc is not None:
                dashboard_proc.terminate()
                try:
                    dashboard_proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    dashboard_proc.kill()
        finally:
            server.stop()


def _job_context(settings: Settings) -> JobContext:
    """A migrated, current store and a credential: what every collecting command needs."""
    from collector.azure import make_credential

    if not settings.subscriptions:
        raise ConfigError(
            "invalid setting FOUNDRY_WATCH_SUBSCRIPTIONS (subscriptions): "
            "no subscription to watch; give a comma list of subscription ids"
        )
    engine = make_engine(settings.database_url)
    check_connection(engine)
    ensure_current(engine)
    return JobContext(settings=settings, engine=engine, credential=make_credential(settings))


def _print_outcomes(outcomes: list[ScopeOutcome]) -> None:
    table = Table("source", "scope", "status", "rows", "API calls", "error", title="Collection")
    for o in outcomes:
        colour = {"ok": "green", "partial": "yellow", "skipped": "dim"}.get(o.status, "red")
        table.add_row(
            o.job, o.scope, f"[{colour}]{o.status}[/]", f"{o.rows:,}", str(o.api_calls), o.error
        )
    out.print(table)


_COLOURS = {"ok": "green", "partial": "yellow", "stopped": "yellow", "skipped": "dim"}


def _print_summary(outcomes: list[ScopeOutcome], timings: dict[str, float]) -> None:
    """The backfill's closing table: one row per source, however many chunks it took."""
    table = Table(
        "source",
        "scopes",
        "status",
        "rows",
        "API calls",
        "duration",
        "failures",
        "error",
        title="Collection",
    )
    for s in summarize(outcomes, timings):
        colour = _COLOURS.get(s.status, "red")
        table.add_row(
            s.source,
            str(s.scopes),
            f"[{colour}]{s.status}[/]",
            f"{s.rows:,}",
            f"{s.api_calls:,}",
            _duration(round(s.seconds)),
            str(s.failures),
            escape(s.error),
        )
    out.print(table)


def _stopped(request: StopRequest) -> None:
    """After a SIGTERM/SIGINT stop: say what is kept, exit 128 + the signal's number."""
    sys.stderr.write(
        f"foundry-watch: stopped by {request.name}; every finished chunk is stored, "
        "run the same command again to continue from the watermarks\n"
    )
    raise typer.Exit(request.exit_code)


@app.command()
def collect(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Run one cycle and exit.")] = False,
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source", "-s", help=f"Only this source ({', '.join(SOURCES)}); repeatable."
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for another collector's lock instead of exiting.")
    ] = False,
) -> None:
    """Collect on a schedule (APScheduler), or one cycle with --once."""
    settings = _settings(ctx)
    unknown = [s for s in source or [] if s not in SOURCES]
    if unknown:
        raise typer.BadParameter(f"unknown source {unknown[0]!r}; choose from {', '.join(SOURCES)}")
    job_ctx = _job_context(settings)
    with CollectorLock(job_ctx.engine, wait=wait):
        if once:
            with stop_on_signals(job_ctx) as stop:
                outcomes = run_cycle(job_ctx, source or None)
            _print_outcomes(outcomes)
            if stop.signum:
                _stopped(stop)
            if any(o.status == "failed" for o in outcomes):
                raise typer.Exit(1)
            return
        serve(job_ctx, sources=source or None)


def _backfill_with_progress(job_ctx: JobContext, days: int) -> list[ScopeOutcome]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(source: str, done: int, total: int) -> None:
            if source not in tasks:
                tasks[source] = bar.add_task(source, total=total)
            bar.update(tasks[source], completed=done, total=total)

        timings: dict[str, float] = {}
        outcomes = run_backfill(job_ctx, days, progress, timings)
    _print_summary(outcomes, timings)
    return outcomes


@app.command()
def backfill(
    ctx: typer.Context,
    days: Annotated[int, typer.Option("--days", min=1, max=400, help="How far back.")] = 30,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the collector lock.")] = False,
) -> None:
    """Fill the last N days; interrupted and re-run, it continues from the watermarks."""
    job_ctx = _job_context(_settings(ctx))
    with CollectorLock(job_ctx.engine, wait=wait), stop_on_signals(job_ctx) as stop:
        outcomes = _backfill_with_progress(job_ctx, days)
    if stop.signum:
        _stopped(stop)
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check credentials, roles and diagnostic settings for every configured scope."""
    from collector.doctor import run_doctor

    checks = run_doctor(_job_context(_settings(ctx)))
    table = Table("check", "scope", "result", "detail", title="foundry-watch doctor")
    for check in checks:
        table.add_row(
            check.name, check.scope, "[green]ok[/]" if check.ok else "[red]missing[/]", check.detail
        )
    out.print(table)
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


@app.command()
def emulator(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTPS port (0 = any free port).")] = 8443,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic world.")] = 42,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Where the CA and certificate are written.")
    ] = Path(".foundry-watch/emulator"),
) -> None:
    """Serve the local HTTPS stand-in for Azure (ARM, metrics, logs, costs, Foundry)."""
    from emulator.server import serve as serve_emulator

    serve_emulator(host=host, port=port, seed=seed, data_dir=data_dir)


DASHBOARD_APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"


def streamlit_command(host: str, port: int) -> list[str]:
    """``streamlit run`` of the dashboard on ``host:port``, headless, no usage statistics (the
    browser tests start the dashboard with the same command)."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(DASHBOARD_APP),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]


@app.command()
def dashboard(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Interface to bind (localhost by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8501,
) -> None:
    """Serve the Streamlit dashboard (reads the store only)."""
    import os

    settings = _settings(ctx)
    engine = make_engine(settings.database_url)
    check_connection(engine)
    ensure_current(engine)
    env = {**os.environ, "DATABASE_URL": settings.database_url}
    # With Entra sign-in, Streamlit keeps the token claims in cookies; a user in ~55+ groups
    # passes the websocket library's 8 KB header-line default and gets a blank page.
    env.setdefault("WEBSOCKETS_MAX_LINE_LENGTH", "16384")
    command = streamlit_command(host, port)
    # Replace this process, so stopping `foundry-watch dashboard` stops Streamlit itself.
    os.execve(sys.executable, command, env)


def main() -> None:
    """Console-script entry point: run the app, turning expected failures into one line."""
    try:
        app()
    except ConfigError as exc:
        _fail(f"configuration error: {exc}", 2)
    except (DatabaseUnavailable, SchemaOutOfDate, LockHeld) as exc:
        _fail(str(exc), 1)


def _fail(message: str, code: int) -> None:
    # Plain write, not rich: a terminal-width wrap would break the one-line contract.
    sys.stderr.write(f"foundry-watch: {message}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
