"""The same Alembic migrations upgrade and downgrade on SQLite and PostgreSQL, and match the tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import Session

from storage import migrate
from storage.tables import ApiKey, Base

TABLES = {
    "tenants",
    "tenant_quotas",
    "api_keys",
    "corpora",
    "jobs",
    "job_corpora",
    "metrics",
    "events",
    "checkpoints",
    "tokenized_datasets",
    "datasets",
    "webhooks",
    "webhook_deliveries",
    "labelled_sets",
    "probe_runs",
    "models",
}


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _drift(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))
    finally:
        engine.dispose()


def _roundtrip(url: str) -> None:
    migrate.upgrade(url)
    assert _tables(url) == TABLES
    assert _drift(url) == [], "the tables and the migrations disagree: generate a revision"
    migrate.downgrade(url)
    assert _tables(url) == set()
    migrate.upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0012"
    engine.dispose()


def test_migrations_roundtrip_on_sqlite(tmp_path: Path) -> None:
    _roundtrip(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_migrations_roundtrip_on_postgres(postgres_database: str) -> None:
    _roundtrip(postgres_database)


def _keys_made_before_scopes_keep_read_and_write(url: str) -> None:
    migrate.upgrade(url, revision="0008")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO tenants (id, name, created_at) VALUES ('ten_old', 'old', :t)"),
                {"t": "2026-01-01 00:00:00"},
            )
            conn.execute(
                text(
                    "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, created_at) "
                    "VALUES ('key_old', 'ten_old', :h, 'ss_old', :t)"
                ),
                {"h": "0" * 64, "t": "2026-01-01 00:00:00"},
            )
        migrate.upgrade(url)
        with Session(engine) as session:
            key = session.get(ApiKey, "key_old")
            assert key is not None
            assert (key.scopes, key.name, key.expires_at, key.last_used_at, key.revoked_at) == (
                ["read", "write"],
                "",
                None,
                None,
                None,
            )
    finally:
        engine.dispose()


def test_keys_made_before_scopes_keep_read_and_write_on_sqlite(tmp_path: Path) -> None:
    _keys_made_before_scopes_keep_read_and_write(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_keys_made_before_scopes_keep_read_and_write_on_postgres(postgres_database: str) -> None:
    _keys_made_before_scopes_keep_read_and_write(postgres_database)


@pytest.mark.parametrize("command", [["migrate"], ["migrate", "--downgrade", "base"]])
def test_selfsup_migrate_command(tmp_path: Path, command: list[str]) -> None:
    env = {"SELFSUP_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-m", "selfsup.cli", "migrate"], env=env, check=True, capture_output=True)
    result = subprocess.run([sys.executable, "-m", "selfsup.cli", *command], env=env, check=True, capture_output=True)
    expected = TABLES if command == ["migrate"] else set()
    assert _tables(f"sqlite:///{tmp_path / 'selfsup.db'}") == expected, result.stderr
