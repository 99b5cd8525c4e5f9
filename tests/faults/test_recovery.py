"""A job survives its worker being killed, paused, stopped for a deploy, or its checkpoints being damaged.

Each case ends with the same final weights, bit for bit, as an uninterrupted run of the same job.
"""

from __future__ import annotations

import hashlib
import random
import signal
from typing import Any

import pytest

from tests.factories import submit_job, wait_for_job
from tests.faults.conftest import (
    RESUMABLE_STEPS,
    assert_clean_history,
    event_types,
    final_weights_sha,
    kill,
    resumable_spec,
    worker_pid,
)
from tests.service import Service, wait_until

pytestmark = pytest.mark.integration


def _running_at(client: Any, job_id: str, step: int) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body = client.get(f"/v1/jobs/{job_id}").json()
        assert body["status"] in ("queued", "running"), body
        return body if body["status"] == "running" and body["step"] >= step and body["worker"] else None

    return wait_until(reached, timeout=120, interval=0.05, what=f"job {job_id} at step {step}")  # type: ignore[no-any-return]


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_of_the_trainer_resumes_to_identical_weights(
    fault_service: Service, reference: dict[str, Any], seed: int
) -> None:
    client = fault_service.client()
    job = submit_job(client, resumable_spec(reference["corpus_id"]))
    target = random.Random(seed).randrange(30, RESUMABLE_STEPS - 50)
    kill(worker_pid(_running_at(client, job["id"], target)), signal.SIGKILL)

    done = wait_for_job(client, job["id"], timeout=240)
    assert done["status"] == "succeeded" and done["step"] == RESUMABLE_STEPS, (done, fault_service.log())
    assert done["restarts"] == 1, done
    assert "died" in done["last_error"] or "stopped renewing its lease" in done["last_error"], done
    events = event_types(client, job["id"])
    assert events.count("started") == 1 and events.count("resumed") == 1 and "crashed" in events
    assert_clean_history(client, job["id"], RESUMABLE_STEPS)
    assert final_weights_sha(client, job["id"]) == reference["weights"]


def test_pause_and_resume_continue_to_identical_weights(fault_service: Service, reference: dict[str, Any]) -> None:
    client = fault_service.client()
    job = submit_job(client, resumable_spec(reference["corpus_id"]))
    _running_at(client, job["id"], 60)
    assert client.post(f"/v1/jobs/{job['id']}/pause").status_code == 202
    paused = wait_for_job(client, job["id"], statuses=("paused",), timeout=60)
    assert paused["worker"] is None and 60 <= paused["step"] < RESUMABLE_STEPS
    assert client.post(f"/v1/jobs/{job['id']}/pause").status_code == 409
    checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    assert checkpoints[-1]["step"] == paused["step"]  # saved exactly where it stopped

    assert client.post(f"/v1/jobs/{job['id']}/resume").status_code == 202
    done = wait_for_job(client, job["id"], timeout=240)
    assert done["status"] == "succeeded" and done["restarts"] == 0, done
    assert client.post(f"/v1/jobs/{job['id']}/resume").status_code == 409
    events = event_types(client, job["id"])
    assert ["pause_requested", "paused", "resume_requested", "resumed"] == [
        e for e in events if e in ("pause_requested", "paused", "resume_requested", "resumed")
    ]
    assert_clean_history(client, job["id"], RESUMABLE_STEPS)
    assert final_weights_sha(client, job["id"]) == reference["weights"]


def test_sigterm_checkpoints_and_hands_the_job_to_another_worker(
    fault_service: Service, reference: dict[str, Any]
) -> None:
    client = fault_service.client()
    job = submit_job(client, resumable_spec(reference["corpus_id"]))
    first = _running_at(client, job["id"], 50)
    kill(worker_pid(first), signal.SIGTERM)  # a rolling deploy

    done = wait_for_job(client, job["id"], timeout=240)
    assert done["status"] == "succeeded" and done["restarts"] == 0, (done, fault_service.log())
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    released = [e for e in events if e["type"] == "released"]
    assert len(released) == 1 and "shutting down" in released[0]["message"]
    assert "crashed" not in [e["type"] for e in events]
    assert_clean_history(client, job["id"], RESUMABLE_STEPS)
    assert final_weights_sha(client, job["id"]) == reference["weights"]


