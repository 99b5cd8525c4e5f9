"""Tenants see only their own rows; jobs can be followed, paged and cancelled."""

from __future__ import annotations

import pytest

from tests.factories import ready_corpus, small_job_spec, submit_job, wait_for_job
from tests.service import Service, wait_until

pytestmark = pytest.mark.integration


def test_another_tenant_gets_404_and_sees_nothing(embedded_service: Service) -> None:
    alice, bob = embedded_service.client("alice"), embedded_service.client("bob")
    corpus = ready_corpus(alice)
    job = wait_for_job(
        alice,
        submit_job(alice, small_job_spec(corpus["id"], training={"max_steps": 5}, checkpointing={"every_steps": 5}))[
            "id"
        ],
    )
    checkpoint = alice.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"][0]

    for path in (
        f"/v1/corpora/{corpus['id']}",
        f"/v1/jobs/{job['id']}",
        f"/v1/jobs/{job['id']}/metrics",
        f"/v1/jobs/{job['id']}/events",
        f"/v1/jobs/{job['id']}/checkpoints",
        f"/v1/checkpoints/{checkpoint['id']}",
        f"/v1/checkpoints/{checkpoint['id']}/archive",
        f"/v1/checkpoints/{checkpoint['id']}/files/config.json",
    ):
        response = bob.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", path
        assert alice.get(path).status_code == 200, path
    assert bob.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
    assert bob.delete(f"/v1/corpora/{corpus['id']}").status_code == 404
    assert bob.post("/v1/jobs", json=small_job_spec(corpus["id"])).status_code == 422  # not bob's corpus
    bob_corpora = {c["id"] for c in bob.get("/v1/corpora").json()["data"]}
    bob_jobs = {j["id"] for j in bob.get("/v1/jobs").json()["data"]}
    assert corpus["id"] not in bob_corpora and job["id"] not in bob_jobs
    assert corpus["id"] in {c["id"] for c in alice.get("/v1/corpora", params={"limit": 200}).json()["data"]}


def test_running_job_shows_eta_and_cancels_at_a_step_boundary(service: Service) -> None:
    client = service.client()
    corpus = ready_corpus(client)
    job = submit_job(client, small_job_spec(corpus["id"], training={"max_steps": 100_000}))

    def running_with_progress() -> dict | None:
        body = client.get(f"/v1/jobs/{job['id']}").json()
        return body if body["status"] == "running" and body["step"] >= 10 and body["eta_seconds"] else None

    running = wait_until(running_with_progress, timeout=120, what="job running with an ETA")
    assert running["eta_seconds"] > 0 and running["metrics"]["train_loss"] > 0
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    done = wait_for_job(client, job["id"], timeout=60)
    assert done["status"] == "cancelled" and done["step"] < 100_000
    events = [e["type"] for e in client.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
    assert events[-1] == "cancelled" and "cancel_requested" in events
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409


def test_lists_page_with_an_opaque_cursor_and_filter_by_status(embedded_service: Service) -> None:
    client = embedded_service.client("bob")
    corpus = ready_corpus(client)
    created = [
        submit_job(client, small_job_spec(corpus["id"], training={"max_steps": 100_000}))["id"] for _ in range(5)
    ]
    for job_id in created:  # cancel while queued or running, so the workers stay free
        client.post(f"/v1/jobs/{job_id}/cancel")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/jobs", params=params).json()
        assert len(page["data"]) <= 2
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen[:5] == list(reversed(created)) and len(seen) == len(set(seen))
    for job_id in created:
        wait_for_job(client, job_id)
    cancelled = {j["id"] for j in client.get("/v1/jobs", params={"status": "cancelled", "limit": 200}).json()["data"]}
    assert set(created) <= cancelled
