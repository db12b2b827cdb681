"""The one configuration object of foundry-watch.

Built once (by the CLI, or by a test) and passed down; no other module reads the environment.
Sources, highest precedence first: explicit overrides (CLI flags), environment variables, a TOML
file (``--config`` / ``FOUNDRY_WATCH_CONFIG``), defaults. A bad value becomes a ``ConfigError``
whose message is one line naming the setting, never a pydantic traceback, and never echoing a
secret.
"""

from __future__ import annotations

import os
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ENV_PREFIX = "FOUNDRY_WATCH_"
CONFIG_ENV = "FOUNDRY_WATCH_CONFIG"
DEFAULT_DATABASE_URL = "sqlite:///./.foundry-watch/foundry-watch.db"
#: Never echoed in an error: they hold passwords, tokens or webhook URLs with tokens.
SECRET_FIELDS = frozenset({"database_url", "budgets", "channels", "alerts"})

CommaList = Annotated[list[str], NoDecode]


class ConfigError(Exception):
    """A setting is missing or wrong; the message is one line fit for a terminal."""


def _split_commas(value: Any) -> Any:
    """Accept ``a,b`` from the environment as well as a real list from TOML or code."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything foundry-watch can be told. Field names are the TOML keys; env vars are
    ``FOUNDRY_WATCH_<NAME>`` except ``DATABASE_URL``, the name every tool expects."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        populate_by_name=True,
        frozen=True,
    )

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("DATABASE_URL", "FOUNDRY_WATCH_DATABASE_URL", "database_url"),
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db",
    )
    subscriptions: CommaList = Field(default_factory=list)
    resource_groups: CommaList = Field(default_factory=list)
    resource_names: CommaList = Field(default_factory=list)
    workspace_overrides: dict[str, str] = Field(
        default_factory=dict,
        description="Foundry resource name -> Log Analytics workspace customer id, "
        "when diagnostic settings cannot be read",
    )

    arm_endpoint: str = "https://management.azure.com"
    metrics_endpoint: str = "https://{region}.metrics.monitor.azure.com"
    logs_endpoint: str = "https://api.loganalytics.io"
    arm_audience: str = "https://management.azure.com"
    metrics_audience: str = "https://metrics.monitor.azure.com"
    logs_audience: str = "https://api.loganalytics.io"
    cognitive_audience: str = "https://cognitiveservices.azure.com"
    ca_bundle: Path | None = Field(
        None,
        description="PEM file trusted for the Azure endpoints (else REQUESTS_CA_BUNDLE / "
        "SSL_CERT_FILE, else the system store)",
    )

    retention_days: int = Field(30, ge=1, le=400)
    discovery_interval_s: int = Field(3600, ge=10)
    metrics_interval_s: int = Field(60, ge=10)
    logs_interval_s: int = Field(300, ge=10)
    costs_interval_s: int = Field(4 * 3600, ge=600)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    capture_spools: CommaList = Field(
        default_factory=list, description="client-capture JSONL spools (paths or globs)"
    )
    capture_interval_s: int = Field(60, ge=10)
    now: datetime | None = Field(
        None,
        description="pin the collector's 'now' to this ISO-8601 UTC instant (reproducible "
        "backfills and tests; never in production)",
    )

    # Budget and operational alerts (TOML tables; validated by alerts.config, see README).
    budgets: list[dict[str, Any]] = Field(default_factory=list)
    channels: dict[str, dict[str, Any]] = Field(default_factory=dict)
    alerts: dict[str, Any] = Field(default_factory=dict)

    @field_validator(
        "subscriptions", "resource_groups", "resource_names", "capture_spools", mode="before"
    )
    @classmethod
    def _comma_lists(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("now")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """A naive instant is read as UTC; an aware one is converted to UTC."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(
                "not a database URL (expected sqlite:///… or postgresql+psycopg://…)"
            ) from None
        backend = url.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database '{backend}' (use sqlite or postgresql)")
        if backend == "postgresql" and url.get_driver_name() != "psycopg":
            # psycopg 3 is the one driver installed; accept the bare scheme people paste.
            url = url.set(drivername="postgresql+psycopg")
            return url.render_as_string(hide_password=False)
        return value

    @field_validator("metrics_endpoint")
    @classmethod
    def _region_placeholder(cls, value: str) -> str:
        if "{region}" not in value:
            raise ValueError("must contain '{region}' (metrics are served per region)")
        return value.rstrip("/")

    @field_validator("arm_endpoint", "logs_endpoint")
    @classmethod
    def _https_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("ca_bundle")
    @classmethod
    def _ca_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    def scope_for(self, audience: str) -> str:
        """Azure AD scope for an audience: the resource with ``/.default``."""
        return audience.rstrip("/") + "/.default"

    def tls_verify(self) -> str | bool:
        """What the Azure clients should verify TLS against: our bundle or the defaults."""
        if self.ca_bundle:
            return str(self.ca_bundle)
        return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or True


def env_name(field: str) -> str:
    """The environment variable a user would set for ``field``."""
    return "DATABASE_URL" if field == "database_url" else ENV_PREFIX + field.upper()


def _describe(error: dict[str, Any]) -> str:
    loc = error.get("loc") or ("?",)
    field = str(loc[0])
    if field in ("DATABASE_URL", "FOUNDRY_WATCH_DATABASE_URL"):
        field = "database_url"
    message = error.get("msg", "invalid").removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        return f"unknown setting '{field}' in the config file"
    shown = "" if field in SECRET_FIELDS else f" (got {error.get('input')!r})"
    if error.get("type") == "missing":
        shown = ""
    return f"invalid setting {env_name(field)} ({field}): {message}{shown}"


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings from flags (``overrides``), env vars, the TOML file and defaults."""
    path_text = config_file or os.environ.get(CONFIG_ENV)
    path = Path(path_text) if path_text else None
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (from --config or {CONFIG_ENV})")
        try:
            tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            return tuple(sources)

    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return _Loaded(**given)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0])) from None
