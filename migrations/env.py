"""Alembic environment: the URL comes from selfsup's settings, the metadata from storage.tables."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from storage.db import get_engine, make_engine
from storage.tables import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run against a live connection (given by `storage.migrate` or made from the settings)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.attributes.get("url")
    engine = make_engine(url) if url else get_engine()
    with engine.connect() as conn:
        _run(conn)


if context.is_offline_mode():
    raise SystemExit("selfsup migrations run online only: use `selfsup migrate`")
run_migrations_online()
