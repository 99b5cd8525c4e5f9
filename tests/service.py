"""Start the real service (`selfsup up`: broker, Celery workers, API) for tests, and talk to it over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from selfsup.supervisor import UP_MESSAGE
from storage.blobs import BlobStore, LocalBlobStore
from storage.cache import BlobCache

REPO = Path(__file__).resolve().parent.parent
SELFSUP = [sys.executable, "-m", "selfsup.cli"]

# Small and fast: tight control loop, leases and stream polling, a low upload limit to exercise 413.
TEST_SETTINGS = {
    "SELFSUP_MAX_UPLOAD_BYTES": str(3_000_000),
    "SELFSUP_CONTROL_INTERVAL_SECONDS": "0.2",
    "SELFSUP_LEASE_SECONDS": "10",
    "SELFSUP_RECONCILE_INTERVAL_SECONDS": "2",
    "SELFSUP_TORCH_THREADS": "1",
    # Long test jobs (100,000 steps, cancelled) must not stop for a compile warm-up: `auto` never compiles here.
    "SELFSUP_COMPILE_AUTO_MIN_SECONDS": "1e12",
    "SELFSUP_STREAM_POLL_SECONDS": "0.25",
    # Keys' last uses are written every half second (tests/api/test_keys.py waits for one).
    "SELFSUP_KEY_LAST_USED_FLUSH_SECONDS": "0.5",
    # Every line a logger writes is a JSON object (tests/api/test_operations.py checks them).
    "SELFSUP_LOG_FORMAT": "json",
    # Rate limits on, but far above what any test sends (150 pollers in test_concurrent_clients.py): every
    # request still goes through the limiter; tests/api/test_hostile_input.py runs a second API with a tiny one.
    "SELFSUP_RATE_LIMIT_PER_SECOND": "100000",
    "SELFSUP_RATE_LIMIT_BURST": "100000",
}


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll until `predicate()` is truthy and return it; fail (never hang) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Service:
    """A running selfsup and API keys for two tenants."""

    base_url: str
    home: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, tenant: str = "alice") -> httpx.Client:
        """An HTTP client authenticated as `tenant`."""
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"} if tenant in self.keys else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60)

    def create_key(self, tenant: str, *options: str) -> str:
        """`selfsup keys create --tenant NAME [options]`, as a user runs it. Without options the key has the
        default scopes (read, write) and becomes the tenant's key in `self.keys` (what `client(tenant)` sends);
        with options (`--scope admin`, `--expires-in 2s`…) it is only returned."""
        return self._key_created(tenant, self._create_key(tenant, *options), bool(options))

    def _create_key(self, tenant: str, *options: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*SELFSUP, "keys", "create", "--tenant", tenant, *options],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def _key_created(self, tenant: str, process: subprocess.Popen[bytes], options: bool) -> str:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, (process.args, stdout, stderr)
        key = stdout.decode().strip()
        assert key.startswith("ss_") and "\n" not in key, (stdout, stderr)
        if not options:
            self.keys[tenant] = key
        return key

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `selfsup ARGS` against this service's database, as an operator does (not checked: see returncode)."""
        return subprocess.run([*SELFSUP, *args], env=self.env, cwd=REPO, capture_output=True, text=True)

    def blobs(self) -> BlobStore:
        """The service's blob store, as the service configured it (its folder, or its bucket), for tests to look in."""
        url = self.env.get("SELFSUP_BLOB_URL", "")
        if not url.startswith("s3://"):
            return LocalBlobStore(self.home / "blobs")
        import boto3

        from storage.s3 import S3BlobStore

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        client = boto3.client(
            "s3",
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
            region_name=self.env["AWS_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )
        return S3BlobStore(bucket, prefix, cache=BlobCache(self.home / "test-cache"), client=client)

    def blob_keys(self, prefix: str) -> list[str]:
        """Every key stored under `prefix`, relative to it, sorted (a local store's temporary files included)."""
        return list_keys(self.blobs(), prefix)

    def log(self) -> str:
        """What the service printed so far (for failure messages)."""
        return self.log_path.read_text(errors="replace")[-20_000:]

    def stop(self) -> None:
        """Ctrl-C, as a user stops it; kill only if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def end_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, *, timeout: float = 30) -> None:
    """Send `sig` (a clean stop) and wait; kill it if it has not stopped within `timeout` seconds."""
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running_api(
    env: dict[str, str], log_path: Path, *, timeout: float = 60
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`selfsup api` alone on a free port with `env` (its database already migrated), its output in `log_path`:
    its base URL and process once `/healthz` answers; stopped with Ctrl-C (killed if late) when the block ends."""
    port = free_port()
    with open(log_path, "wb") as log:
        api = subprocess.Popen(
            [*SELFSUP, "api", "--port", str(port)], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            assert api.poll() is None, log_path.read_text(errors="replace")
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout=timeout, what="the API to answer")
        yield url, api
    finally:
        end_process(api, signal.SIGINT)


def list_keys(store: BlobStore, prefix: str) -> list[str]:
    """Every key under `prefix` (files, not folders), relative to it, sorted."""
    found: list[str] = []
    pending = [prefix.rstrip("/")]
    while pending:
        children = store.list_children(pending.pop())
        for child in children:
            if store.exists(child):
                found.append(child[len(prefix.rstrip("/")) + 1 :])
            else:
                pending.append(child)
    return sorted(found)


def start_service(
    home: Path,
    extra_env: dict[str, str] | None = None,
    *,
    timeout: float = 120,
    beside: Callable[[Service], None] | None = None,
) -> Service:
    """Run `selfsup up` in the background and wait (up to `timeout` seconds a stage) until its API is ready.

    `beside(service)`, if given, is called as soon as `selfsup up` is started, to start a test's own processes
    (another worker) while the service starts rather than after."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFSUP_")}
    env.update(TEST_SETTINGS)
    env.update({"SELFSUP_HOME": str(home), "PYTHONUNBUFFERED": "1"})
    env.update(extra_env or {})
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "service.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*SELFSUP, "up", "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = Service(base_url=f"http://127.0.0.1:{port}", home=home, env=env, process=process, log_path=log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"selfsup up exited with {process.returncode}:\n{service.log()}")
        try:
            return httpx.get(f"{service.base_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        if beside is not None:
            beside(service)
        wait_until(ready, timeout=timeout, interval=0.2, what="selfsup up to become ready")
        # The API answers once the database is migrated: the keys are made while the workers start.
        making = {tenant: service._create_key(tenant) for tenant in ("alice", "bob")}
        # `selfsup up` says it is up once the API answers and both workers consume their queues (text or JSON).
        wait_until(lambda: UP_MESSAGE in service.log(), timeout=timeout, what="selfsup up to say both workers consume")
        for tenant, process in making.items():
            service._key_created(tenant, process, False)
    except BaseException:
        service.stop()
        raise
    return service
