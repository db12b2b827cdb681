"""Dashboard fixtures: seeded stores (SQLite and PostgreSQL) and AppTest runs of the real app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from dashboard import ui
from tests.dashboard.seed import (
    SeedWorld,
    build_world,
    seed,
    seed_budget,
    seed_runs,
    utc_now_minute,
)

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
BUDGET = Decimal("500")


@pytest.fixture
def open_app(engine: Engine, monkeypatch) -> Iterator[Callable[..., AppTest]]:
    """``open_app(page, **query_params)`` → an AppTest of ``dashboard/app.py`` on ``engine``'s
    store, already run on that page. The app reads ``DATABASE_URL`` like under the CLI."""
    url = engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", url)

    def run(page: str = "overview", **params: str) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=120)
        for key, value in params.items():
            at.query_params[key] = value
        at.run()
        if page != "overview":
            at.switch_page(f"views/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield run
    ui.engine(url).dispose()
    ui.engine.clear()


def seeded(engine: Engine, n_deployments: int, **kwargs) -> SeedWorld:
    now = utc_now_minute()
    world = build_world(now, n_deployments, **kwargs)
    seed(engine, world)
    seed_runs(engine, now)
    seed_budget(engine, BUDGET)
    return world


@pytest.fixture
def world(engine: Engine) -> SeedWorld:
    """Three deployments, 20 h of recent traffic plus 12 older days, runs and a budget."""
    return seeded(engine, 3, per_deployment=300, old_days=12)
