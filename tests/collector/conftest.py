"""Collector fixtures: a migrated store (SQLite and PostgreSQL) whose settings point at the
running emulator, after one discovery run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from collector.azure import make_credential
from collector.jobs import discovery
from collector.jobs.base import JobContext
from models.settings import load_settings
from tests.emulator.conftest import emulator, faults  # noqa: F401  (fixtures reused here)


@pytest.fixture
def collector_ctx(emulator, engine) -> Iterator[JobContext]:  # noqa: F811
    settings = load_settings(
        database_url=engine.url.render_as_string(hide_password=False),
        subscriptions=",".join(emulator.world.subscriptions),
    )
    ctx = JobContext(settings=settings, engine=engine, credential=make_credential(settings))
    outcomes = discovery.run(ctx)
    assert outcomes and all(o.status == "ok" for o in outcomes), outcomes
    yield ctx
