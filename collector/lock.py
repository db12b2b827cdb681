"""Only one collector writes at a time.

PostgreSQL: a session advisory lock (keyed by the store's schema) held on a dedicated
connection, whose ``application_name`` tells a second instance who holds it. SQLite: an
exclusive ``flock`` on a file beside the database, holding the holder's description. Both are
released by the OS/server when the process dies, even by SIGKILL, so a crashed collector never
blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

#: First half of the two-int advisory lock key ("FW_C"); the second is the store's schema
#: (``hashtext(current_schema())``): two stores in one database (schemas) are two stores, and
#: each has its own single writer.
PG_LOCK_CLASS = 0x46575F43
_KEY = ":c, hashtext(current_schema())"


class LockHeld(Exception):
    """Another collector holds the lock; the message says who."""


def describe_self() -> str:
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"foundry-watch collector pid {os.getpid()} on {socket.gethostname()} since {started}"


class CollectorLock:
    """Context manager: acquire on enter (or raise ``LockHeld``), release on exit."""

    def __init__(self, engine: Engine, *, wait: bool = False, poll_s: float = 1.0) -> None:
        self.engine = engine
        self.wait = wait
        self.poll_s = poll_s
        self._file: IO[str] | None = None
        self._pg: Any = None

    def __enter__(self) -> CollectorLock:
        while True:
            holder = self._try_acquire()
            if holder is None:
                return self
            if not self.wait:
                raise LockHeld(f"another collector is running: {holder}")
            time.sleep(self.poll_s)

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _try_acquire(self) -> str | None:
        """None when acquired, else a description of the holder."""
        if self.engine.dialect.name == "postgresql":
            return self._try_pg()
        return self._try_file()

    def _try_pg(self) -> str | None:
        me = describe_self()
        url = self.engine.url
        lock_engine = create_engine(
            url, poolclass=NullPool, connect_args={"application_name": me[:63]}
        )
        conn = lock_engine.connect()
        got = conn.execute(
            text(f"SELECT pg_try_advisory_lock({_KEY})"), {"c": PG_LOCK_CLASS}
        ).scalar()
        conn.commit()
        if got:
            self._pg = (lock_engine, conn)
            return None
        holder = conn.execute(
            text(
                "SELECT a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                "AND l.granted AND l.objsubid = 2 AND l.classid::bigint = :c "
                "AND l.objid::bigint = (hashtext(current_schema())::bigint & 4294967295) "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"c": PG_LOCK_CLASS},
        ).first()
        conn.close()
        lock_engine.dispose()
        if holder is None:
            return "an unknown session (lock just released?)"
        return holder.application_name or f"a session from {holder.client_addr}"

    def _lock_path(self) -> Path:
        database = self.engine.url.database or "memory"
        return Path(f"{database}.collector.lock")

    def _try_file(self) -> str | None:
        path = self._lock_path()
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            return holder
        handle.seek(0)
        handle.truncate()
        handle.write(describe_self())
        handle.flush()
        self._file = handle
        return None

    def release(self) -> None:
        if self._pg is not None:
            lock_engine, conn = self._pg
            try:
                conn.execute(text(f"SELECT pg_advisory_unlock({_KEY})"), {"c": PG_LOCK_CLASS})
                conn.close()
            finally:
                lock_engine.dispose()
            self._pg = None
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
