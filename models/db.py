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

from psycopg.errors import UniqueViolation
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
            folder = Path(parsed.database).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailable(
                    f"cannot create the folder {folder} for the SQLite database: {exc.strerror}"
                ) from None
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
        elif connection.dialect.name == "sqlite":
            _sqlite_executemany(connection, target, batch, columns, key, updates)
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


def _sqlite_executemany(
    connection: Connection,
    target: Table,
    batch: list[Mapping[str, Any]],
    columns: Sequence[str],
    key: Sequence[str],
    updates: Sequence[str],
) -> None:
    """Driver ``executemany`` over plain tuples, new rows first.

    SQLAlchemy's generic per-row parameter handling costs more than SQLite's insert itself, and
    an ``ON CONFLICT DO UPDATE`` that may rewrite a foreign-key column makes SQLite do
    foreign-key work on every row (3x slower). So: insert-or-ignore, and only if some rows
    already existed, run the full upsert over the batch (re-writing the new rows with the same
    values). Values still pass through each column type's bind processor: storage is identical.
    """
    defaults = _absent_defaults(target, columns)
    columns = [*columns, *defaults]
    upsert_sql = _upsert_statement(connection, target, key, updates).compile(
        dialect=connection.dialect, column_keys=columns
    )
    insert_sql = _upsert_statement(connection, target, key, []).compile(
        dialect=connection.dialect, column_keys=columns
    )
    processors = upsert_sql._bind_processors
    getters = [(name, processors.get(name)) for name in upsert_sql.positiontup or []]
    assert [name for name, _ in getters] == list(insert_sql.positiontup or []), "same order"
    params = [
        tuple(
            (proc(value) if proc else value)
            for name, proc in getters
            for value in ((row[name] if name in row else defaults[name]),)
        )
        for row in batch
    ]
    inserted = connection.exec_driver_sql(str(insert_sql), params).rowcount
    if updates and inserted != len(params):
        connection.exec_driver_sql(str(upsert_sql), params)


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


def _absent_defaults(target: Table, columns: Sequence[str]) -> dict[str, Any]:
    """Python-side insert defaults of the columns a batch does not carry."""
    defaults: dict[str, Any] = {}
    for col in target.columns:
        if col.name in columns or col.default is None:
            continue
        default = col.default
        if default.is_scalar:
            defaults[col.name] = default.arg
        elif default.is_callable:
            defaults[col.name] = default.arg(None)
    return defaults


def _copy_rows(cursor: Any, table: str, target: Table, batch, columns, dialect) -> None:
    quoted = ", ".join(f'"{c}"' for c in columns)
    converters = _copy_converters(target, columns, dialect)
    with cursor.copy(f'COPY "{table}" ({quoted}) FROM STDIN') as copy:
        for row in batch:
            copy.write_row([conv(row[c]) for conv, c in zip(converters, columns, strict=True)])


def _pg_copy_upsert(
    connection: Connection,
    target: Table,
    batch: list[Mapping[str, Any]],
    columns: Sequence[str],
    key: Sequence[str],
    updates: Sequence[str],
) -> None:
    """COPY straight into the table; if some rows already exist, merge through a stage table.

    Row-by-row ``executemany`` costs a round trip per few rows; COPY streams the batch. New
    data (a backfill, a fresh window) takes the direct COPY under a savepoint; a key conflict
    rolls that back and the batch is COPYed into a session-local stage and merged with one
    ``INSERT … SELECT … ON CONFLICT``.
    """
    # executemany applies the columns' Python-side defaults to absent columns; COPY must too.
    defaults = _absent_defaults(target, columns)
    columns = [*columns, *defaults]
    batch = [{**row, **defaults} for row in batch] if defaults else batch
    driver = connection.connection.driver_connection
    dialect = connection.dialect
    try:
        with connection.begin_nested(), driver.cursor() as cur:
            _copy_rows(cur, target.name, target, batch, columns, dialect)
        return
    except UniqueViolation:
        pass  # some rows exist already: merge
    stage = f"_fw_stage_{target.name}"
    quoted = ", ".join(f'"{c}"' for c in columns)
    conflict = ", ".join(f'"{k}"' for k in key)
    action = (
        "DO UPDATE SET " + ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in updates)
        if updates
        else "DO NOTHING"
    )
    with driver.cursor() as cur:
        cur.execute(
            f'CREATE TEMP TABLE "{stage}" AS SELECT {quoted} FROM "{target.name}" WITH NO DATA'
        )
        _copy_rows(cur, stage, target, batch, columns, dialect)
        cur.execute(
            f'INSERT INTO "{target.name}" ({quoted}) SELECT {quoted} FROM "{stage}" '
            f"ON CONFLICT ({conflict}) {action}"
        )
        cur.execute(f'DROP TABLE "{stage}"')
