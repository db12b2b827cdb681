"""Alembic environment: runs migrations on the engine foundry-watch hands over.

SQLite cannot ALTER most things in place, so migrations run in batch mode there.
"""

from alembic import context
from sqlalchemy import create_engine

from models.tables import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # the plain `alembic` command line, for developers generating revisions
    engine = create_engine(config.get_main_option("sqlalchemy.url"))

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    context.run_migrations()
