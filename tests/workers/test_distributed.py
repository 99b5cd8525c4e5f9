"""Jobs on several devices, end to end: a gpu worker with SELFSUP_WORKER_DEVICES=2 trains `resources.devices: 2`
jobs with two torchrun processes (gloo on the CPU) that record the loss curve one process records, and a rank
that dies fails only that attempt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import ready_corpus, submit_job, wait_for_job
from tests.faults.conftest import assert_clean_history, event_types
from tests.service import Service, start_service, wait_until

MAX_STEPS = 20
# Each job on two devices starts three processes that import torch and transformers (torchrun and two ranks).
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def two_device_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """selfsup up with a gpu worker of two devices, and rank 1 of the job called `killed` SIGKILLed after step 8.

    A long lease: the worker, not the reconciler, is the one to see the dead rank (torchrun's exit) and requeue."""
    service = start_service(
        tmp_path_factory.mktemp("two-devices") / "home",
        {
            "SELFSUP_LEASE_SECONDS": "60",
            "SELFSUP_WORKER_DEVICES": "2",
            "SELFSUP_FAULT_INJECTION": "kill_rank_at_step:8@killed",
        },
    )
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def corpus_id(two_device_service: Service) -> str:
    return str(ready_corpus(two_device_service.client())["id"])


def _spec(corpus_id: str, name: str, devices: int) -> dict[str, Any]:
    """A tiny GPT-2 job; dropout off, so the ranks' own dropout draws cannot change the curve."""
    return {
        "name": name,
        "corpus_ids": [corpus_id],
        "objective": {"type": "causal_lm"},
        "tokenizer": {"type": "char"},
        "model": {"family": "gpt2", "layers": 1, "heads": 2, "width": 32, "context_length": 32, "dropout": 0.0},
        "training": {"max_steps": MAX_STEPS, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 2},
        "evaluation": {"every_steps": 5, "batches": 2},
        "checkpointing": {"every_steps": 5, "keep_last": 10},
        "resources": {"devices": devices},
    }


def _curve(client: httpx.Client, job_id: str, name: str) -> dict[int, float]:
    metrics = client.get(f"/v1/jobs/{job_id}/metrics", params={"name": name, "limit": 100_000}).json()["data"]
    return {m["step"]: m["value"] for m in metrics if m["name"] == name}


def _processes_naming(text: str) -> list[int]:
    """The pids of live processes whose command line holds `text` (torchrun and its ranks name their job)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # it ended while we looked
            continue
    return pids


def test_two_processes_record_the_loss_curve_of_one(two_device_service: Service, corpus_id: str) -> None:
    client = two_device_service.client()
    two = submit_job(client, _spec(corpus_id, "two-devices", 2))
    one = submit_job(client, _spec(corpus_id, "one-device", 1))
    two, one = wait_for_job(client, two["id"]), wait_for_job(client, one["id"])
    assert two["status"] == one["status"] == "succeeded", (two, one)
    assert two["step"] == one["step"] == MAX_STEPS
    for name in ("train_loss", "val_loss"):
        curve_two, curve_one = _curve(client, two["id"], name), _curve(client, one["id"], name)
        assert len(curve_one) >= 3 and curve_two.keys() == curve_one.keys(), (name, curve_two, curve_one)
        for step, value in curve_one.items():
            assert curve_two[step] == pytest.approx(value, rel=1e-4), (name, step)
    started = next(e for e in client.get(f"/v1/jobs/{two['id']}/events").json()["data"] if e["type"] == "started")
    assert "2 × cpu" in started["message"], started
    wait_until(lambda: not _processes_naming(two["id"]), timeout=120, what="the job's processes to end")


def test_a_killed_rank_fails_the_attempt_and_the_job_resumes_to_max_steps(
    two_device_service: Service, corpus_id: str
) -> None:
    client = two_device_service.client()
    job = wait_for_job(client, submit_job(client, _spec(corpus_id, "killed", 2))["id"])
    assert job["status"] == "succeeded" and job["step"] == MAX_STEPS, job
    assert job["restarts"] == 1, job
    types = event_types(client, job["id"])
    assert types.count("crashed") == 1 and types.count("resumed") == 1, types
    crashed = next(e for e in client.get(f"/v1/jobs/{job['id']}/events").json()["data"] if e["type"] == "crashed")
    assert "a training process failed" in crashed["message"], crashed
    assert_clean_history(client, job["id"], MAX_STEPS)
    # Neither torchrun nor a rank of either attempt outlives the job (the job ends before its processes exit).
    wait_until(lambda: not _processes_naming(job["id"]), timeout=120, what="the job's processes to end")


def test_a_job_on_more_machines_than_one_is_refused(two_device_service: Service, corpus_id: str) -> None:
    spec = {**_spec(corpus_id, "two-nodes", 2), "resources": {"devices": 2, "nodes": 2}}
    response = two_device_service.client().post("/v1/jobs", json=spec)
    assert response.status_code == 422, response.text
    assert "multi-node jobs are not supported yet" in response.text
