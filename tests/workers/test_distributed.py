"""Jobs on several devices, end to end: a gpu worker with SELFSUP_WORKER_DEVICES=2 trains `resources.devices: 2`
jobs with two torchrun processes (gloo on the CPU) that record the loss curve one process records; a rank that
dies fails only that attempt; cancel, pause, the worker's SIGTERM and a lost lease stop every rank; a job paused on
two devices resumes on one; and a job no connected worker fits is never handed to one, and says why it waits."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, update

from storage.tables import Job, utcnow
from tests.factories import ready_corpus, submit_job, wait_for_job
from tests.faults.conftest import assert_clean_history, event_types, kill, worker_pid
from tests.service import REPO, SELFSUP, Service, end_process, start_service, wait_until
from workers.training.precision import cpu_has_amx

MAX_STEPS = 20
COMPILE_BROKEN = "compile-broken"  # its processes get a torch.compile backend that fails
# Each job on two devices starts three processes that import torch and transformers (torchrun and two ranks).
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def two_device_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """selfsup up with a gpu worker of two devices and, on the same broker, a second gpu worker of one device; rank 1
    of the job called `killed` is SIGKILLed after step 8.

    A long lease: the worker, not the reconciler, is the one to see the dead rank (torchrun's exit) and requeue."""
    service = start_service(
        tmp_path_factory.mktemp("two-devices") / "home",
        {
            "SELFSUP_LEASE_SECONDS": "60",
            "SELFSUP_WORKER_DEVICES": "2",
            "SELFSUP_FAULT_INJECTION": f"kill_rank_at_step:8@killed,compile_error@{COMPILE_BROKEN}",
            # dynamo, DDP's graph split and AOT autograd without inductor's C++ code generation (minutes here).
            "SELFSUP_COMPILE_BACKEND": "aot_eager",
            # The opposite of what `auto` picks on this CPU, so a setting that never reached the trainer shows (the
            # jobs here say fp32, but for the one that checks it).
            "SELFSUP_CPU_BF16_MATMULS": str(not cpu_has_amx()).lower(),
        },
    )
    ready = service.home / "one-device-worker.ready"
    with open(service.home / "one-device-worker.log", "wb") as log:
        # No SELFSUP_REDIS_URL: it finds the embedded broker `selfsup up` started in the same home, as a user's would.
        one_device = subprocess.Popen(
            [*SELFSUP, "worker", "--queues", "gpu", "--ready-file", str(ready)],
            env={**service.env, "SELFSUP_WORKER_DEVICES": "1"},
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(ready.exists, timeout=120, what="the one-device gpu worker")
        yield service
    finally:
        end_process(one_device, timeout=60)
        service.stop()


@pytest.fixture(scope="module")
def corpus_id(two_device_service: Service) -> str:
    return str(ready_corpus(two_device_service.client())["id"])


def _spec(
    corpus_id: str,
    name: str,
    devices: int,
    max_steps: int = MAX_STEPS,
    every: int = 5,
    evaluate_every: int = 0,
    compile: bool | str = "auto",
    precision: str = "fp32",
) -> dict[str, Any]:
    """A tiny GPT-2 job; dropout off, so the ranks' own dropout draws cannot change the curve; IEEE fp32 products
    (`auto` on a CPU with AMX rounds them to bf16, which rounds N ranks' rows apart differently from one process's:
    the curves would agree to a few 1e-4, not to the 1e-4 these tests hold them to)."""
    return {
        "name": name,
        "corpus_ids": [corpus_id],
        "objective": {"type": "causal_lm"},
        "tokenizer": {"type": "char"},
        "model": {"family": "gpt2", "layers": 1, "heads": 2, "width": 32, "context_length": 32, "dropout": 0.0},
        "training": {
            "max_steps": max_steps,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "warmup_steps": 2,
            "compile": compile,
            "precision": precision,
        },
        "evaluation": {"every_steps": evaluate_every or every, "batches": 2},
        "checkpointing": {"every_steps": every, "keep_last": 100},
        "resources": {"devices": devices},
    }


def _curve(client: httpx.Client, job_id: str, name: str) -> dict[int, float]:
    metrics = client.get(f"/v1/jobs/{job_id}/metrics", params={"name": name, "limit": 100_000}).json()["data"]
    return {m["step"]: m["value"] for m in metrics if m["name"] == name}


def _processes_naming(text: str) -> list[int]:
    """The pids of live processes whose command line holds `text` (torchrun and its ranks name their job)."""
    return [
        process.pid
        for process in psutil.process_iter(["cmdline"])
        if any(text in part for part in process.info["cmdline"] or ()) and not _ended(process.pid)
    ]


def _ended(pid: int) -> bool:
    """Whether a process has exited (gone, or a zombie its parent has not reaped yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _one_device_worker_log(service: Service) -> str:
    return (service.home / "one-device-worker.log").read_text(errors="replace")


def _running_with_every_rank(client: httpx.Client, job_id: str, step: int) -> tuple[dict[str, Any], list[int]]:
    """Wait until a two-device job runs past `step`; the job and the pids of its processes (torchrun, two ranks)."""

    def running() -> dict[str, Any] | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] in ("queued", "running"), job
        return job if job["status"] == "running" and job["step"] >= step else None

    job = wait_until(running, timeout=180, what=f"job {job_id} to pass step {step}")
    pids = wait_until(lambda: p if len(p := _processes_naming(job_id)) >= 3 else None, timeout=60, what="3 processes")
    return job, pids


def _all_gone(pids: list[int]) -> None:
    wait_until(lambda: all(_ended(pid) for pid in pids), timeout=120, what=f"{pids} to end")


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
    # The job's wake-ups went only to the worker it fits: the one-device worker never took (and dropped) one.
    assert f"selfsup.train_job('{two['id']}',)" not in _one_device_worker_log(two_device_service)
    wait_until(lambda: not _processes_naming(two["id"]), timeout=120, what="the job's processes to end")


def test_two_processes_compile_together_or_both_train_eager(two_device_service: Service, corpus_id: str) -> None:
    """`training.compile: true` on two devices: the ranks compile at rank 0's order and record one process's curve;
    where compiling fails (on every rank here), the job says so and trains eager, no rank left waiting."""
    client = two_device_service.client()
    compiled = submit_job(client, _spec(corpus_id, "two-devices-compiled", 2, compile=True))
    broken = submit_job(client, _spec(corpus_id, COMPILE_BROKEN, 2, compile=True))
    one = submit_job(client, _spec(corpus_id, "one-device-eager", 1, compile=False))
    compiled, broken, one = (wait_for_job(client, job["id"]) for job in (compiled, broken, one))
    assert compiled["status"] == broken["status"] == one["status"] == "succeeded", (compiled, broken, one)
    events = {job["id"]: event_types(client, job["id"]) for job in (compiled, broken)}
    assert "compiled" in events[compiled["id"]] and "compile_failed" not in events[compiled["id"]], events
    assert "compile_failed" in events[broken["id"]] and "compiled" not in events[broken["id"]], events
    said = client.get(f"/v1/jobs/{broken['id']}/events").json()["data"]
    failed = next(e for e in said if e["type"] == "compile_failed")
    assert "injected compile failure" in failed["message"], failed
    expected = _curve(client, one["id"], "train_loss")
    assert len(expected) >= 3
    for job in (compiled, broken):
        curve = _curve(client, job["id"], "train_loss")
        assert curve.keys() == expected.keys(), (job["name"], curve, expected)
        for step, value in expected.items():
            assert curve[step] == pytest.approx(value, rel=1e-3), (job["name"], step)


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


def test_cancel_stops_every_rank(two_device_service: Service, corpus_id: str) -> None:
    client = two_device_service.client()
    job = submit_job(client, _spec(corpus_id, "cancelled", 2, max_steps=100_000, precision="auto"))
    _, pids = _running_with_every_rank(client, job["id"], 5)
    # SELFSUP_CPU_BF16_MATMULS reached the trainer, and its `started` event says how the job computes.
    started = next(e for e in client.get(f"/v1/jobs/{job['id']}/events").json()["data"] if e["type"] == "started")
    numerics = "fp32" if cpu_has_amx() else "fp32 with bf16 matrix products"
    assert f"(2 × cpu, {numerics}," in started["message"], started
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    done = wait_for_job(client, job["id"], timeout=60)
    assert done["status"] == "cancelled" and 5 <= done["step"] < 100_000, done
    _all_gone(pids)


LONG_STEPS = 300  # long enough that a pause requested at step 10 lands well before the end, on either count
# Every logged step (each 10th) evaluates too: a pause read at a logged step must not skip that step's evaluation.
LONG: dict[str, Any] = {"max_steps": LONG_STEPS, "every": 50, "evaluate_every": 10}


@pytest.fixture(scope="module")
def long_reference(two_device_service: Service, corpus_id: str) -> str:
    """An uninterrupted one-device run of the long spec (submitted, not awaited: it trains beside the test's job)."""
    client = two_device_service.client()
    return str(submit_job(client, _spec(corpus_id, "reference-long", 1, **LONG))["id"])


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_a_job_paused_on_n_devices_resumes_on_m_with_the_same_curve(
    two_device_service: Service, corpus_id: str, long_reference: str, before: int, after: int
) -> None:
    client = two_device_service.client()
    job = submit_job(client, _spec(corpus_id, f"paused-{before}-{after}", before, **LONG))
    if before > 1:
        _, pids = _running_with_every_rank(client, job["id"], 10)
    else:
        wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["step"] >= 10, timeout=180, what="step 10")
    assert client.post(f"/v1/jobs/{job['id']}/pause").status_code == 202
    paused = wait_for_job(client, job["id"], statuses=("paused",), timeout=60)
    assert 10 <= paused["step"] < LONG_STEPS and paused["worker"] is None, paused
    if before > 1:
        _all_gone(pids)  # the ranks stopped with rank 0, not only the job's status

    # The batch does not depend on the device count: a job checkpointed on N devices goes on on M.
    refused = client.post(f"/v1/jobs/{job['id']}/resume", json={"resources": {"devices": 3}})
    assert refused.status_code == 422, refused.text
    assert "must be a multiple of resources.devices (3)" in refused.json()["error"]["message"], refused.text
    assert refused.json()["error"]["details"][0]["field"] == "training.batch_size", refused.text
    resumed = client.post(f"/v1/jobs/{job['id']}/resume", json={"resources": {"devices": after}})
    assert resumed.status_code == 202 and resumed.json()["spec"]["resources"]["devices"] == after, resumed.text
    done, reference = wait_for_job(client, job["id"]), wait_for_job(client, long_reference)
    assert done["status"] == reference["status"] == "succeeded", (done, reference)
    assert done["step"] == LONG_STEPS and done["restarts"] == 0, done
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    messages = {e["type"]: e["message"] for e in events}
    assert ("2 × cpu" in messages["started"]) == (before == 2), messages
    assert ("2 × cpu" in messages["resumed"]) == (after == 2), messages
    assert f"at step {paused['step']}" in messages["resumed"], messages
    assert_clean_history(client, job["id"], LONG_STEPS)
    for name in ("train_loss", "val_loss"):
        curve, expected = _curve(client, job["id"], name), _curve(client, long_reference, name)
        assert len(expected) >= 30 and curve.keys() == expected.keys(), (name, curve, expected)
        for step, value in expected.items():
            assert curve[step] == pytest.approx(value, rel=1e-4), (name, step)


def test_sigterm_of_the_worker_stops_every_rank_and_the_job_goes_on(
    two_device_service: Service, corpus_id: str
) -> None:
    client = two_device_service.client()
    max_steps = 150
    job = submit_job(client, _spec(corpus_id, "deployed", 2, max_steps=max_steps, every=25))
    running, pids = _running_with_every_rank(client, job["id"], 10)
    kill(worker_pid(running), signal.SIGTERM)  # a rolling deploy: `selfsup up` starts the worker again
    _all_gone(pids)
    done = wait_for_job(client, job["id"], timeout=240)
    assert done["status"] == "succeeded" and done["step"] == max_steps and done["restarts"] == 0, done
    types = event_types(client, job["id"])
    assert types.count("released") == 1 and types.count("resumed") == 1 and "crashed" not in types, types
    assert_clean_history(client, job["id"], max_steps)


def test_a_lost_lease_stops_every_rank(two_device_service: Service, corpus_id: str) -> None:
    client = two_device_service.client()
    max_steps = 150
    job = submit_job(client, _spec(corpus_id, "stolen", 2, max_steps=max_steps, every=25))
    _, pids = _running_with_every_rank(client, job["id"], 10)
    # Another worker takes the job over (as one does after a network partition), then goes silent itself.
    engine = create_engine(f"sqlite:///{two_device_service.home / 'selfsup.db'}")
    with engine.begin() as connection:
        connection.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(lease_owner="elsewhere:1", lease_expires_at=utcnow() + timedelta(seconds=2))
        )
    engine.dispose()
    _all_gone(pids)  # rank 0 saw the lease gone at its next flush and stopped the others without writing
    done = wait_for_job(client, job["id"], timeout=240)  # the reconciler requeues the silent thief's job
    assert done["status"] == "succeeded" and done["step"] == max_steps and done["restarts"] == 1, done
    assert "elsewhere:1 stopped renewing its lease" in done["last_error"], done
    assert_clean_history(client, job["id"], max_steps)


def test_a_job_no_worker_fits_waits_and_says_why(two_device_service: Service, corpus_id: str) -> None:
    client = two_device_service.client()
    spec = _spec(corpus_id, "too-wide", 4)
    job = submit_job(client, spec)

    def said() -> str | None:
        events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
        return next((e["message"] for e in events if e["type"] == "waiting_for_devices"), None)

    message = wait_until(said, timeout=60, what="the job to say why it waits")
    assert "a gpu worker with 4 devices" in message and "the largest connected has 2" in message, message
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    # No connected worker took its wake-up (and dropped it): it waits in its own queue for one it fits.
    logs = two_device_service.log_path.read_text(errors="replace") + _one_device_worker_log(two_device_service)
    assert f"selfsup.train_job('{job['id']}',)" not in logs
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    assert wait_for_job(client, job["id"], timeout=30)["status"] == "cancelled"
