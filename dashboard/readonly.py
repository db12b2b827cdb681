"""The dashboard's read-only database access, and the PostgreSQL role it should log in as.

Why two layers: the engine refuses writes on every connection it opens (SQLite
``PRAGMA query_only``, PostgreSQL ``default_transaction_read_only``), so a bug in a page can
never change the store; and on PostgreSQL the dashboard should log in as a role that *cannot*
write at all (``grant_readonly``), so even a compromised dashboard process cannot.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url

from models.db import make_engine

_ROLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _sqlite_query_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only = ON")
    cursor.close()


def _pg_read_only(dbapi_connection: Any, _record: Any) -> None:
    # jit off: the pages read rollups in short queries; when one crossed jit_above_cost,
    # compiling it cost ~5 ms, more than it saved (the read-only role sets the same).
    # The SETs must be committed, or the pool's first rollback would undo them.
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET default_transaction_read_only = on")
        cursor.execute("SET jit = off")
    dbapi_connection.commit()


def readonly_engine(url: str, **kwargs: Any) -> Engine:
    """An engine whose every connection refuses writes (``make_engine`` settings otherwise)."""
    engine = make_engine(url, **kwargs)
    backend = make_url(url).get_backend_name()
    listener = _sqlite_query_only if backend == "sqlite" else _pg_read_only
    event.listen(engine, "connect", listener)
    return engine


def grant_readonly_statements(role: str, database: str, schema: str) -> list[str]:
    """SQL that makes ``role`` able to read (and only read) the store's schema.

    ``ALTER DEFAULT PRIVILEGES`` covers tables a later migration creates (when run by the
    role that runs migrations); ``default_transaction_read_only`` is a second fence.
    """
    for name, value in (("role", role), ("database", database), ("schema", schema)):
        if not _ROLE.match(value):
            raise ValueError(f"invalid {name} name {value!r} (letters, digits, _; ≤ 63 chars)")
    r, d, s = (f'"{v}"' for v in (role, database, schema))
    return [
        f"GRANT CONNECT ON DATABASE {d} TO {r}",
        f"GRANT USAGE ON SCHEMA {s} TO {r}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON TABLES TO {r}",
        f"ALTER ROLE {r} SET default_transaction_read_only = on",
        # The dashboard's queries are short aggregates; JIT compilation costs them more
        # (5-16 ms per large query, measured) than it saves.
        f"ALTER ROLE {r} SET jit = off",
    ]


def grant_readonly(engine: Engine, role: str, password: str | None = None) -> list[str]:
    """Create ``role`` (LOGIN) if missing and grant it read-only access; PostgreSQL only.

    Meant for ``foundry-watch db grant-readonly ROLE [--password-env VAR]``, run with the
    migrating (owner) role. Returns the statements run, with the password masked.
    """
    if engine.dialect.name != "postgresql":
        raise ValueError(
            "grant-readonly is for PostgreSQL; on SQLite the dashboard opens the "
            "file with PRAGMA query_only and file permissions are the fence"
        )
    if not _ROLE.match(role):
        raise ValueError(f"invalid role name {role!r} (letters, digits, _; ≤ 63 chars)")
    done: list[str] = []
    with engine.begin() as conn:
        database = conn.execute(text("SELECT current_database()")).scalar_one()
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        exists = conn.execute(
            text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
        ).first()
        if not exists:
            conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
            done.append(f'CREATE ROLE "{role}" LOGIN')
        if password is not None:
            literal = "'" + password.replace("'", "''") + "'"
            conn.exec_driver_sql(f'ALTER ROLE "{role}" WITH LOGIN PASSWORD {literal}')
            done.append(f"ALTER ROLE \"{role}\" WITH LOGIN PASSWORD '***'")
        for statement in grant_readonly_statements(role, database, schema):
            conn.execute(text(statement))
            done.append(statement)
    return done
