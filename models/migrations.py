"""Schema versioning through Alembic, the only way the schema changes.

The app refuses to work on a schema older (or newer) than its code: silently writing into the
wrong shape is how data gets lost.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

_REPO_DIR = Path(__file__).resolve().parents[1] / "alembic"
#: In a checkout the scripts live in ./alembic; a built wheel carries them inside models/.
ALEMBIC_DIR = _REPO_DIR if (_REPO_DIR / "env.py").is_file() else Path(__file__).parent / "_alembic"


class SchemaOutOfDate(Exception):
    """The database schema is not the one this code was written for."""


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    head = ScriptDirectory(str(ALEMBIC_DIR)).get_current_head()
    assert head is not None, "no migrations found"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Migrate to ``revision``; returns (before, after) revisions."""
    before = current_revision(engine)
    command.upgrade(alembic_config(engine), revision)
    return before, current_revision(engine) or ""


def ensure_current(engine: Engine) -> None:
    """Raise ``SchemaOutOfDate`` unless the database is at the code's head revision."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaOutOfDate(
            "the database has no foundry-watch schema yet: run `foundry-watch db upgrade`"
        )
    raise SchemaOutOfDate(
        f"the database schema is at revision {current}, this code needs {head}: "
        "run `foundry-watch db upgrade`"
    )
