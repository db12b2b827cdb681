"""Budgets, operational rules and channels, as written in the config file.

The TOML file (the same one ``--config`` gives the rest of foundry-watch) holds three tables::

    [alerts]                      # options, and the operational rules as [[alerts.rules]]
    [[budgets]]                   # one per budget
    [channels.NAME]               # one per channel, referred to by NAME

They reach this module either as raw values on ``Settings`` (fields ``budgets``, ``channels``
and ``alerts``, validated here rather than in ``models.settings`` so the settings stay free of
alert types) or straight from a file or dict (``load_alert_config``). A mistake becomes a
one-line ``ConfigError`` naming the setting, never echoing its value (it may be a secret).
"""

from __future__ import annotations

import re
import tomllib
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from alerts.secrets import mask_url, register_secret
from models.settings import ConfigError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|min|s)", re.IGNORECASE)
_UNITS = {"d": 86400, "h": 3600, "m": 60, "min": 60, "s": 1}
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9 _.@-]{0,99}$"  # no ":" (it separates rule keys)


def parse_duration(value: Any) -> Any:
    """``90`` (seconds), ``"10m"``, ``"1h30m"``, ``"2d"``, ``"45s"`` → ``timedelta``."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text.isdigit():
            return timedelta(seconds=int(text))
        pieces = _DURATION.findall(text)
        if pieces and "".join(n + u for n, u in pieces).lower() == text.lower():
            return timedelta(seconds=sum(float(n) * _UNITS[u.lower()] for n, u in pieces))
    raise ValueError("not a duration (use e.g. 90, '10m', '1h30m', '2d')")


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Name = Annotated[str, Field(pattern=NAME_RE)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- channels


class WebhookChannel(_Strict):
    """An HTTPS endpoint taking a JSON POST: generic JSON, Slack blocks or a Teams card."""

    type: Literal["webhook", "slack", "teams"]
    url: SecretStr
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="extra request headers (e.g. a bearer token)"
    )
    timeout_s: float = Field(10.0, gt=0, le=120)
    attempts: int = Field(3, ge=1, le=10, description="tries per check, with backoff")
    ca_file: Path | None = Field(None, description="PEM bundle to verify the endpoint against")
    allow_http: bool = Field(False, description="accept http:// (local testing only)")

    @model_validator(mode="after")
    def _https(self) -> WebhookChannel:
        url = self.url.get_secret_value()
        if not url.startswith("https://") and not (self.allow_http and url.startswith("http://")):
            raise ValueError("url must be https:// (allow_http = true only for local testing)")
        return self

    def describe(self) -> str:
        return f"{self.type} {mask_url(self.url.get_secret_value())}"

    def secrets(self) -> list[str]:
        return [self.url.get_secret_value(), *(v.get_secret_value() for v in self.headers.values())]


class EmailChannel(_Strict):
    """SMTP submission: STARTTLS (default), implicit TLS or plain, optional login."""

    type: Literal["email"]
    host: str
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    timeout_s: float = Field(20.0, gt=0, le=300)
    attempts: int = Field(3, ge=1, le=10)
    ca_file: Path | None = None

    @field_validator("to", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _no_clear_text_login(self) -> EmailChannel:
        if self.username and self.security == "none":
            raise ValueError("a login needs security = 'starttls' or 'ssl' (never in clear text)")
        return self

    def describe(self) -> str:
        auth = f", login {self.username}" if self.username else ""
        return f"email via {self.host}:{self.port} ({self.security}{auth}) to {', '.join(self.to)}"

    def secrets(self) -> list[str]:
        return [self.password.get_secret_value()] if self.password else []


Channel = Annotated[WebhookChannel | EmailChannel, Field(discriminator="type")]


# --------------------------------------------------------------------------- budgets

ScopeKind = Literal["all", "subscription", "resource_group", "resource", "deployment", "model"]
SpendBasis = Literal["billed", "billed+estimated"]


class BudgetConfig(_Strict):
    """A monthly budget. ``pattern`` is an fnmatch pattern (case-insensitive) on the scope:
    subscription id, resource group, resource name (or ARM id), deployment name (or
    ``resource/deployment``), model name."""

    name: Name
    scope: ScopeKind = "all"
    pattern: str = "*"
    amount: Decimal = Field(gt=0)
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    thresholds: list[float] = Field(default_factory=lambda: [50.0, 80.0, 100.0], min_length=1)
    forecast_thresholds: list[float] = Field(
        default_factory=lambda: [100.0],
        description="thresholds that also alert on the month-end forecast ([] = none)",
    )
    spend: SpendBasis = "billed+estimated"
    timezone: str = "UTC"
    channels: list[str] = Field(default_factory=list)
    refire_after_drop: bool = Field(
        False, description="re-alert after spend fell below a threshold and rose again"
    )
    fx_rate: Decimal | None = Field(
        None,
        gt=0,
        description="budget currency per unit of the prices table's currency (estimates only)",
    )

    @field_validator("currency", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("thresholds", "forecast_thresholds")
    @classmethod
    def _percentages(cls, value: list[float]) -> list[float]:
        if any(not 0 < v <= 1000 for v in value):
            raise ValueError("thresholds are percentages in (0, 1000]")
        return sorted(set(value))

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def scope_text(self) -> str:
        return "all deployments" if self.scope == "all" else f"{self.scope} {self.pattern}"


# --------------------------------------------------------------------------- rules

RuleKind = Literal["rate_429", "error_rate", "latency_p95", "staleness"]
StatusClass = Literal["2xx", "4xx", "429", "5xx", "other"]
RULE_LABELS = {
    "rate_429": "429 rate",
    "error_rate": "error rate",
    "latency_p95": "p95 latency",
    "staleness": "data staleness",
}


class RuleConfig(_Strict):
    """One operational rule, evaluated per deployment (per source and scope for staleness)."""

    name: Name
    kind: RuleKind
    deployments: str = Field("*", description="fnmatch on deployment or resource/deployment")
    threshold: float | None = Field(None, gt=0, description="% for rates, ms for latency")
    window: Duration = timedelta(minutes=10)
    delay: Duration = Field(
        timedelta(minutes=2), description="the window ends this long before now (ingestion lag)"
    )
    min_requests: int = Field(20, ge=1)
    cooldown: Duration = timedelta(minutes=30)
    status_classes: list[StatusClass] | None = Field(
        None, description="error_rate: default ['5xx']; latency_p95: default ['2xx']"
    )
    source: str = Field("*", description="staleness: watermark source (metrics, logs, costs…)")
    max_lag: Duration | None = None
    channels: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _per_kind(self) -> RuleConfig:
        if self.kind == "staleness":
            if self.max_lag is None:
                raise ValueError("a staleness rule needs max_lag (e.g. '20m')")
        elif self.threshold is None:
            unit = "ms" if self.kind == "latency_p95" else "%"
            raise ValueError(f"a {self.kind} rule needs threshold (in {unit})")
        if self.window <= timedelta(0):
            raise ValueError("window must be positive")
        return self

    @property
    def classes(self) -> list[str]:
        if self.status_classes:
            return list(self.status_classes)
        return ["2xx"] if self.kind == "latency_p95" else ["5xx"]

    def threshold_text(self) -> str:
        if self.kind == "staleness":
            assert self.max_lag is not None
            return format_duration(self.max_lag)
        if self.kind == "latency_p95":
            return f"{self.threshold:g} ms"
        return f"{self.threshold:g} %"


# --------------------------------------------------------------------------- the whole


class AlertOptions(_Strict):
    """The ``[alerts]`` table."""

    dashboard_url: str = Field("", description="base URL of the dashboard, for links")
    interval: Duration = Field(timedelta(minutes=5), description="how often the job checks")
    sending_timeout: Duration = Field(
        timedelta(minutes=10),
        description="a delivery still 'sending' after this was interrupted (crash)",
    )
    resend_interrupted: bool = Field(
        True,
        description="re-send an interrupted delivery (at-least-once) or give it up (at-most-once)",
    )
    max_attempts: int = Field(12, ge=1, description="checks a failing delivery is retried on")
    default_channels: list[str] = Field(default_factory=list)
    rules: list[RuleConfig] = Field(default_factory=list)

    @field_validator("dashboard_url")
    @classmethod
    def _base(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


class AlertConfig(_Strict):
    budgets: list[BudgetConfig] = Field(default_factory=list)
    channels: dict[str, Channel] = Field(default_factory=dict)
    alerts: AlertOptions = Field(default_factory=AlertOptions)

    @model_validator(mode="after")
    def _references(self) -> AlertConfig:
        for kind, items in (("budget", self.budgets), ("rule", self.alerts.rules)):
            names = [i.name for i in items]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"two {kind}s named {sorted(dup)[0]!r}")
            for item in items:
                for channel in item.channels:
                    if channel not in self.channels:
                        raise ValueError(f"{kind} {item.name!r} names unknown channel {channel!r}")
        for channel in self.alerts.default_channels:
            if channel not in self.channels:
                raise ValueError(f"default_channels names unknown channel {channel!r}")
        return self

    def channels_for(self, item: BudgetConfig | RuleConfig) -> list[str]:
        return list(item.channels or self.alerts.default_channels)

    def register_secrets(self) -> None:
        for channel in self.channels.values():
            register_secret(*channel.secrets())


_ADAPTER = TypeAdapter(AlertConfig)


def _where(error: dict[str, Any]) -> str:
    parts: list[str] = []
    for piece in error.get("loc", ()):
        if isinstance(piece, int):
            parts[-1:] = [f"{parts[-1]}[{piece}]" if parts else f"[{piece}]"]
        elif piece in ("WebhookChannel", "EmailChannel", "webhook", "slack", "teams", "email"):
            continue  # the discriminated union's branch name: noise for a user
        else:
            parts.append(str(piece))
    return ".".join(parts) or "alert config"


def _one_line(exc: ValidationError) -> str:
    error = exc.errors(include_input=False, include_url=False)[0]
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        message = "unknown setting"
    return f"invalid alert setting {_where(error)}: {message}"


def load_alert_config(source: Path | str | dict[str, Any] | Any | None) -> AlertConfig:
    """The alert config from a TOML file path, a dict (a parsed file) or a ``Settings``.

    Keys of the file other than ``budgets``, ``channels`` and ``alerts`` are ignored here
    (they belong to the rest of the settings). Secrets are registered for scrubbing.
    """
    if source is None:
        raw: dict[str, Any] = {}
    elif isinstance(source, str | Path):
        path = Path(source)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    elif isinstance(source, dict):
        raw = source
    else:  # a Settings object (with or without the alert fields yet)
        raw = {key: getattr(source, key, None) for key in ("budgets", "channels", "alerts")}
    wanted = {k: raw[k] for k in ("budgets", "channels", "alerts") if raw.get(k) is not None}
    try:
        config = _ADAPTER.validate_python(wanted)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    config.register_secrets()
    return config


def check_interval_s(settings: Any) -> int:
    """Seconds between scheduled checks (``[alerts] interval``, default 5 min)."""
    return max(30, int(load_alert_config(settings).alerts.interval.total_seconds()))
