"""Workers on other machines (issue 9): no process depends on another's disk.

The API, a cpu worker and two gpu workers run as separate processes, each with its own `SELFSUP_HOME` and cache
and nothing shared but PostgreSQL, Redis and the object store (moto's S3 server), as on four machines. A job's
gpu worker is SIGKILLed mid-run; the other one downloads the newest checkpoint from the object store, verifies
it, resumes, and ends with the same weights as an uninterrupted run of the same spec.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage.cache import entry_name
from tests.factories import ready_corpus, submit_job, wait_for_job
from tests.faults.conftest import (
    FAST_RECOVERY,
    assert_clean_history,
    event_types,
    final_weights_sha,
    next_redis_database,
    resumable_spec,
    worker_pid,
)
from tests.service import REPO, SELFSUP, TEST_SETTINGS, free_port, wait_until

pytestmark = pytest.mark.integration

MAX_STEPS = 200


@dataclass
class Machine:
    """One process with its own home (its own disk, as far as selfsup knows)."""

    name: str
    home: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True)
        self.log_path = self.home / "process.log"

    def start(self, *args: str) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*SELFSUP, *args], env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def run(self, *args: str) -> str:
        out = subprocess.run([*SELFSUP, *args], env=self.env, cwd=REPO, capture_output=True, text=True, check=True)
        return out.stdout

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return f"--- {self.name} ---\n" + self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def machines(
    tmp_path: Path,
    make_postgres_database: Callable[[], str],
    redis_url: str,
    s3_env: dict[str, str],
    make_s3_bucket: Callable[[], str],
) -> Iterator[dict[str, Machine]]:
    """The API, a cpu worker (with the reconciler) and two gpu workers, sharing no folder; all killed at the end."""
    common = {k: v for k, v in os.environ.items() if not k.startswith(("SELFSUP_", "AWS_"))}
    common.update(TEST_SETTINGS)
    common.update(FAST_RECOVERY)
    # Leases a little longer than the other fault tests' 4 s: on a loaded machine a renewal can come late.
    common["SELFSUP_LEASE_SECONDS"] = "10"
    common.update(s3_env)
    common.update(
        {
            "PYTHONUNBUFFERED": "1",
            "SELFSUP_DATABASE_URL": make_postgres_database(),
            "SELFSUP_REDIS_URL": next_redis_database(redis_url),
            "SELFSUP_BLOB_URL": f"s3://{make_s3_bucket()}/selfsup",
        }
    )
    started = {
        name: Machine(name, tmp_path / name, {**common, "SELFSUP_HOME": str(tmp_path / name)})
        for name in ("api", "cpu", "gpu-a", "gpu-b")
    }
    try:
        started["api"].run("migrate")
        port = free_port()
        started["api"].start("api", "--port", str(port))
        started["api"].env["SELFSUP_TEST_API_URL"] = f"http://127.0.0.1:{port}"
        started["cpu"].start("worker", "--queues", "cpu", "--beat", "--ready-file", str(tmp_path / "cpu" / "ready"))
        for name in ("gpu-a", "gpu-b"):
            started[name].start("worker", "--queues", "gpu", "--ready-file", str(tmp_path / name / "ready"))

        def all_up() -> bool:
            for machine in started.values():
                assert machine.alive(), machine.log()
            try:
                api = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                api = False
            return api and all((tmp_path / name / "ready").is_file() for name in ("cpu", "gpu-a", "gpu-b"))

        wait_until(all_up, timeout=120, interval=0.5, what="the API and three workers")
        yield started
    finally:
        for machine in started.values():
            machine.stop()


def _client(machines: dict[str, Machine]) -> httpx.Client:
    key = machines["api"].run("keys", "create", "--tenant", "alice").strip()
    return httpx.Client(
        base_url=machines["api"].env["SELFSUP_TEST_API_URL"], headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def _logs(machines: dict[str, Machine]) -> str:
    return "\n".join(m.log() for m in machines.values())


# Four processes start (and two jobs train) on a machine a full test run shares: more than the default 300 s.
@pytest.mark.timeout(900)
def test_a_job_resumes_on_another_machine_from_the_object_store(machines: dict[str, Machine], s3_client: Any) -> None:
    client = _client(machines)
    corpus = ready_corpus(client)
    spec = resumable_spec(corpus["id"], max_steps=MAX_STEPS)

    # The uninterrupted reference trains on one gpu worker while the job starts on the other.
    reference = submit_job(client, spec)
    job = submit_job(client, spec)

    def holding_a_checkpoint() -> dict[str, Any] | None:
        body = client.get(f"/v1/jobs/{job['id']}").json()
        assert body["status"] in ("queued", "running"), body
        saved = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
        return body if body["status"] == "running" and body["worker"] and saved and body["step"] >= 60 else None

    running = wait_until(holding_a_checkpoint, timeout=240, interval=0.05, what="the job past its first checkpoint")
    pid = worker_pid(running)
    victim = next(m for m in machines.values() if m.process is not None and m.process.pid == pid)
    survivor = machines["gpu-b" if victim.name == "gpu-a" else "gpu-a"]
    os.kill(pid, signal.SIGKILL)

    reference = wait_for_job(client, reference["id"], timeout=300)
    assert reference["status"] == "succeeded" and reference["restarts"] == 0, (reference, _logs(machines))
    reference_weights = final_weights_sha(client, reference["id"])
    done = wait_for_job(client, job["id"], timeout=300)
    assert done["status"] == "succeeded" and done["step"] == MAX_STEPS, (done, _logs(machines))
    assert done["restarts"] == 1, done
    events = event_types(client, job["id"])
    assert events.count("resumed") == 1 and "crashed" in events, events
    assert_clean_history(client, job["id"], MAX_STEPS)
    assert final_weights_sha(client, job["id"]) == reference_weights

    # The survivor resumed from a checkpoint the victim wrote, downloaded into its own cache...
    resumed = next(e for e in client.get(f"/v1/jobs/{job['id']}/events").json()["data"] if e["type"] == "resumed")
    version = int(resumed["message"].split("checkpoint v", 1)[1].split(" ", 1)[0])
    # "... on <host>:<pid> (<devices>)": the worker that resumed it is the survivor.
    assert f":{survivor.process.pid} (" in resumed["message"], (resumed, survivor.name)  # type: ignore[union-attr]
    bucket, root = machines["api"].env["SELFSUP_BLOB_URL"].removeprefix("s3://").split("/", 1)
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{root}/checkpoints/{job['id']}/v{version:06d}-")
    prefix = listing["Contents"][0]["Key"].removeprefix(f"{root}/").rsplit("/", 1)[0]
    assert (survivor.home / "cache" / "entries" / entry_name(prefix) / "data" / "model.safetensors").is_file()
    # ...and no process kept a blob folder: every blob went through the object store.
    for machine in machines.values():
        assert not (machine.home / "blobs").exists(), machine.name
