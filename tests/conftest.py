"""Shared fixtures: the same store tests run on a SQLite file and on real PostgreSQL.

PostgreSQL comes from ``DATABASE_URL_PG`` (default: this machine's server). Each test gets its
own schema, so runs never collide. Unreachable PostgreSQL skips those tests locally and fails
them under ``CI=true``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, create_engine, text

from models.db import make_engine
from models.migrations import upgrade

PG_URL = os.environ.get("DATABASE_URL_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_reachable() -> str | None:
    """None if PostgreSQL answers, else the reason it does not."""
    try:
        probe = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with probe.connect():
            pass
        probe.dispose()
    except Exception as exc:  # any failure to connect is a reason to skip/fail
        return str(exc).splitlines()[0]
    return None


@pytest.fixture(scope="session")
def pg_available() -> str:
    reason = _pg_reachable()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL unreachable under CI=true: {reason}")
        pytest.skip(f"PostgreSQL unreachable: {reason}")
    return PG_URL


@pytest.fixture
def pg_schema_url(pg_available: str) -> Iterator[str]:
    """A database URL whose search_path is a fresh schema, dropped afterwards."""
    schema = f"fw_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_available)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in pg_available else "?"
    yield f"{pg_available}{sep}options={quote(f'-csearch_path={schema}')}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated store on each backend."""
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()
