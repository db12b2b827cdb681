"""Fixtures for tests that talk to a running emulator with the real Azure and Anthropic SDKs.

``emulator``: one HTTPS server for the session (seed 42, free port, real clock), its ``env()``
applied to ``os.environ`` so ``DefaultAzureCredential`` finds the App Service identity endpoint
and ``requests`` trusts the emulator's CA. ``faults``: the server's fault rules, cleared after
each test. ``credential``: a ``DefaultAzureCredential`` limited to managed identity, so a
developer's Azure CLI login can never leak into a test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulator.faults import Faults
from emulator.server import FOREIGN_AZURE_ENV, EmulatorServer


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorServer]:
    server = EmulatorServer(seed=42, port=0)
    server.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in FOREIGN_AZURE_ENV:
                mp.delenv(name, raising=False)
            for name, value in server.env().items():
                mp.setenv(name, value)
            yield server
    finally:
        server.stop()


@pytest.fixture
def faults(emulator: EmulatorServer) -> Iterator[Faults]:
    emulator.faults.clear()
    yield emulator.faults
    emulator.faults.clear()


@pytest.fixture(scope="session")
def credential(emulator: EmulatorServer):  # -> DefaultAzureCredential
    from azure.identity import DefaultAzureCredential

    cred = DefaultAzureCredential(
        exclude_environment_credential=True,
        exclude_workload_identity_credential=True,
        exclude_shared_token_cache_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_cli_credential=True,
        exclude_developer_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_interactive_browser_credential=True,
        exclude_broker_credential=True,
    )
    yield cred
    cred.close()
