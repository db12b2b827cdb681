"""One collector at a time, on both backends; a dead holder never blocks the next one."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import Engine

from collector.lock import CollectorLock, LockHeld


def test_second_collector_is_told_who_holds_the_lock(engine: Engine) -> None:
    with CollectorLock(engine):
        with pytest.raises(LockHeld) as info, CollectorLock(engine):
            pass
        assert f"pid {os.getpid()}" in str(info.value)
    with CollectorLock(engine):  # released: a new holder gets it
        pass


def test_lock_of_a_killed_process_is_released(engine: Engine, db_url: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from models.db import make_engine\n"
            "from collector.lock import CollectorLock\n"
            f"lock = CollectorLock(make_engine({db_url!r})).__enter__()\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeld, match=f"pid {holder.pid}"), CollectorLock(engine):
            pass
        holder.kill()  # SIGKILL: no cleanup code runs
        holder.wait()
        deadline = time.monotonic() + 10
        while True:
            try:
                with CollectorLock(engine):
                    break
            except LockHeld:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        holder.kill()
        holder.wait()


def test_wait_flag_waits_for_the_holder(engine: Engine) -> None:
    first = CollectorLock(engine).__enter__()
    waiter = CollectorLock(engine, wait=True, poll_s=0.05)
    import threading

    got = threading.Event()

    def take() -> None:
        with waiter:
            got.set()

    thread = threading.Thread(target=take)
    thread.start()
    assert not got.wait(0.3)
    first.release()
    assert got.wait(10)
    thread.join()


@pytest.mark.postgres
def test_stores_in_two_schemas_of_one_database_lock_independently(
    pg_schema_url: str, pg_available: str
) -> None:
    """Advisory locks are per database; the key includes the schema, so two stores sharing a
    PostgreSQL database each get their own single writer."""
    import uuid

    from sqlalchemy import create_engine, text

    other_schema = f"fw_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_available)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{other_schema}"'))
    first = create_engine(pg_schema_url)
    second = create_engine(f"{pg_available}?options=-csearch_path%3D{other_schema}")
    try:
        with (
            CollectorLock(first),
            CollectorLock(second),
            pytest.raises(LockHeld, match=f"pid {os.getpid()}"),
            CollectorLock(first),
        ):
            pass
    finally:
        first.dispose()
        second.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{other_schema}" CASCADE'))
        admin.dispose()
