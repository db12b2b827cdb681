"""Alert test fixtures: a real HTTPS receiver, a real SMTP server (STARTTLS + login), store
seeding through ``models.db.upsert``, and the Settings fields proposed to the lead."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import Field
from sqlalchemy import Engine, select

from alerts import channels as channels_module
from emulator.tls import CertFiles, ensure_certs
from models.db import upsert
from models.prices import list_prices
from models.settings import Settings
from models.tables import Cost, Deployment, MetricPoint, Price, Resource

SUB = "00000000-0000-0000-0000-0000000a1e27"
RG = "rg-claude"
SMTP_USER = "alerts@example.com"
SMTP_PASSWORD = "smtp-pass-S3CRET-value"


class ProposedSettings(Settings):
    """``Settings`` plus the three raw fields this package asks the lead to add."""

    budgets: list[dict[str, Any]] = Field(default_factory=list)
    channels: dict[str, dict[str, Any]] = Field(default_factory=dict)
    alerts: dict[str, Any] = Field(default_factory=dict)


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channels_module, "BACKOFF_S", 0.01)
    monkeypatch.setattr(channels_module, "BACKOFF_MAX_S", 0.05)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return ensure_certs(tmp_path_factory.mktemp("alert-tls"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- HTTPS receiver


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Receiver:
    """A real HTTPS server that records every POST; ``fail[path]`` = statuses to answer
    first (then 200)."""

    base: str
    ca_file: Path
    requests: list[Received] = field(default_factory=list)
    hits: list[tuple[str, int]] = field(default_factory=list)
    fail: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def to(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]


@pytest.fixture
def receiver(certs: CertFiles) -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec = state["r"]
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with rec.lock:
                queue = rec.fail.get(self.path, [])
                status = queue.pop(0) if queue else 200
                rec.hits.append((self.path, status))
                if status < 300:
                    rec.requests.append(
                        Received(self.path, dict(self.headers.items()), json.loads(raw))
                    )
            # a failing server that echoes the request path (and so the token) back
            body = b"ok" if status < 300 else f"error for {self.path}".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert_file, certs.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state["r"] = Receiver(f"https://127.0.0.1:{server.server_address[1]}", certs.ca_file)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state["r"]
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------- SMTP server


@dataclass
class Mailbox:
    host: str
    port: int
    ca_file: Path
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[dict[str, Any]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)

    def channel(self, **extra: Any) -> dict[str, Any]:
        return {
            "type": "email",
            "host": self.host,
            "port": self.port,
            "security": "starttls",
            "username": SMTP_USER,
            "password": SMTP_PASSWORD,
            "from": "foundry-watch <alerts@example.com>",
            "to": ["finops@example.com", "lead@example.com"],
            "ca_file": str(self.ca_file),
            "timeout_s": 5,
            **extra,
        }


@pytest.fixture
def smtp(certs: CertFiles) -> Iterator[Mailbox]:
    box = Mailbox("127.0.0.1", _free_port(), certs.ca_file)

    class Handler:
        async def handle_DATA(self, server, session, envelope) -> str:
            box.messages.append(message_from_bytes(envelope.content, policy=policy.default))
            box.envelopes.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos)})
            box.tls.append(session.ssl is not None)
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode() == SMTP_USER and auth_data.password.decode() == SMTP_PASSWORD
        )
        if ok:
            box.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert_file, certs.key_file)
    controller = Controller(
        Handler(),
        hostname=box.host,
        port=box.port,
        loop=asyncio.new_event_loop(),
        tls_context=context,
        require_starttls=True,
        authenticator=authenticator,
        auth_require_tls=True,
        auth_required=True,
    )
    controller.start()
    yield box
    controller.stop()


# --------------------------------------------------------------------------- store seeding


@dataclass
class Store:
    """A small world: one subscription, one resource group, two resources, deployments."""

    engine: Engine
    deployments: dict[str, int] = field(default_factory=dict)

    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=False)

    def add_bill(
        self, day: date, model: str, amount: str | Decimal, currency: str = "USD", rg: str = RG
    ) -> None:
        """One day's Marketplace cost of a model in a resource group (replaces that day's)."""
        with self.engine.begin() as conn:
            upsert(
                conn,
                Cost,
                [
                    {
                        "scope": f"/subscriptions/{SUB}",
                        "cost_type": "ActualCost",
                        "day": day,
                        "resource_group": rg,
                        "resource_arm_id": "",
                        "meter": f"{model} tokens",
                        "meter_category": "SaaS",
                        "service_name": "SaaS",
                        "publisher_type": "Marketplace",
                        "charge_type": "Usage",
                        "model_name": model,
                        "cost": Decimal(amount),
                        "currency": currency,
                        "fetched_at": datetime.now(UTC),
                    }
                ],
            )

    def add_metric(
        self,
        deployment: str,
        minute: datetime,
        metric: str,
        total: float,
        status: str = "",
    ) -> None:
        self.add_metrics([(deployment, minute, metric, total, status)])

    def add_metrics(self, rows: list[tuple[str, datetime, str, float, str]]) -> None:
        with self.engine.begin() as conn:
            upsert(
                conn,
                MetricPoint,
                [
                    {
                        "deployment_id": self.deployments[dep],
                        "minute": minute,
                        "metric": metric,
                        "status_code": status,
                        "total": float(total),
                        "count": 1.0,
                    }
                    for dep, minute, metric, total, status in rows
                ],
            )

    def add_requests(
        self, deployment: str, start: datetime, minutes: int, per_minute: dict[str, int]
    ) -> None:
        """``ModelRequests`` per status code for ``minutes`` minutes from ``start``."""
        rows = [
            (deployment, start + timedelta(minutes=i), "ModelRequests", n, code)
            for i in range(minutes)
            for code, n in per_minute.items()
        ]
        self.add_metrics(rows)


def seed_store(engine: Engine) -> Store:
    now = datetime(2025, 11, 1, tzinfo=UTC)
    store = Store(engine)
    with engine.begin() as conn:
        price_rows = [{**p, "updated_at": now} for p in list_prices()]
        upsert(conn, Price, price_rows)
        resources = [
            (
                f"/subscriptions/{SUB}/resourcegroups/{RG}/providers/"
                f"microsoft.cognitiveservices/accounts/{name}",
                name,
            )
            for name in ("res-a", "res-b")
        ]
        upsert(
            conn,
            Resource,
            [
                {
                    "arm_id": arm,
                    "subscription_id": SUB,
                    "resource_group": RG,
                    "name": name,
                    "location": "eastus2",
                    "first_seen": now,
                    "last_seen": now,
                }
                for arm, name in resources
            ],
        )
        ids = dict(conn.execute(select(Resource.name, Resource.id)).all())
        deps = [
            ("res-a", "prod-sonnet", "claude-sonnet-4-5"),
            ("res-a", "dev-haiku", "claude-haiku-4-5"),
            ("res-b", "prod-opus", "claude-opus-4-5"),
        ]
        upsert(
            conn,
            Deployment,
            [
                {
                    "resource_id": ids[res],
                    "name": name,
                    "model_name": model,
                    "model_version": "1",
                    "first_seen": now,
                    "last_seen": now,
                }
                for res, name, model in deps
            ],
        )
        for dep_id, name in conn.execute(select(Deployment.id, Deployment.name)).all():
            store.deployments[name] = dep_id
    return store


@pytest.fixture
def store(engine: Engine) -> Store:
    return seed_store(engine)


class Clock:
    """A settable clock for ``check(…, clock=…)``."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


