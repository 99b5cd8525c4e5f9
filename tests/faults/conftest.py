"""Services for the failure-mode tests: short leases and a fast reconciler, one per fault configuration."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.factories import ready_corpus, submit_job, wait_for_job
from tests.service import Service, start_service

FAST_RECOVERY = {
    "SELFSUP_LEASE_SECONDS": "4",
    "SELFSUP_RECONCILE_INTERVAL_SECONDS": "1",
    "SELFSUP_CONTROL_INTERVAL_SECONDS": "0.2",
}


# Long enough to interrupt at a chosen step with checkpoints (every 25 steps) before and after it.
RESUMABLE_STEPS = 200


def resumable_spec(corpus_id: str, **training: Any) -> dict[str, Any]:
    """A job long enough to interrupt, with dropout so a resume must restore the RNG to match."""
    return {
        "name": "resumable",
        "corpus_ids": [corpus_id],
        "objective": {"type": "causal_lm"},
        "tokenizer": {"type": "char"},
        "model": {"family": "gpt2", "layers": 2, "heads": 2, "width": 64, "context_length": 32, "dropout": 0.1},
        "training": {
            "max_steps": RESUMABLE_STEPS,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "warmup_steps": 20,
            **training,
        },
        "evaluation": {"every_steps": 100, "batches": 2},
        "checkpointing": {"every_steps": 25, "keep_last": 100},
    }


def final_weights_sha(client: httpx.Client, job_id: str) -> str:
    """The sha256 of model.safetensors in a job's final checkpoint."""
    checkpoints = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    final = [c for c in checkpoints if "final" in c["aliases"]]
    assert len(final) == 1, checkpoints
    return next(f["sha256"] for f in final[0]["files"] if f["name"] == "model.safetensors")


def worker_pid(job: dict[str, Any]) -> int:
    """The pid of the worker that holds a running job."""
    assert job["worker"], job
    return int(job["worker"].rsplit(":", 1)[1])


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send a signal to a process, as an operator or the kernel would."""
    os.kill(pid, sig)


def event_types(client: httpx.Client, job_id: str) -> list[str]:
    """A job's event types, oldest first."""
    return [e["type"] for e in client.get(f"/v1/jobs/{job_id}/events").json()["data"]]


def assert_clean_history(client: httpx.Client, job_id: str, max_steps: int) -> None:
    """Unique, increasing checkpoint versions and one metric value per (step, name)."""
    versions = [c["version"] for c in client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]]
    assert versions == sorted(set(versions)), versions
    metrics = client.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 100_000}).json()["data"]
    keys = [(m["step"], m["name"]) for m in metrics]
    assert len(keys) == len(set(keys)), "a replayed step left duplicate metrics"
    assert max(m["step"] for m in metrics) == max_steps


_redis_databases = iter(range(8, 16))


def next_redis_database(base_url: str) -> str:
    """A Redis database of its own (8 to 15; 7 is the session service's), emptied first."""
    url = f"{base_url.rsplit('/', 1)[0]}/{next(_redis_databases)}"
    redis.Redis.from_url(url).flushdb()
    return url


# One service per backend serves every fault test that needs no settings of its own: each injected fault is
# limited to jobs of its own name (see workers/faults.py), so the tests' other jobs train undisturbed. Starting a
# service (migrations, two workers importing torch and transformers, the API) is the slow part of these tests.
CRASH_LOOP = "crash-loop"  # raises at step 30, every run
TORN_CHECKPOINT = "faulty"  # killed before checkpoint v3 is renamed into place, once
COMPILE_BROKEN = "compile-broken"  # torch.compile gets a failing backend
SHARED_FAULTS = {
    "SELFSUP_FAULT_INJECTION": ",".join(
        [
            f"raise_at_step:30@{CRASH_LOOP}",
            f"exit_before_checkpoint_rename:3@{TORN_CHECKPOINT}",
            f"compile_error@{COMPILE_BROKEN}",
        ]
    ),
    # A killed upload's temporary blobs are swept after two seconds (test_infrastructure.py kills the API).
    "SELFSUP_ORPHAN_SECONDS": "2",
}


def _start_fault_service(
    request: pytest.FixtureRequest,
    backend: str,
    env: dict[str, str],
    beside: Callable[[Service], None] | None = None,
) -> Service:
    """A fast-recovering service (embedded, or PostgreSQL + Redis + blobs in S3) with extra settings `env`;
    `beside` as `start_service`'s."""
    settings = dict(FAST_RECOVERY, **env)
    if backend == "postgres":
        settings["SELFSUP_DATABASE_URL"] = request.getfixturevalue("make_postgres_database")()
        # Each service gets its own Redis database: services sharing queues would take each other's tasks.
        settings.setdefault("SELFSUP_REDIS_URL", next_redis_database(request.getfixturevalue("redis_url")))
        # The production-like backend keeps its blobs in an object store: the faults hold there too.
        settings.setdefault("SELFSUP_BLOB_URL", f"s3://{request.getfixturevalue('make_s3_bucket')()}/selfsup")
        settings.update(request.getfixturevalue("s3_env"))
    factory = request.getfixturevalue("tmp_path_factory")
    return start_service(factory.mktemp(f"faults-{backend}") / "home", settings, beside=beside)


@pytest.fixture(scope="package")
def shared_fault_service(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Service]]:
    """The shared fault service of a backend (`SHARED_FAULTS`), started on first use; all stop after the package."""
    started: dict[str, Service] = {}

    def get(backend: str) -> Service:
        if backend not in started:
            started[backend] = _start_fault_service(request, backend, SHARED_FAULTS)
        return started[backend]

    try:
        yield get
    finally:
        for service in started.values():
            service.stop()


@pytest.fixture
def make_fault_service(request: pytest.FixtureRequest) -> Iterator[Callable[..., Service]]:
    """Start services of a test's own (settings that would disturb other tests' jobs); they stop when it ends."""
    started: list[Service] = []

    def make(backend: str, beside: Callable[[Service], None] | None = None, **env: str) -> Service:
        service = _start_fault_service(request, backend, env, beside)
        started.append(service)
        return service

    try:
        yield make
    finally:
        for service in started:
            service.stop()


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def fault_service(request: pytest.FixtureRequest, shared_fault_service: Callable[[str], Service]) -> Service:
    """The shared fast-recovering service of each backend."""
    return shared_fault_service(request.param)


@pytest.fixture(scope="module")
def reference(fault_service: Service) -> dict[str, Any]:
    """The corpus and the final weights of an uninterrupted run of `resumable_spec` on this service."""
    client = fault_service.client()
    corpus = ready_corpus(client)
    job = wait_for_job(client, submit_job(client, resumable_spec(corpus["id"]))["id"])
    assert job["status"] == "succeeded", job
    assert event_types(client, job["id"]).count("started") == 1
    return {"corpus_id": corpus["id"], "weights": final_weights_sha(client, job["id"])}
