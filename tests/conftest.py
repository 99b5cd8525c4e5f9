"""Fixtures: the real service on the embedded default, and on this machine's PostgreSQL and Redis.

Where PostgreSQL or Redis is missing the PostgreSQL-backed tests skip, except in CI (`CI=true`),
where they fail: a green CI run must have exercised both backends.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.service import Service, start_service

POSTGRES_URL = os.environ.get("SELFSUP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SELFSUP_TEST_REDIS_URL", "redis://127.0.0.1:6379")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require(service: str, error: Exception) -> None:
    message = f"{service} is not reachable ({type(error).__name__}: {error})"
    if IN_CI:
        pytest.fail(f"{message}; CI requires it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def make_postgres_database() -> Iterator[Callable[[], str]]:
    """Creates fresh, empty PostgreSQL databases on demand; drops them all at the end of the session."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    def create() -> str:
        name = f"selfsup_test_{secrets.token_hex(4)}"
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:  # noqa: BLE001 - any connection failure means "PostgreSQL missing"
            _require("PostgreSQL", exc)
        created.append(name)
        return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)

    try:
        yield create
    finally:
        with admin.connect() as conn:
            for name in created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_database(make_postgres_database: Callable[[], str]) -> str:
    """A fresh PostgreSQL database for one test."""
    return make_postgres_database()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis database on this machine's server, emptied for this test session."""
    url = f"{REDIS_URL.rstrip('/')}/{7}"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.flushdb()
        client.close()
    except Exception as exc:  # noqa: BLE001
        _require("Redis", exc)
    return url


@pytest.fixture(scope="session")
def embedded_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """selfsup up with nothing configured: embedded Valkey, SQLite, a local folder."""
    service = start_service(tmp_path_factory.mktemp("embedded") / "home")
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def postgres_service(
    tmp_path_factory: pytest.TempPathFactory, make_postgres_database: Callable[[], str], redis_url: str
) -> Iterator[Service]:
    """selfsup up against this machine's PostgreSQL and Redis."""
    service = start_service(
        tmp_path_factory.mktemp("postgres") / "home",
        # Readable text logs here (JSON elsewhere): tests/api/test_operations.py checks `selfsup up`'s start-up.
        {
            "SELFSUP_DATABASE_URL": make_postgres_database(),
            "SELFSUP_REDIS_URL": redis_url,
            "SELFSUP_LOG_FORMAT": "text",
        },
    )
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(params=["embedded", "postgres"])
def service(request: pytest.FixtureRequest) -> Service:
    """The service on each backend in turn."""
    return request.getfixturevalue(f"{request.param}_service")  # type: ignore[no-any-return]


@pytest.fixture
def tmp_home(tmp_path: Path) -> Path:
    """A data directory for in-process tests."""
    return tmp_path / "home"
