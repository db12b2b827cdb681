"""The installed ``foundry-watch`` command, run as a user runs it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.migrations import head_revision

EXE = shutil.which("foundry-watch", path=str(Path(sys.executable).parent))


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_WATCH_")}
    base.pop("DATABASE_URL", None)
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, env={**base, **(env or {})}, cwd=cwd
    )


def test_help_and_version() -> None:
    assert EXE, "console script not installed"
    result = run("--help")
    assert result.returncode == 0
    for command in ("db", "status", "demo"):
        assert command in result.stdout
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("foundry-watch 0.")


def test_upgrade_then_status_json(db_url: str) -> None:
    env = {"DATABASE_URL": db_url}
    first = run("db", "upgrade", env=env)
    assert first.returncode == 0, first.stderr
    assert f"-> {head_revision()}" in first.stdout
    again = run("db", "upgrade", env=env)
    assert f"already at {head_revision()}" in again.stdout
    status = run("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["schema_current"] is True
    assert report["row_counts"]["prices"] == 4
    assert report["row_counts"]["requests"] == 0
    assert report["last_runs"] == []


def test_demo_sets_up_the_store_and_collects_from_the_emulator(tmp_path: Path) -> None:
    result = run("demo", "--days", "1", "--no-keep-running", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    store = tmp_path / ".foundry-watch" / "foundry-watch.db"
    assert store.is_file()
    assert "emulator" in result.stdout and "backfill" in result.stdout
    report = json.loads(run("status", "--json", env={"DATABASE_URL": f"sqlite:///{store}"}).stdout)
    assert report["row_counts"]["resources"] == 4
    assert report["row_counts"]["requests"] > 0
    assert report["row_counts"]["metric_points"] > 0
    assert all(r["status"] in ("ok", "skipped") for r in report["last_runs"]), report["last_runs"]


@pytest.mark.timeout(300)
def test_demo_stops_between_backfill_chunks_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM during the demo's backfill: the chunk in flight commits, the demo exits 143
    saying so with no run left 'running', and the same command continues from the
    watermarks to a complete backfill."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_WATCH_")}
    base.pop("DATABASE_URL", None)
    store = tmp_path / ".foundry-watch" / "foundry-watch.db"

    def ok_metrics_runs() -> int:
        if not store.is_file():
            return 0
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
            try:
                query = "select count(*) from collector_runs where job='metrics' and status='ok'"
                return db.execute(query).fetchone()[0]
            except sqlite3.OperationalError:  # not migrated yet, or locked for a moment
                return 0

    args = [EXE, "demo", "--days", "3", "--no-keep-running"]
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while ok_metrics_runs() == 0:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the backfill never finished a metrics chunk"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stdout + stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr, stderr
    with contextlib.closing(sqlite3.connect(store)) as db:
        states = dict(db.execute("select status, count(*) from collector_runs group by status"))
        jobs = {job for (job,) in db.execute("select distinct job from collector_runs")}
        kept = db.execute("select count(*) from metric_points").fetchone()[0]
    assert "running" not in states and kept > 0, states
    assert jobs <= {"discovery", "metrics"}, jobs  # no other source started after the stop

    again = run("demo", "--days", "3", "--no-keep-running", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    report = json.loads(run("status", "--json", env={"DATABASE_URL": f"sqlite:///{store}"}).stdout)
    assert report["row_counts"]["requests"] > 0
    assert all(r["status"] in ("ok", "skipped") for r in report["last_runs"]), report["last_runs"]


def test_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    result = run("status", env={"FOUNDRY_WATCH_RETENTION_DAYS": "-1"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "FOUNDRY_WATCH_RETENTION_DAYS" in lines[0]
    missing = run("--config", str(tmp_path / "nope.toml"), "status")
    assert missing.returncode == 2 and "config file not found" in missing.stderr


def test_dead_database_is_one_line_without_password() -> None:
    url = "postgresql+psycopg://fw:hunter2-secret@127.0.0.1:1/x"
    result = run("status", env={"DATABASE_URL": url})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout
    assert "cannot open the database" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_command_is_usage_error() -> None:
    result = run("frobnicate")
    assert result.returncode == 2


@pytest.mark.parametrize("args", [("status",), ("db", "upgrade")])
def test_sqlite_in_unwritable_place_is_clear(args: tuple[str, ...], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run(*args, env={"DATABASE_URL": f"sqlite:///{blocker}/sub/x.db"})
    assert result.returncode in (1, 2)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip()
