"""Fixtures: the real service on the embedded default (SQLite, embedded broker, a local blob folder), and the
production-like one on this machine's PostgreSQL and Redis with its blobs in S3 (moto's S3 server, started here on
the loopback).

Where PostgreSQL, Redis or moto is missing the tests that need them skip, except in CI (`CI=true`), where they
fail: a green CI run must have exercised every backend.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.service import Service, free_port, start_service, wait_until

POSTGRES_URL = os.environ.get("SELFSUP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SELFSUP_TEST_REDIS_URL", "redis://127.0.0.1:6379")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """End every process the suite started and left running, and name them: a leftover (a hung child of a test that
    timed out) would keep the suite's output open and CI waiting until its own limit, long after the last test.
    Runs after the session's fixtures are torn down, so what is left is a leak."""
    leftovers = [process for process in psutil.Process().children(recursive=True) if not _ends_with_us(process)]
    if not leftovers:
        return
    names = []
    for process in leftovers:
        try:
            names.append(f"{process.pid} {' '.join(process.cmdline())[:200]}")
            process.kill()
        except psutil.Error:  # it ended while we looked
            continue
    psutil.wait_procs(leftovers, timeout=10)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(f"killed {len(names)} process(es) the tests left running:", yellow=True)
        for name in names:
            reporter.write_line(f"  {name}", yellow=True)


def _ends_with_us(process: psutil.Process) -> bool:
    """multiprocessing's resource tracker (spawned ranks start one) reads a pipe only this process holds open."""
    try:
        return "from multiprocessing.resource_tracker import main" in " ".join(process.cmdline())
    except psutil.Error:
        return True


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
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of an S3 server (moto's, in its own process on the loopback) for this test session."""
    try:
        import boto3  # noqa: F401 - the client the store uses
        import moto.server  # noqa: F401 - `python -m moto.server` below
    except ImportError as exc:
        _require("moto's S3 server (pip install 'moto[server]')", exc)
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"moto's server exited: {log.read_text()}")
        try:
            return httpx.get(endpoint, timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=60, what="moto's S3 server")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


# moto accepts any credentials; these are what every test client and service is given.
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_client(s3_endpoint: str) -> Any:
    """A boto3 S3 client of the test S3 server (for the tests' own look at buckets)."""
    return s3_client_for(s3_endpoint)


def s3_client_for(endpoint: str) -> Any:
    """A boto3 S3 client of `endpoint` with the test credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_ENV["AWS_REGION"],
        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture(scope="session")
def make_s3_bucket(s3_client: Any) -> Callable[[], str]:
    """Creates a new, empty bucket on demand (a process reaches it with the `s3_env` variables)."""

    def create() -> str:
        name = f"selfsup-test-{secrets.token_hex(4)}"
        s3_client.create_bucket(Bucket=name)
        return name

    return create


@pytest.fixture(scope="session")
def s3_env(s3_endpoint: str) -> dict[str, str]:
    """The standard AWS variables that point a process (a service, a test's own client) at the test S3 server."""
    return {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}


@pytest.fixture
def s3_blob_url(make_s3_bucket: Callable[[], str]) -> str:
    """`SELFSUP_BLOB_URL` of a fresh bucket, under a prefix (as deployments share buckets)."""
    return f"s3://{make_s3_bucket()}/selfsup"


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
    tmp_path_factory: pytest.TempPathFactory,
    make_postgres_database: Callable[[], str],
    redis_url: str,
    make_s3_bucket: Callable[[], str],
    s3_env: dict[str, str],
) -> Iterator[Service]:
    """selfsup up as in production: this machine's PostgreSQL and Redis, blobs in an S3 bucket."""
    service = start_service(
        tmp_path_factory.mktemp("postgres") / "home",
        # Readable text logs here (JSON elsewhere): tests/api/test_operations.py checks `selfsup up`'s start-up.
        {
            "SELFSUP_DATABASE_URL": make_postgres_database(),
            "SELFSUP_REDIS_URL": redis_url,
            "SELFSUP_LOG_FORMAT": "text",
            "SELFSUP_BLOB_URL": f"s3://{make_s3_bucket()}/selfsup",
            **s3_env,
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
