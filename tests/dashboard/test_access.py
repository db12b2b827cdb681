"""Access: the sign-in allow-list, the PostgreSQL read-only role, and the coarse rollups'
idempotence (the dashboard trusts them to equal the minute tables)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import make_url

from collector import coarse_rollups as coarse
from collector import rollups
from dashboard.auth import allowed
from dashboard.readonly import grant_readonly, grant_readonly_statements, readonly_engine
from models.db import upsert
from models.tables import Request
from tests.dashboard.seed import build_world, seed, utc_now_minute


def test_allow_lists() -> None:
    alice = {"email": "Alice@Contoso.com", "groups": ["g-finops"]}
    assert allowed(alice, {})
    assert allowed(alice, {"allowed_users": ["alice@contoso.com"]})
    assert allowed(alice, {"allowed_groups": ["g-finops"]})
    assert not allowed(alice, {"allowed_users": ["bob@contoso.com"], "allowed_groups": ["g-x"]})
    assert allowed(
        {"preferred_username": "bob@contoso.com"}, {"allowed_users": ["BOB@contoso.com"]}
    )
    assert not allowed({}, {"allowed_users": ["bob@contoso.com"]})
    assert allowed({"groups": "g-x"}, {"allowed_groups": ["g-x"]})


def test_grant_statements_refuse_odd_names() -> None:
    assert grant_readonly_statements("fw_dash", "fw", "public")[0] == (
        'GRANT CONNECT ON DATABASE "fw" TO "fw_dash"'
    )
    with pytest.raises(ValueError, match="invalid role"):
        grant_readonly_statements('x"; DROP TABLE costs; --', "fw", "public")


@pytest.mark.postgres
def test_pg_readonly_role_can_read_and_never_write(pg_schema_url: str) -> None:
    from models.migrations import upgrade

    owner = create_engine(pg_schema_url)
    upgrade(owner)
    role = f"fw_ro_{uuid.uuid4().hex[:8]}"
    secret = uuid.uuid4().hex
    try:
        done = grant_readonly(owner, role, password=secret)
        assert any("PASSWORD '***'" in s for s in done) and all(secret not in s for s in done)
        grant_readonly(owner, role)  # a second run is harmless
        url = make_url(pg_schema_url).set(username=role, password=secret)
        reader = readonly_engine(url.render_as_string(hide_password=False))
        with reader.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM deployments")).scalar_one() == 0
            assert conn.execute(text("SHOW default_transaction_read_only")).scalar_one() == "on"
            assert conn.execute(text("SHOW jit")).scalar_one() == "off"
        plain = create_engine(url.render_as_string(hide_password=False))
        with plain.connect() as conn:  # the role's own settings, without the engine's SETs
            assert conn.execute(text("SHOW default_transaction_read_only")).scalar_one() == "on"
            assert conn.execute(text("SHOW jit")).scalar_one() == "off"
        as_owner = readonly_engine(pg_schema_url)  # any role: the engine sets both itself
        with as_owner.connect() as conn:
            conn.rollback()  # the pool's reset keeps what the connect hook committed
            assert conn.execute(text("SHOW default_transaction_read_only")).scalar_one() == "on"
            assert conn.execute(text("SHOW jit")).scalar_one() == "off"
        as_owner.dispose()
        with (
            plain.connect() as conn,
            pytest.raises(Exception, match=r"permission denied|read-only"),
        ):
            conn.execute(text("SET default_transaction_read_only = off"))
            conn.execute(text("DELETE FROM deployments"))
        reader.dispose()
        plain.dispose()
    finally:
        with owner.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        owner.dispose()


def _coarse_rows(engine: Engine) -> tuple[list, list]:
    with engine.connect() as conn:
        m = conn.execute(select(coarse.metric_rollups).order_by(*coarse.metric_rollups.c)).all()
        t = coarse.latency_rollups_coarse
        lat = conn.execute(select(t).order_by(*t.primary_key.columns)).all()
    return [_rounded(r) for r in m], [_rounded(r) for r in lat]


def _rounded(row) -> tuple:
    """Floats to 12 significant digits: PostgreSQL may sum in another order (last-ulp noise)."""
    return tuple(float(f"{v:.12g}") if isinstance(v, float) else v for v in row)


def test_coarse_refresh_is_idempotent_and_follows_late_data(engine: Engine) -> None:
    now = utc_now_minute()
    world = build_world(now, 2, per_deployment=200, old_days=3)
    seed(engine, world)
    before = _coarse_rows(engine)
    with engine.begin() as conn:  # the same window again, and an overlapping one
        coarse.refresh(conn, now - timedelta(days=5), now)
        coarse.refresh(conn, now - timedelta(hours=7, minutes=13), now - timedelta(hours=2))
    assert _coarse_rows(engine) == before
    # a late request: minute rollups recomputed by the collector path, then the coarse ones
    late = world.requests[0]
    t = now - timedelta(hours=3, minutes=30)
    with engine.begin() as conn:
        upsert(
            conn,
            Request,
            [
                {
                    "correlation_id": "ffffffff-0000-4000-8000-000000000001",
                    "time": t,
                    "deployment_id": late.deployment_id,
                    "status_code": 200,
                    "duration_ms": 123456.0,
                }
            ],
        )
        rollups.recompute_rollups(conn, [late.deployment_id], t, t + timedelta(minutes=1))
        coarse.refresh(conn, t, t + timedelta(minutes=1), [late.deployment_id])
    after = _coarse_rows(engine)[1]
    hours = [r for r in after if r[1] == "hour" and r[0] == late.deployment_id and r[2] == "2xx"]
    days = [r for r in after if r[1] == "day" and r[0] == late.deployment_id and r[2] == "2xx"]
    assert max(r[7] for r in hours) == 123456.0 and max(r[7] for r in days) == 123456.0
    assert sum(r[4] for r in hours) == sum(r[4] for r in days)


@pytest.mark.postgres
def test_grant_readonly_cli_creates_a_role_that_reads_but_cannot_write(
    pg_schema_url: str,
) -> None:
    """``foundry-watch db grant-readonly``, end to end: password from the named env var."""
    from models.migrations import upgrade

    role = f"fw_ro_{uuid.uuid4().hex[:8]}"
    secret = f"s3cr3t-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "DATABASE_URL": pg_schema_url, "FW_RO_PASSWORD": secret}
    owner = create_engine(pg_schema_url)
    upgrade(owner)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "collector.cli", "db", "grant-readonly", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    try:
        done = cli(role, "--password-env", "FW_RO_PASSWORD")
        assert done.returncode == 0, done.stderr
        assert secret not in done.stdout + done.stderr
        assert "GRANT SELECT ON ALL TABLES" in done.stdout
        url = make_url(pg_schema_url).set(username=role, password=secret)
        reader = create_engine(url)
        with reader.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM prices")).scalar_one() > 0
            with pytest.raises(Exception, match=r"read-only|permission denied"):
                conn.execute(text("DELETE FROM prices"))
        reader.dispose()
        missing = cli(role, "--password-env", "FW_RO_UNSET_VAR")
        assert missing.returncode == 2
        assert "FW_RO_UNSET_VAR" in missing.stderr and "Traceback" not in missing.stderr
        odd = cli('x"; DROP TABLE prices; --')
        assert odd.returncode == 2 and "invalid role" in odd.stderr
    finally:
        with owner.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        owner.dispose()