# --------------------------------------------------------------------------- channel configs

HOOK = "/hook/abc/TOKEN-hook-123456"
SLACK = "/services/T0001/B0001/slackTOKEN987654"
TEAMS = "/workflows/run?api-version=1&sig=teamsSIG-55555"
HEADER_SECRET = "Bearer header-SECRET-42"
#: Every secret the tests configure: none may ever show up in logs, errors or output.
SECRETS = (
    "TOKEN-hook-123456",
    "slackTOKEN987654",
    "teamsSIG-55555",
    "header-SECRET-42",
    SMTP_PASSWORD,
)


def webhook_channels(receiver: Receiver, **extra: Any) -> dict[str, dict[str, Any]]:
    common = {"ca_file": str(receiver.ca_file), "timeout_s": 5, **extra}
    return {
        "hook": {
            "type": "webhook",
            "url": receiver.url(HOOK),
            "headers": {"Authorization": HEADER_SECRET},
            **common,
        },
        "slack": {"type": "slack", "url": receiver.url(SLACK), **common},
        "teams": {"type": "teams", "url": receiver.url(TEAMS), **common},
    }


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret {secret[:6]}… leaked"


def load_proposed(path: Path, **overrides: Any) -> ProposedSettings:
    """Settings from a TOML file the way ``models.settings.load_settings`` reads it."""
    from pydantic_settings import TomlConfigSettingsSource

    class _Loaded(ProposedSettings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, **_rest):
            toml = TomlConfigSettingsSource(settings_cls, toml_file=path)
            return (init_settings, env_settings, toml)

    return _Loaded(**overrides)
