"""`training.compile` through the service: a compile that fails falls back to eager, and `auto` leaves a
tiny job uncompiled, each saying so in the job's events."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.factories import ready_corpus, small_job_spec, submit_job, wait_for_job
from tests.faults.conftest import COMPILE_BROKEN
from tests.service import Service

pytestmark = pytest.mark.integration


def _events(client: object, job_id: str) -> list[dict[str, str]]:
    return client.get(f"/v1/jobs/{job_id}/events").json()["data"]  # type: ignore[attr-defined, no-any-return]


def test_a_failing_compile_trains_eager_and_auto_leaves_a_tiny_job_uncompiled(
    shared_fault_service: Callable[[str], Service],
) -> None:
    # The injected backend fails the way a broken compiler toolchain would, for the job named COMPILE_BROKEN.
    service = shared_fault_service("embedded")
    client = service.client()
    corpus = ready_corpus(client)
    broken = submit_job(
        client, small_job_spec(corpus["id"], name=COMPILE_BROKEN, training={"compile": True, "max_steps": 20})
    )
    tiny = submit_job(client, small_job_spec(corpus["id"], name="tiny-auto", training={"max_steps": 20}))

    done = wait_for_job(client, broken["id"], timeout=240)
    assert done["status"] == "succeeded", done
    events = _events(client, broken["id"])
    assert "crashed" not in [e["type"] for e in events], events
    failed = [e for e in events if e["type"] == "compile_failed"]
    assert len(failed) == 1 and "injected compile failure" in failed[0]["message"], failed
    assert "training eager instead" in failed[0]["message"]
    assert not [e for e in events if e["type"] == "compiled"]
    checkpoints = client.get(f"/v1/jobs/{broken['id']}/checkpoints").json()["data"]
    assert any("final" in c["aliases"] for c in checkpoints)

    done = wait_for_job(client, tiny["id"], timeout=240)
    assert done["status"] == "succeeded", done
    choices = [e["message"] for e in _events(client, tiny["id"]) if e["type"].startswith("compile")]
    assert choices == ["compile off (auto: 20 steps to go, too few to pay back a warm-up)"], choices
