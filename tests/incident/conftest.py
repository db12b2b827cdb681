"""Fixtures for the incident tests: the emulator (real anthropic SDK against its data plane), a
migrated store after discovery (``collector_ctx``, SQLite and PostgreSQL), and capture spools."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import httpx2
import pytest

from collector import capture
from emulator.server import EmulatorServer
from tests.collector.conftest import collector_ctx  # noqa: F401  (fixture reused here)
from tests.emulator.conftest import credential, emulator, faults  # noqa: F401

MSG = [{"role": "user", "content": "The secret prompt text 7d1f: how is the weather?"}]
_counter = itertools.count()


@pytest.fixture(scope="session")
def resource(emulator: EmulatorServer) -> str:  # noqa: F811
    return emulator.world.resources[0].name


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / f"spool-{next(_counter)}" / "fw.jsonl"
    yield path
    spool = capture._SPOOLS.pop(str(path), None)
    if spool is not None:
        spool.close()


@pytest.fixture
def make_client(
    emulator: EmulatorServer,  # noqa: F811
    resource: str,
) -> Iterator[Callable[..., anthropic.AnthropicFoundry]]:
    made: list[anthropic.AnthropicFoundry] = []

    def make(spool: Path, *, max_retries: int = 0, **options) -> anthropic.AnthropicFoundry:
        http = capture.instrument(
            httpx2.Client(verify=emulator.ssl_context()), spool=spool, **options
        )
        client = anthropic.AnthropicFoundry(
            api_key=emulator.api_key(resource),
            base_url=emulator.dataplane_url(resource),
            http_client=http,
            max_retries=max_retries,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
