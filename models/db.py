"""Engines, sessions and the one upsert helper every writer uses.

Why one helper: idempotence is the store's contract (a repeated or overlapping window changes
nothing), and it is only as good as the single place that turns rows into
``INSERT … ON CONFLICT DO UPDATE`` on both SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, UniqueConstraint, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import JSON

from models.types import UTCDateTime

#: Batches at least this large go through PostgreSQL COPY into a staging table.
PG_COPY_MIN_ROWS = 200
SQLITE_BUSY_TIMEOUT_MS = 10_000


class DatabaseUnavailable(Exception):
    """The database cannot be reached or opened; the message is one line, without secrets."""


def safe_url(url: str) -> str:
    """The URL with its password masked: the only form allowed in logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the dashboard read while the collector writes; busy_timeout makes a writer wait
    # instead of failing; SQLite leaves foreign keys off unless asked on every connection.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the per-backend settings the store relies on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def check_connection(engine: Engine) -> None:
    """Open one connection or raise ``DatabaseUnavailable`` with a one-line reason."""
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailable(
            f"cannot open the database {engine.url.render_as_string(hide_password=True)}: {reason}"
        ) from None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def natural_key(table: Table) -> list[str]:
    """The columns a row is identified by: the first unique constraint, else the primary key."""
    uniques = [c for c in table.constraints if isinstance(c, UniqueConstraint)]
    if uniques:
        return [col.name for col in uniques[0].columns]
    return [col.name for col in table.primary_key.columns]


def _batched(rows: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[Mapping[str, Any]]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


def _dedupe(batch: list[Mapping[str, Any]], key: Sequence[str]) -> list[Mapping[str, Any]]:
    """Last row wins per key: PostgreSQL refuses to update one row twice in a statement."""
    by_key: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for row in batch:
        by_key[tuple(row[k] for k in key)] = row
    return list(by_key.values()) if len(by_key) != len(batch) else batch


def upsert(
    conn: Connection | Session,
    table: Table | type[DeclarativeBase],
    rows: Iterable[Mapping[str, Any]],
    *,
    key: Sequence[str] | None = None,
    update: Sequence[str] | None = None,
    batch_size: int = 5000,
) -> int:
    """Insert ``rows`` or update the ones whose natural key exists; returns rows written.

    Every row must carry the same columns. Only the given non-key columns are updated, so a
    partial row never blanks what another source wrote. Runs inside the caller's transaction.
    """
    target: Table = getattr(table, "__table__", table)  # type: ignore[assignment]
    connection = conn.connection() if isinstance(conn, Session) else conn
    key = list(key or natural_key(target))
    written = 0
    for batch in _batched(rows, batch_size):
        batch = _dedupe(batch, key)
        columns = list(batch[0].keys())
        missing = [k for k in key if k not in columns]
        if missing:
            raise ValueError(f"rows for {target.name} lack key column(s) {missing}")
        updates = [c for c in (update if update is not None else columns) if c not in key]
        if connection.dialect.name == "postgresql" and len(batch) >= PG_COPY_MIN_ROWS:
            _pg_copy_upsert(connection, target, batch, columns, key, updates)
        else:
            connection.execute(_upsert_statement(connection, target, key, updates), batch)
        written += len(batch)
    return written


def _upsert_statement(
    connection: Connection, target: Table, key: Sequence[str], updates: Sequence[str]
) -> Any:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(target)
    if not updates:
        return stmt.on_conflict_do_nothing(index_elements=list(key))
    return stmt.on_conflict_do_update(
        index_elements=list(key), set_={c: stmt.excluded[c] for c in updates}
    )


def _copy_converters(target: Table, columns: Sequence[str], dialect: Any) -> list[Callable]:
    """Per-column value converters for COPY, applying the same rules as bound parameters."""
    converters: list[Callable] = []
    for name in columns:
        col_type = target.c[name].type
        if isinstance(col_type, UTCDateTime):
            converters.append(lambda v, t=col_type: t.process_bind_param(v, dialect))
        elif isinstance(col_type, JSON):
            converters.append(lambda v: None if v is None else json.dumps(v))
        else:
            converters.append(lambda v: v)
    return converters


def _pg_copy_upsert(
    connection: Connection,
    target: Table,
    batch: list[Mapping[str, Any]],
    columns: Sequence[str],
    key: Sequence[str],
    updates: Sequence[str],
) -> None:
    """COPY the batch into a session-local staging table, then merge it with one statement.

    Row-by-row ``executemany`` costs a round trip per few rows; COPY streams the batch.
    """
    stage = f"_fw_stage_{target.name}"
    quoted = ", ".join(f'"{c}"' for c in columns)
    driver = connection.connection.driver_connection
    converters = _copy_converters(target, columns, connection.dialect)
    conflict = ", ".join(f'"{k}"' for k in key)
    action = (
        "DO UPDATE SET " + ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in updates)
        if updates
        else "DO NOTHING"
    )
    with driver.cursor() as cur:
        cur.execute(
            f'CREATE TEMP TABLE IF NOT EXISTS "{stage}" AS '
            f'SELECT {quoted} FROM "{target.name}" WITH NO DATA'
        )
        with cur.copy(f'COPY "{stage}" ({quoted}) FROM STDIN') as copy:
            for row in batch:
                copy.write_row([conv(row[c]) for conv, c in zip(converters, columns, strict=True)])
        cur.execute(
            f'INSERT INTO "{target.name}" ({quoted}) SELECT {quoted} FROM "{stage}" '
            f"ON CONFLICT ({conflict}) {action}"
        )
        cur.execute(f'DROP TABLE "{stage}"')
