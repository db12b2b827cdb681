"""Run the emulator: uvicorn with TLS in a background thread (tests) or in the foreground (CLI).

URL layout on one ``https://127.0.0.1:{port}`` origin:

- ``/msi/token``                       App Service managed identity (IDENTITY_ENDPOINT)
- ``/subscriptions/…``                 ARM (accounts, deployments, workspaces, diagnostic
                                       settings) and Cost Management ``…/query``
- ``/metrics/{region}/subscriptions/{sub}/metrics:getBatch``   metrics batch
- ``/logs/v1/workspaces/{id}/query``, ``/logs/v1/{resourceId}/query``   Log Analytics
- ``/foundry/{resource}/anthropic/v1/messages`` (or ``/anthropic/v1/messages`` with
  ``Host: {resource}.services.ai.azure.com``)                   Claude data plane
- ``/_emulator/health``, ``/_emulator/faults``, ``/_emulator/keys``   admin
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from emulator.app import build_app
from emulator.auth import ARM_AUDIENCE, DATAPLANE_AUDIENCE, LOGS_AUDIENCE, METRICS_AUDIENCE
from emulator.faults import Faults
from emulator.state import EmulatorState
from emulator.tls import ensure_certs
from emulator.world import World

#: Variables that would make azure-identity's DefaultAzureCredential use something other than
#: the emulator (a service principal, a workload identity, another managed-identity endpoint).
FOREIGN_AZURE_ENV = (
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_USERNAME",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
)


def isolated_env(environ: Mapping[str, str], emulator_env: Mapping[str, str]) -> dict[str, str]:
    """``environ`` for a child process that must talk to the emulator and nothing else: no
    foreign Azure credential, no foundry-watch setting or store of the caller's; then
    ``emulator_env`` (:meth:`EmulatorServer.env`)."""
    env = {
        k: v
        for k, v in environ.items()
        if k not in FOREIGN_AZURE_ENV and k != "DATABASE_URL" and not k.startswith("FOUNDRY_WATCH_")
    }
    env.update(emulator_env)
    return env


__all__ = ["EmulatorServer", "serve"]


class _NoDelayH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with Nagle off.

    Behind asyncio's TLS transport, uvicorn leaves Nagle on, so each response body waited for a
    delayed ACK (~40 ms per call); Azure's front doors answer without that stall.
    """

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


class EmulatorServer:
    """One emulator instance: world + state + TLS certs + a uvicorn server.

    ``world_size`` goes to :class:`~emulator.world.World` (``days``, ``resources``,
    ``deployments_per_resource``, ``requests_per_day``, ``clock``).
    """

    def __init__(
        self,
        seed: int = 42,
        port: int = 0,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        token_lifetime_s: int = 3600,
        arm_page_size: int = 2,
        cost_page_size: int = 1000,
        log_level: str = "warning",
        **world_size: Any,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="foundry-watch-emulator-"))
        self.certs = ensure_certs(self.data_dir)
        self.state = EmulatorState(
            world=World(seed, **world_size),
            identity_header=self._identity_secret(),
            token_lifetime_s=token_lifetime_s,
            arm_page_size=arm_page_size,
            cost_page_size=cost_page_size,
        )
        self.app = build_app(self.state)
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.port = port

    def _identity_secret(self) -> str:
        """IDENTITY_HEADER, kept in the data directory so a restart keeps exported env valid."""
        path = self.data_dir / "identity-header"
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        secret = secrets.token_hex(16)
        path.write_text(secret + "\n")
        path.chmod(0o600)
        return secret

    # ------------------------------------------------------------------ properties
    @property
    def world(self) -> World:
        return self.state.world

    @property
    def faults(self) -> Faults:
        return self.state.faults

    @property
    def ca_file(self) -> str:
        return str(self.certs.ca_file)

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSL context trusting only this emulator's CA (for httpx/httpx2 clients)."""
        return ssl.create_default_context(cafile=self.ca_file)

    def dataplane_url(self, resource: str) -> str:
        """``base_url`` for ``AnthropicFoundry`` talking to ``resource`` through this server."""
        return f"{self.base_url}/foundry/{resource}/anthropic/"

    def api_key(self, resource: str) -> str:
        return self.state.api_key(resource)

    def env(self) -> dict[str, str]:
        """Environment that points azure-identity, the SDKs and foundry-watch at this server."""
        base = self.base_url
        return {
            "IDENTITY_ENDPOINT": f"{base}/msi/token",
            "IDENTITY_HEADER": self.state.identity_header,
            "REQUESTS_CA_BUNDLE": self.ca_file,
            "SSL_CERT_FILE": self.ca_file,
            "FOUNDRY_WATCH_CA_BUNDLE": self.ca_file,
            "FOUNDRY_WATCH_ARM_ENDPOINT": base,
            "FOUNDRY_WATCH_METRICS_ENDPOINT": f"{base}/metrics/{{region}}",
            "FOUNDRY_WATCH_LOGS_ENDPOINT": f"{base}/logs",
            "FOUNDRY_WATCH_SUBSCRIPTIONS": ",".join(self.world.subscriptions),
            "FOUNDRY_WATCH_ARM_AUDIENCE": ARM_AUDIENCE,
            "FOUNDRY_WATCH_METRICS_AUDIENCE": METRICS_AUDIENCE,
            "FOUNDRY_WATCH_LOGS_AUDIENCE": LOGS_AUDIENCE,
            "FOUNDRY_WATCH_COGNITIVE_AUDIENCE": DATAPLANE_AUDIENCE,
        }

    # ------------------------------------------------------------------ lifecycle
    def _config(self) -> uvicorn.Config:
        return uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            ssl_certfile=str(self.certs.cert_file),
            ssl_keyfile=str(self.certs.key_file),
            log_level=self._log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            http=_NoDelayH11Protocol,
        )

    def _bind(self) -> socket.socket:
        """Bind before uvicorn starts, so port 0 resolves to a free port with no race."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        sock.listen(128)
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        return sock

    def start(self, timeout: float = 15.0) -> EmulatorServer:
        """Serve in a daemon thread; returns once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        self._socket = self._bind()
        self._server = uvicorn.Server(self._config())
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("emulator server thread exited during startup")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"emulator did not start within {timeout}s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving; removes the data directory when the server created it."""
        if self._server is not None:
            # force_exit: idle TLS keep-alive connections of clients would otherwise hold the
            # graceful shutdown for its whole timeout.
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    host: str = "127.0.0.1",
    port: int = 8443,
    seed: int = 42,
    data_dir: str | os.PathLike[str] = ".foundry-watch-emulator",
    *,
    echo: Callable[[str], None] = print,
    clock: Callable[[], datetime] | datetime | None = None,
    **options: Any,
) -> None:
    """Run the emulator in the foreground until interrupted (``foundry-watch emulator``).

    Prints the base URL, the CA file and ``export`` lines for the environment clients need.
    """
    srv = EmulatorServer(seed=seed, port=port, data_dir=data_dir, host=host, clock=clock, **options)
    sock = srv._bind()
    config = srv._config()
    echo(f"foundry-watch emulator listening on {srv.base_url}")
    echo(f"CA certificate: {srv.ca_file}")
    echo("Data-plane keys (api-key / x-api-key):")
    for name, key in srv.state.api_keys.items():
        echo(f"  {name}: {key}    base_url={srv.dataplane_url(name)}")
    echo("Environment for clients:")
    for k, v in srv.env().items():
        echo(f"export {k}='{v}'")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
