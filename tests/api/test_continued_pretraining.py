"""Continued pretraining through HTTP: pretrain on corpus A, continue from its final checkpoint on corpus B.

The continued job starts at the parent's loss (not at random-init loss), keeps the parent's shape and tokenizer,
and its `selfsup.json` and model card name the parent checkpoint, its files' sha256s and the first corpus.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.factories import api_error, ready_corpus, shakespeare_slice, small_job_spec, submit_job, wait_for_job
from tests.service import Service, wait_until

pytestmark = pytest.mark.integration

TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}


def continued_spec(corpus_id: str, checkpoint_id: str, **overrides: Any) -> dict[str, Any]:
    """A job on `corpus_id` that starts from `checkpoint_id`: no model or tokenizer, those come from the parent."""
    spec = small_job_spec(corpus_id, name="continued", init_from={"checkpoint_id": checkpoint_id}, **overrides)
    del spec["model"], spec["tokenizer"]
    return spec


def losses(client: httpx.Client, job_id: str) -> list[float]:
    data = client.get(f"/v1/jobs/{job_id}/metrics", params={"name": "train_loss"}).json()["data"]
    return [m["value"] for m in data]


def final_checkpoint(client: httpx.Client, job_id: str) -> dict[str, Any]:
    checkpoints = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    return next(c for c in checkpoints if "final" in c["aliases"])  # type: ignore[no-any-return]


def file_text(client: httpx.Client, checkpoint_id: str, name: str) -> str:
    response = client.get(f"/v1/checkpoints/{checkpoint_id}/files/{name}")
    assert response.status_code == 200, response.text
    return response.text


def sha256s(checkpoint: dict[str, Any], names: set[str] | None = None) -> dict[str, str]:
    return {f["name"]: f["sha256"] for f in checkpoint["files"] if names is None or f["name"] in names}


def test_continue_from_a_checkpoint_on_a_second_corpus(embedded_service: Service) -> None:
    alice = embedded_service.client("alice")
    corpus_a = ready_corpus(alice, shakespeare_slice(60_000))
    corpus_b = ready_corpus(alice, shakespeare_slice(600_000)[540_000:])
    parent_job = submit_job(alice, small_job_spec(corpus_a["id"], name="first", training={"max_steps": 60}))
    assert wait_for_job(alice, parent_job["id"])["status"] == "succeeded", embedded_service.log()
    parent = final_checkpoint(alice, parent_job["id"])
    parent_losses = losses(alice, parent_job["id"])

    # A spec that contradicts the parent's shape or tokenizer is refused, naming the field.
    body = api_error(
        alice.post("/v1/jobs", json={**continued_spec(corpus_b["id"], parent["id"]), "model": {"width": 128}}), 422
    )
    assert [d["field"] for d in body["details"]] == ["model.width"], body
    assert "64" in body["message"] and "128" in body["message"]
    body = api_error(
        alice.post("/v1/jobs", json={**continued_spec(corpus_b["id"], parent["id"]), "tokenizer": {"type": "bpe"}}), 422
    )
    assert [d["field"] for d in body["details"]] == ["tokenizer.type"], body
    # Agreeing values are fine to give; an unknown checkpoint is refused like an unknown corpus.
    body = api_error(alice.post("/v1/jobs", json=continued_spec(corpus_b["id"], "ckpt_0000000000")), 422)
    assert body["details"][0]["field"] == "init_from.checkpoint_id"
    unknown_model = {**continued_spec(corpus_b["id"], parent["id"]), "init_from": {"model_id": "mdl_0000000000"}}
    body = api_error(alice.post("/v1/jobs", json=unknown_model), 422)
    assert body["details"] == [{"field": "init_from.model_id", "message": "no model mdl_0000000000"}], body
    body = api_error(
        alice.post("/v1/jobs", json={**continued_spec(corpus_b["id"], parent["id"]), "init_from": {}}), 422
    )
    assert body["details"][0]["field"] == "init_from"

    # Bob cannot start from alice's checkpoint: to him it does not exist.
    bob = embedded_service.client("bob")
    bobs_corpus = ready_corpus(bob, shakespeare_slice(20_000))
    body = api_error(bob.post("/v1/jobs", json=continued_spec(bobs_corpus["id"], parent["id"])), 422)
    assert body["details"] == [{"field": "init_from.checkpoint_id", "message": f"no checkpoint {parent['id']}"}], body

    spec = continued_spec(corpus_b["id"], parent["id"], model={"context_length": 32})  # agrees: accepted
    child_job = submit_job(alice, spec)
    assert child_job["spec"]["init_from"] == {"checkpoint_id": parent["id"]}
    assert child_job["spec"]["model"] == parent_job["spec"]["model"]  # the parent's shape
    assert child_job["spec"]["tokenizer"] == parent_job["spec"]["tokenizer"]
    done = wait_for_job(alice, child_job["id"])
    assert done["status"] == "succeeded", (done, embedded_service.log())
    assert done["step"] == 40  # its own steps, counted from 0

    # It starts where the parent ended, not at random-init loss (the parent's own first step, about ln(vocab)).
    child_losses = losses(alice, child_job["id"])
    assert child_losses[0] < parent_losses[0] - 0.8, (parent_losses, child_losses)
    assert child_losses[0] < parent_losses[-1] + 0.5, (parent_losses, child_losses)
    started = [e for e in alice.get(f"/v1/jobs/{child_job['id']}/events").json()["data"] if e["type"] == "started"]
    assert f"from checkpoint {parent['id']}" in started[0]["message"]

    # The parent's tokenizer, byte for byte; the lineage names the parent, its files and the first corpus.
    child = final_checkpoint(alice, child_job["id"])
    assert sha256s(child, TOKENIZER_FILES) == sha256s(parent, TOKENIZER_FILES)
    assert "tokenizer.json" in sha256s(child, TOKENIZER_FILES)
    lineage = json.loads(file_text(alice, child["id"], "selfsup.json"))
    assert [c["id"] for c in lineage["corpora"]] == [corpus_b["id"]]
    init_from = lineage["init_from"]
    assert init_from["type"] == "checkpoint" and init_from["id"] == parent["id"]
    assert (init_from["job_id"], init_from["version"], init_from["step"]) == (parent_job["id"], parent["version"], 60)
    assert {f["name"]: f["sha256"] for f in init_from["files"]} == sha256s(parent)
    assert [(c["id"], c["sha256"]) for c in init_from["corpora"]] == [(corpus_a["id"], corpus_a["sha256"])]
    card = file_text(alice, child["id"], "README.md")
    assert "continued pretraining" in card and parent["id"] in card and parent_job["id"] in card
    assert sha256s(parent)["model.safetensors"] in card and corpus_a["sha256"] in card

    # A chain: continuing the continued run nests its lineage back to the first corpus. Paused midway, it
    # resumes from its own checkpoint, not from its parent's files (spoilt here, so reading them would fail it).
    grandchild_job = submit_job(
        alice,
        continued_spec(
            corpus_a["id"],
            child["id"],
            training={"max_steps": 200, "batch_size": 4, "warmup_steps": 1},
            evaluation={"every_steps": 1000},
            checkpointing={"every_steps": 1000},
        ),
    )
    wait_until(lambda: alice.get(f"/v1/jobs/{grandchild_job['id']}").json()["step"] > 0, timeout=120, what="training")
    assert alice.post(f"/v1/jobs/{grandchild_job['id']}/pause").status_code == 202
    paused = wait_for_job(alice, grandchild_job["id"], statuses=("paused",), timeout=120)
    assert 0 < paused["step"] < 200, paused
    for weights in (embedded_service.home / "blobs" / "checkpoints" / child_job["id"]).rglob("model.safetensors"):
        weights.write_bytes(b"spoilt")
    assert alice.post(f"/v1/jobs/{grandchild_job['id']}/resume").status_code == 202
    done = wait_for_job(alice, grandchild_job["id"])
    assert done["status"] == "succeeded", (done, embedded_service.log())
    events = alice.get(f"/v1/jobs/{grandchild_job['id']}/events").json()["data"]
    assert [e["type"] for e in events].count("started") == 1 and "resumed" in [e["type"] for e in events]
    grandchild = final_checkpoint(alice, grandchild_job["id"])
    chain = json.loads(file_text(alice, grandchild["id"], "selfsup.json"))["init_from"]
    assert chain["id"] == child["id"] and chain["init_from"]["id"] == parent["id"]
    assert chain["init_from"]["corpora"][0]["sha256"] == corpus_a["sha256"]
    assert sha256s(grandchild, TOKENIZER_FILES) == sha256s(parent, TOKENIZER_FILES)
    card = file_text(alice, grandchild["id"], "README.md")
    assert card.index(child["id"]) < card.index(parent["id"]) and corpus_a["sha256"] in card
