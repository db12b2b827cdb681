"""`foundry-watch collect --once` and `backfill` end to end against the emulator, as a user runs
them: exit codes, the lock, and what `status` then reports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXE = shutil.which("foundry-watch", path=str(Path(sys.executable).parent))


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def user_env(emulator, tmp_path: Path) -> dict[str, str]:  # emulator: its env is applied
    env = dict(os.environ)
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'fw.db'}"
    env["FOUNDRY_WATCH_RETENTION_DAYS"] = "1"  # keep the first window small
    return env


def test_collect_once_then_status(user_env: dict[str, str]) -> None:
    assert run("db", "upgrade", env=user_env).returncode == 0
    result = run("collect", "--once", env=user_env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(run("status", "--json", env=user_env).stdout)
    jobs = {r["job"] for r in report["last_runs"]}
    assert {"discovery", "metrics", "logs", "costs", "retention"} <= jobs
    assert all(r["status"] in ("ok", "skipped") for r in report["last_runs"]), report["last_runs"]
    assert report["row_counts"]["requests"] > 0
    assert report["row_counts"]["metric_points"] > 0
    assert report["watermarks"] and all(w["lag_s"] < 3600 for w in report["watermarks"])


def test_second_collector_reports_the_holder(user_env: dict[str, str]) -> None:
    from collector.lock import CollectorLock
    from models.db import make_engine

    assert run("db", "upgrade", env=user_env).returncode == 0
    with CollectorLock(make_engine(user_env["DATABASE_URL"])):
        result = run("collect", "--once", "--source", "discovery", env=user_env)
    assert result.returncode == 1
    assert "another collector is running" in result.stderr
    assert f"pid {os.getpid()}" in result.stderr


def test_unknown_source_and_missing_subscriptions_are_usage_errors(
    user_env: dict[str, str],
) -> None:
    assert run("db", "upgrade", env=user_env).returncode == 0
    bad = run("collect", "--once", "--source", "nope", env=user_env)
    assert bad.returncode == 2 and "unknown source 'nope'" in bad.stderr
    none = run("collect", "--once", env={**user_env, "FOUNDRY_WATCH_SUBSCRIPTIONS": ""})
    assert none.returncode == 2 and "FOUNDRY_WATCH_SUBSCRIPTIONS" in none.stderr


def test_old_schema_is_refused(user_env: dict[str, str]) -> None:
    result = run("collect", "--once", env=user_env)  # never upgraded
    assert result.returncode == 1
    assert "foundry-watch db upgrade" in result.stderr