def test_a_corrupt_checkpoint_is_detected_and_the_previous_one_used(
    fault_service: Service, reference: dict[str, Any]
) -> None:
    client = fault_service.client()
    job = submit_job(client, resumable_spec(reference["corpus_id"]))
    _running_at(client, job["id"], 80)
    client.post(f"/v1/jobs/{job['id']}/pause")
    paused = wait_for_job(client, job["id"], statuses=("paused",), timeout=60)
    checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    latest, previous = checkpoints[-1], checkpoints[-2]
    assert latest["step"] == paused["step"]

    # Flip one byte of the newest weights and truncate the one before it, in whichever store the service uses
    # (a folder, or S3 objects overwritten): both must be refused.
    store = fault_service.blobs()
    folders = {key.rsplit("/", 1)[-1]: key for key in store.list_children(f"checkpoints/{job['id']}")}
    newest = f"{folders[_folder_of(folders, latest['version'])]}/model.safetensors"
    data = bytearray(b"".join(store.open_range(newest)))
    data[len(data) // 2] ^= 0xFF
    with store.writer(newest) as out:
        out.write(bytes(data))
    corrupt_sha = hashlib.sha256(data).hexdigest()
    older = f"{folders[_folder_of(folders, previous['version'])]}/model.safetensors"
    with store.writer(older) as out:
        out.write(b"".join(store.open_range(older, 0, 100)))

    client.post(f"/v1/jobs/{job['id']}/resume")
    done = wait_for_job(client, job["id"], timeout=240)
    assert done["status"] == "succeeded", (done, fault_service.log())
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    skipped = [e["message"] for e in events if e["type"] == "checkpoint_skipped"]
    assert len(skipped) == 2 and "sha256" in skipped[0] and "bytes" in skipped[1], skipped
    resumed = [e["message"] for e in events if e["type"] == "resumed"]
    assert resumed and f"v{previous['version'] - 1} " in resumed[0], resumed
    served = [f["sha256"] for c in client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"] for f in c["files"]]
    assert corrupt_sha not in served  # the corrupt checkpoint was removed, never served again
    assert_clean_history(client, job["id"], RESUMABLE_STEPS)
    assert final_weights_sha(client, job["id"]) == reference["weights"]


def _folder_of(folders: dict[str, Any], version: int) -> str:
    names = [n for n in folders if n.startswith(f"v{version:06d}-")]
    assert len(names) == 1, folders
    return names[0]


def test_cancel_stops_a_running_job_and_never_ends_succeeded(fault_service: Service, reference: dict[str, Any]) -> None:
    client = fault_service.client()
    job = submit_job(client, resumable_spec(reference["corpus_id"]))
    _running_at(client, job["id"], 20)
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    done = wait_for_job(client, job["id"], timeout=60)
    assert done["status"] == "cancelled" and done["step"] < RESUMABLE_STEPS and done["worker"] is None

    paused = submit_job(client, resumable_spec(reference["corpus_id"]))
    client.post(f"/v1/jobs/{paused['id']}/pause")
    wait_for_job(client, paused["id"], statuses=("paused",), timeout=60)
    assert client.post(f"/v1/jobs/{paused['id']}/cancel").status_code == 202
    assert wait_for_job(client, paused["id"], timeout=30)["status"] == "cancelled"


def test_runtime_limit_checkpoints_and_fails_with_the_reason(fault_service: Service, reference: dict[str, Any]) -> None:
    client = fault_service.client()
    job = submit_job(client, resumable_spec(reference["corpus_id"], max_steps=100_000, max_runtime_seconds=2))
    done = wait_for_job(client, job["id"], timeout=120)
    assert done["status"] == "failed" and "max_runtime_seconds" in done["error"], done
    checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    assert checkpoints[-1]["step"] == done["step"]
