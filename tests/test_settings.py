"""Configuration: precedence flags > env > TOML > defaults, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.settings import DEFAULT_DATABASE_URL, ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("FOUNDRY_WATCH_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert s.database_url == DEFAULT_DATABASE_URL
    assert s.retention_days == 30
    assert s.arm_endpoint == "https://management.azure.com"
    assert s.metrics_endpoint == "https://{region}.metrics.monitor.azure.com"
    assert s.logs_endpoint == "https://api.loganalytics.io"
    assert s.scope_for(s.logs_audience) == "https://api.loganalytics.io/.default"
    assert s.subscriptions == []


def test_precedence_flag_over_env_over_file_over_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "fw.toml"
    cfg.write_text('retention_days = 45\nlog_level = "warning"\nsubscriptions = ["a", "b"]\n')
    assert load_settings(cfg).retention_days == 45
    assert load_settings(cfg).log_level == "WARNING"
    assert load_settings(cfg).subscriptions == ["a", "b"]
    monkeypatch.setenv("FOUNDRY_WATCH_RETENTION_DAYS", "60")
    monkeypatch.setenv("FOUNDRY_WATCH_SUBSCRIPTIONS", "x, y ,z")
    assert load_settings(cfg).retention_days == 60
    assert load_settings(cfg).subscriptions == ["x", "y", "z"]
    assert load_settings(cfg, retention_days=90).retention_days == 90
    monkeypatch.setenv("FOUNDRY_WATCH_CONFIG", str(cfg))
    monkeypatch.delenv("FOUNDRY_WATCH_RETENTION_DAYS")
    assert load_settings().retention_days == 45  # file found through the env var


def test_database_url_from_standard_env_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/db")
    assert load_settings().database_url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("FOUNDRY_WATCH_RETENTION_DAYS", "0", "FOUNDRY_WATCH_RETENTION_DAYS"),
        ("FOUNDRY_WATCH_RETENTION_DAYS", "thirty", "FOUNDRY_WATCH_RETENTION_DAYS"),
        ("FOUNDRY_WATCH_METRICS_ENDPOINT", "https://metrics.example", "{region}"),
        ("FOUNDRY_WATCH_LOG_LEVEL", "chatty", "FOUNDRY_WATCH_LOG_LEVEL"),
        ("FOUNDRY_WATCH_CA_BUNDLE", "/nonexistent/ca.pem", "no such file"),
        ("DATABASE_URL", "mysql://u@h/db", "unsupported database 'mysql'"),
    ],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_database_password_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "oracle://scott:tiger-secret@h/db")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "tiger-secret" not in str(info.value)
    assert "DATABASE_URL" in str(info.value)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("retention_days = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)
    typo = tmp_path / "typo.toml"
    typo.write_text("retension_days = 3")
    with pytest.raises(ConfigError, match="unknown setting 'retension_days'"):
        load_settings(typo)
