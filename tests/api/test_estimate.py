"""`POST /v1/jobs:estimate`: exact parameters, tokens and FLOPs of a spec, and an ETA from recorded throughput."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from models.build import SpecialTokenIds, build_causal_lm, build_encoder, build_seq2seq, count_parameters
from selfsup.estimate import parameter_count
from selfsup.spec import JobSpec, ModelSpec
from selfsup_client import AsyncClient, Client, InvalidRequest, JobEstimate
from tests.factories import api_error, ready_corpus, shakespeare_slice, small_job_spec, submit_job, wait_for_job
from tests.service import REPO, Service

pytestmark = pytest.mark.integration

TENANT = "estimator"  # a tenant of its own, so no other test's jobs are throughput history here


def _tiny_spec(corpus_id: str, **overrides: Any) -> dict[str, Any]:
    base = small_job_spec(
        corpus_id,
        training={"max_steps": 10, "warmup_steps": 2},
        evaluation={"every_steps": 10, "batches": 2},
        checkpointing={"every_steps": 10},
    )
    return {**base, **overrides}


def _flops_per_token(spec: dict[str, Any], parameters: int) -> int:
    """Kaplan's formula for a decoder (the other objectives: tests/selfsup/test_flops.py)."""
    model = spec["model"]
    assert model["family"] in ("gpt2", "llama")
    return 6 * parameters + 6 * model["layers"] * model["context_length"] * model["width"]


def _job_count(client: httpx.Client) -> int:
    return len(client.get("/v1/jobs", params={"limit": 200}).json()["data"])


@pytest.fixture(scope="module")
def client(embedded_service: Service) -> httpx.Client:
    embedded_service.create_key(TENANT)
    return embedded_service.client(TENANT)


@pytest.fixture(scope="module")
def corpus(client: httpx.Client) -> dict[str, Any]:
    return ready_corpus(client, shakespeare_slice(40_000))


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert", "roberta", "t5"])
def test_parameter_count_equals_the_model_build_makes(family: str) -> None:
    """The arithmetic matches `models/build.py`'s models, family by family (tied weights once)."""
    model = ModelSpec(family=family, layers=3, heads=4, width=48, context_length=40)  # type: ignore[arg-type]
    vocab = 257
    if family in ("gpt2", "llama"):
        built = build_causal_lm(model, vocab_size=vocab, special=SpecialTokenIds(eos=0))
        assert count_parameters(built) == parameter_count(model, vocab_size=vocab)
    elif family == "t5":
        built = build_seq2seq(model, vocab_size=vocab, special=SpecialTokenIds(eos=1, pad=0))
        assert count_parameters(built) == parameter_count(model, vocab_size=vocab)
    else:
        special = SpecialTokenIds(eos=2, pad=1 if family == "roberta" else 0)
        for head in (True, False):
            built = build_encoder(model, vocab_size=vocab, special=special, head=head)
            assert count_parameters(built) == parameter_count(model, vocab_size=vocab, head=head), (family, head)


def test_estimate_without_history(client: httpx.Client, corpus: dict[str, Any]) -> None:
    spec = _tiny_spec(corpus["id"])
    jobs_before = _job_count(client)
    response = client.post("/v1/jobs:estimate", json=spec)
    assert response.status_code == 200, response.text
    estimate = response.json()
    assert _job_count(client) == jobs_before  # nothing created

    assert estimate["tokens_per_step"] == 8 * 32 == JobSpec.model_validate(spec).tokens_per_step
    assert estimate["total_tokens"] == estimate["max_steps"] * estimate["tokens_per_step"] == 10 * 256
    # No job has tokenized this corpus yet: a char vocabulary is assumed, and the response says so.
    assert estimate["approximate"] is True and "char" in estimate["note"]
    built = build_causal_lm(
        ModelSpec(**spec["model"]), vocab_size=estimate["vocab_size"], special=SpecialTokenIds(eos=0)
    )
    assert estimate["parameters"] == count_parameters(built)
    assert estimate["flops_per_token"] == _flops_per_token(spec, estimate["parameters"])
    assert estimate["training_flops"] == estimate["flops_per_token"] * estimate["total_tokens"]
    assert "6·N" in estimate["flops_formula"]
    assert estimate["tokens_per_parameter"] == pytest.approx(estimate["total_tokens"] / estimate["parameters"], 1e-3)
    assert estimate["compute_optimal_tokens_per_parameter"] == 20
    assert estimate["compute_optimal"] == "under-trained"  # 2,560 tokens for ~70k parameters
    assert estimate["eta_seconds"] is None and estimate["eta_basis"] is None
    assert "no throughput history" in estimate["eta_reason"]


