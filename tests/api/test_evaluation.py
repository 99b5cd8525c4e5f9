"""Held-out corpora, early stopping, and the `best` alias following a chosen metric (issue 13)."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from tests.factories import (
    SHAKESPEARE,
    api_error,
    ready_corpus,
    small_job_spec,
    submit_job,
    upload_corpus,
    wait_for_corpus,
    wait_for_job,
)
from tests.service import Service

pytestmark = pytest.mark.integration


def _text(start: int, n_bytes: int) -> bytes:
    """A slice of tiny Shakespeare from `start`, cut at line ends on both sides."""
    data = SHAKESPEARE.read_bytes()[start : start + n_bytes]
    return data[data.find(b"\n") + 1 : data.rfind(b"\n") + 1]


def _series(client: httpx.Client, job_id: str, name: str) -> dict[int, float]:
    data = client.get(f"/v1/jobs/{job_id}/metrics", params={"name": name, "limit": 1000}).json()["data"]
    return {m["step"]: m["value"] for m in data}


def _held_out_corpus(client: httpx.Client) -> dict[str, Any]:
    corpus = wait_for_corpus(client, upload_corpus(client, _text(300_000, 40_000), name="general text.txt")["id"])
    assert corpus["status"] == "ready", corpus
    return corpus


def test_held_out_corpus_is_evaluated_each_time_and_best_follows_its_metric(embedded_service: Service) -> None:
    client = embedded_service.client("alice")
    train = ready_corpus(client, _text(0, 60_000))
    held_out = _held_out_corpus(client)
    name = "general_text.txt"  # the corpus name, its space made `_`
    # mode max on a perplexity picks the worst checkpoint: a direction the default (min) would never pick.
    spec = small_job_spec(
        train["id"],
        evaluation={"every_steps": 10, "batches": 2, "corpus_ids": [held_out["id"]]},
        checkpointing={"every_steps": 10, "keep_last": 2, "best": {"metric": f"val_perplexity/{name}", "mode": "max"}},
    )
    job = submit_job(client, spec)
    in_use = api_error(client.delete(f"/v1/corpora/{held_out['id']}"), 409)  # the job is queued or running
    assert in_use["details"] == {"job_ids": [job["id"]]}
    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded", (done, embedded_service.log())

    val_loss = _series(client, job["id"], "val_loss")
    held_loss = _series(client, job["id"], f"val_loss/{name}")
    assert sorted(held_loss) == sorted(val_loss) == [10, 20, 30, 40]  # one value per evaluation
    assert held_loss != val_loss and held_loss[40] < held_loss[10]  # its own data, and training helps it too
    for steps_loss, perplexity_name in ((held_loss, f"val_perplexity/{name}"), (val_loss, "val_perplexity")):
        perplexity = _series(client, job["id"], perplexity_name)
        assert perplexity.keys() == steps_loss.keys()
        assert all(math.isclose(perplexity[s], math.exp(steps_loss[s]), rel_tol=1e-6) for s in steps_loss)

    checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    perplexity = _series(client, job["id"], f"val_perplexity/{name}")
    worst_step = max(perplexity, key=lambda s: perplexity[s])
    best = client.get(f"/v1/jobs/{job['id']}/checkpoints/best").json()
    assert best["step"] == worst_step == 10
    assert [c["id"] for c in checkpoints if "best" in c["aliases"]] == [best["id"]]
    # keep_last 2 prunes v2 but never the best (v1) nor the final one.
    assert [c["step"] for c in checkpoints] == [10, 30, 40]

    # Once the job has ended, the held-out corpus can go.
    assert client.delete(f"/v1/corpora/{held_out['id']}").status_code == 204


def test_early_stopping_ends_the_job_at_the_first_evaluation_out_of_patience(embedded_service: Service) -> None:
    client = embedded_service.client("alice")
    train = ready_corpus(client, _text(0, 60_000))
    patience, min_delta = 2, 0.02
    spec = small_job_spec(
        train["id"],
        # A learning rate so small that val_loss barely moves: patience runs out after the first evaluations.
        training={"max_steps": 200, "learning_rate": 1e-6, "min_learning_rate": 0.0, "warmup_steps": 0},
        evaluation={
            "every_steps": 5,
            "batches": 2,
            "early_stopping": {"metric": "val_loss", "patience": patience, "min_delta": min_delta},
        },
        checkpointing={"every_steps": 100, "keep_last": 3},
    )
    job = submit_job(client, spec)
    assert job["spec"]["checkpointing"]["best"] == {"metric": "val_loss", "mode": "min"}  # early stopping's
    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded", (done, embedded_service.log())

    val_loss = _series(client, job["id"], "val_loss")
    best, waited, expected = math.inf, 0, None
    for step in sorted(val_loss):
        if val_loss[step] < best - min_delta:
            best, best_step, waited = val_loss[step], step, 0
        else:
            waited += 1
        if waited >= patience:
            expected = step
            break
    assert expected is not None and expected < 200, val_loss
    assert done["step"] == expected and max(val_loss) == expected

    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert events[-1]["type"] == "finished"
    assert events[-1]["message"] == (
        f"early stopping at step {expected}: val_loss did not improve by {min_delta:g} for {patience} evaluations "
        f"(best {best:.4f} at step {best_step})"
    )
    final = client.get(f"/v1/jobs/{job['id']}/checkpoints/final").json()
    assert final["step"] == expected and "latest" in final["aliases"]


def test_evaluation_spec_errors_name_the_field(embedded_service: Service) -> None:
    client = embedded_service.client("alice")
    train = ready_corpus(client, _text(0, 30_000))
    held_out = _held_out_corpus(client)

    def problems(evaluation: dict[str, Any] | None = None, **overrides: Any) -> dict[str, str]:
        spec = small_job_spec(train["id"], **({"evaluation": evaluation} if evaluation else {}), **overrides)
        body = api_error(client.post("/v1/jobs", json=spec), 422)
        return {d["field"]: d["message"] for d in body["details"]}

    assert "no corpus cor_nope" in problems({"corpus_ids": [held_out["id"], "cor_nope"]})["evaluation.corpus_ids[1]"]
    assert "training corpus" in problems({"corpus_ids": [train["id"]]})["evaluation.corpus_ids[0]"]
    assert "evaluation.early_stopping.patience" in problems({"early_stopping": {"patience": 0}})
    assert "evaluation.early_stopping.min_delta" in problems({"early_stopping": {"patience": 2, "min_delta": -0.1}})
    message = problems({"early_stopping": {"metric": "val_accuracy", "patience": 2}})[
        "evaluation.early_stopping.metric"
    ]
    assert "val_loss, val_perplexity" in message
    message = problems({"corpus_ids": [held_out["id"]], "early_stopping": {"metric": "val_loss/nope", "patience": 2}})[
        "evaluation.early_stopping.metric"
    ]
    assert "/general_text.txt" in message
    assert "evaluation.early_stopping.metric" in problems({"early_stopping": {"metric": "val_loss/x", "patience": 2}})
    assert "checkpointing.best.metric" in problems(checkpointing={"best": {"metric": "val_masked_accuracy"}})
    assert "checkpointing.best.mode" in problems(checkpointing={"best": {"metric": "val_loss", "mode": "lowest"}})