def test_estimate_after_a_job_of_the_same_shape_ran(client: httpx.Client, corpus: dict[str, Any]) -> None:
    spec = _tiny_spec(corpus["id"])
    job = submit_job(client, spec)
    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded", done
    final = client.get(f"/v1/jobs/{job['id']}/checkpoints/final").json()
    lineage = client.get(f"/v1/checkpoints/{final['id']}/files/selfsup.json").json()
    windows = client.get(f"/v1/jobs/{job['id']}/metrics", params={"name": "tokens_per_second"}).json()["data"]
    tokens_per_second = statistics.median(w["value"] for w in windows)

    # The same spec again: the vocabulary is now known, and the count is the trained checkpoint's.
    estimate = client.post("/v1/jobs:estimate", json=spec).json()
    assert estimate["approximate"] is False and estimate["note"] is None
    assert estimate["parameters"] == lineage["parameters"]
    assert estimate["eta_basis"]["job_ids"] == [job["id"]] and estimate["eta_basis"]["count"] == 1
    assert estimate["eta_basis"]["shape_match"] == "same family and objective"
    # Same model: the ETA is the total tokens at the recorded tokens/s.
    assert estimate["eta_seconds"] == pytest.approx(estimate["total_tokens"] / tokens_per_second, abs=0.1)

    # A bigger model of the same family: the recorded rate scaled by the ratio of FLOPs per token.
    bigger = _tiny_spec(
        corpus["id"],
        model={"family": "gpt2", "layers": 4, "heads": 4, "width": 128, "context_length": 64},
        training={"max_steps": 500, "batch_size": 8, "warmup_steps": 2},
    )
    estimate = client.post("/v1/jobs:estimate", json=bigger).json()
    reference_flops = _flops_per_token(spec, lineage["parameters"])
    expected = estimate["training_flops"] / (tokens_per_second * reference_flops)
    assert estimate["eta_seconds"] == pytest.approx(expected, abs=0.1)
    assert estimate["eta_seconds"] > 500 * 8 * 64 / tokens_per_second  # more FLOPs per token: slower
    assert estimate["eta_basis"]["tokens_per_second"] == pytest.approx(
        tokens_per_second * reference_flops / estimate["flops_per_token"], abs=0.1
    )

    # Another family: no job of that shape, so every recorded shape is used, and the response says so.
    encoder = _tiny_spec(corpus["id"], objective={"type": "masked_lm"}, model={"family": "bert"}, tokenizer=None)
    estimate = client.post("/v1/jobs:estimate", json=encoder).json()
    assert estimate["eta_basis"]["shape_match"] == "any shape" and estimate["eta_seconds"] > 0


@pytest.mark.parametrize(
    "change",
    [
        {"model": {"heads": 3, "layers": 0}},
        {"objective": {"type": "nope"}},
        {"corpus_ids": ["cor_does_not_exist"]},
        {"corpus_ids": None},
        {"surprise": True},
    ],
    ids=["bad-model", "bad-objective", "unknown-corpus", "no-data", "unknown-field"],
)
def test_invalid_specs_get_the_same_422_as_post_jobs(
    client: httpx.Client, corpus: dict[str, Any], change: dict[str, Any]
) -> None:
    spec = {**_tiny_spec(corpus["id"]), **change}
    spec = {k: v for k, v in spec.items() if v is not None}
    refused = client.post("/v1/jobs:estimate", json=spec)
    api_error(refused, 422)
    assert refused.json() == client.post("/v1/jobs", json=spec).json()


def test_estimate_needs_a_key(embedded_service: Service, corpus: dict[str, Any]) -> None:
    anonymous = httpx.Client(base_url=embedded_service.base_url)
    api_error(anonymous.post("/v1/jobs:estimate", json=_tiny_spec(corpus["id"])), 401)


def test_sdk_and_cli_estimate(
    embedded_service: Service, client: httpx.Client, corpus: dict[str, Any], tmp_path: Path
) -> None:
    """`client.jobs.estimate(spec)` (sync and async) and `selfsup jobs estimate SPEC.yaml` give the API's answer."""
    spec = _tiny_spec(corpus["id"])
    expected = client.post("/v1/jobs:estimate", json=spec).json()
    key = embedded_service.keys[TENANT]
    with Client(embedded_service.base_url, key) as sdk:
        estimate = sdk.jobs.estimate(spec)
        assert isinstance(estimate, JobEstimate) and estimate.model_dump(mode="json") == expected
        with pytest.raises(InvalidRequest, match="model.layers"):
            sdk.jobs.estimate({**spec, "model": {"layers": 0}})

    async def estimate_async() -> JobEstimate:
        async with AsyncClient(embedded_service.base_url, key) as sdk:
            return await sdk.jobs.estimate(spec)

    assert asyncio.run(estimate_async()).model_dump(mode="json") == expected

    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFSUP_")}
    env.update({"SELFSUP_URL": embedded_service.base_url, "SELFSUP_API_KEY": key})
    result = subprocess.run(
        [sys.executable, "-m", "selfsup.cli", "jobs", "estimate", str(spec_file), "--json"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected
