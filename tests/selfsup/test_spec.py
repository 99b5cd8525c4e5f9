"""The job spec: each objective's defaults, and combinations refused with a message that says what is valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from api.errors import validation_details
from models.objectives.span_corruption import span_corruption_window_length
from selfsup.spec import JobSpec


def _spec(objective: dict[str, Any], **sections: Any) -> JobSpec:
    return JobSpec.model_validate({"corpus_ids": ["cor_x"], "objective": objective, **sections})


def _refusal(objective: dict[str, Any], **sections: Any) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        _spec(objective, **sections)
    details = validation_details(caught.value.errors())
    assert len(details) == 1, details
    return details[0]


@pytest.mark.parametrize(
    ("objective", "family", "tokenizer", "special_tokens"),
    [
        ("causal_lm", "gpt2", "bpe", "gpt2"),
        ("masked_lm", "bert", "wordpiece", "bert"),
        ("span_corruption", "t5", "unigram", "t5"),
        ("contrastive", "bert", "wordpiece", "bert"),
    ],
)
def test_the_objective_alone_is_a_complete_job(
    objective: str, family: str, tokenizer: str, special_tokens: str
) -> None:
    spec = _spec({"type": objective})
    assert spec.model.family == family
    assert spec.tokenizer is not None and spec.tokenizer.type == tokenizer
    assert spec.tokenizer.special_tokens == special_tokens
    # The filled-in spec is what the database stores and the worker validates again.
    assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec


def test_objective_parameters_have_the_papers_defaults() -> None:
    masked = _spec({"type": "masked_lm"}).objective
    assert masked.model_dump() == {
        "type": "masked_lm",
        "mask_probability": 0.15,
        "mask_replace_probability": 0.8,
        "random_replace_probability": 0.1,
        "whole_word": False,
    }
    span = _spec({"type": "span_corruption"}).objective
    assert span.model_dump() == {"type": "span_corruption", "noise_density": 0.15, "mean_span_length": 3.0}
    contrastive = _spec({"type": "contrastive"})
    assert contrastive.objective.model_dump() == {"type": "contrastive", "temperature": 0.05, "pooling": "mean"}
    assert contrastive.model.dropout == 0.1  # dropout is SimCSE's augmentation


def test_family_and_tokenizer_follow_the_client_where_given() -> None:
    spec = _spec({"type": "masked_lm"}, model={"family": "roberta"})
    assert spec.tokenizer is not None and (spec.tokenizer.type, spec.tokenizer.special_tokens) == ("bpe", "roberta")
    spec = _spec({"type": "causal_lm"}, model={"family": "llama"}, tokenizer={"type": "char"})
    assert spec.tokenizer is not None and (spec.tokenizer.type, spec.tokenizer.special_tokens) == ("char", "gpt2")
    spec = _spec({"type": "masked_lm"}, tokenizer={"type": "char"})
    assert spec.tokenizer is not None and spec.tokenizer.special_tokens == "bert"


@pytest.mark.parametrize(
    ("objective", "sections", "field", "words"),
    [
        ({"type": "masked_lm"}, {"model": {"family": "gpt2"}}, "model.family", "bert or roberta, not gpt2"),
        ({"type": "causal_lm"}, {"model": {"family": "t5"}}, "model.family", "gpt2 or llama, not t5"),
        ({"type": "span_corruption", "noise_density": 0.9}, {}, "objective.noise_density", "0.5"),
        ({"type": "contrastive"}, {"training": {"batch_size": 1}}, "training.batch_size", "at least 2"),
        ({"type": "contrastive"}, {"model": {"dropout": 0.0}}, "model.dropout", "above 0"),
        (
            {"type": "masked_lm", "mask_replace_probability": 0.95},
            {},
            "objective",
            "must not exceed 1",
        ),
        (
            {"type": "masked_lm"},
            {"tokenizer": {"type": "bpe", "special_tokens": "gpt2"}},
            "tokenizer.special_tokens",
            "needs the bert special tokens",
        ),
        (
            {"type": "span_corruption", "noise_density": 0.5, "mean_span_length": 1},
            {"model": {"context_length": 512}},
            "objective.mean_span_length",
            "100 sentinels",
        ),
        ({"type": "causal_lm"}, {"model": {"family": "llama", "heads": 4, "width": 132}}, "model", "even head width"),
        ({"type": "causal_lm"}, {"resources": {"nodes": 2}}, "resources.nodes", "multi-node jobs are not supported"),
        ({"type": "causal_lm"}, {"resources": {"devices": 0}}, "resources.devices", "greater than or equal to 1"),
        (
            {"type": "causal_lm"},
            {"resources": {"devices": 3}, "training": {"batch_size": 8}},
            "training.batch_size",
            "must be a multiple of resources.devices (3)",
        ),
        ({"type": "contrastive"}, {"resources": {"devices": 2}}, "resources.devices", "in-batch negatives"),
    ],
)
def test_invalid_combinations_name_the_field_and_what_is_valid(
    objective: dict[str, Any], sections: dict[str, Any], field: str, words: str
) -> None:
    detail = _refusal(objective, **sections)
    assert detail["field"] == field and words in detail["message"], detail


def test_tokens_per_step_counts_what_each_objective_reads() -> None:
    training = {"batch_size": 4, "grad_accum_steps": 2}
    assert _spec({"type": "causal_lm"}, training=training).tokens_per_step == 4 * 2 * 64
    assert _spec({"type": "masked_lm"}, training=training).tokens_per_step == 4 * 2 * 64
    span = _spec({"type": "span_corruption"}, training=training)
    assert span.tokens_per_step == 4 * 2 * span_corruption_window_length(64, 0.15, 3.0) > 4 * 2 * 64


def test_the_spec_imports_without_torch() -> None:
    # The API validates specs; the objective modules that define their sections defer torch to the worker.
    code = "import sys, selfsup.spec; print(sorted({'torch', 'numpy', 'transformers'} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert result.stdout.strip() == "[]"


def test_init_from_names_exactly_one_parent_and_remembers_what_the_client_gave() -> None:
    from selfsup.spec import inherit_from_parent, parent_conflicts

    base = {"corpus_ids": ["cor_1"], "objective": {"type": "causal_lm"}}
    for wrong in ({}, {"checkpoint_id": "ckpt_1", "model_id": "mdl_1"}):
        with pytest.raises(ValidationError, match="exactly one of checkpoint_id and model_id"):
            JobSpec.model_validate({**base, "init_from": wrong})
    spec = JobSpec.model_validate({**base, "model": {"width": 256, "heads": 2}, "init_from": {"checkpoint_id": "c"}})
    assert spec.given_model_fields == {"width", "heads"} and spec.given_tokenizer_fields == set()
    parent_model = {"family": "gpt2", "layers": 2, "heads": 2, "width": 64, "context_length": 32, "dropout": 0.0}
    parent_tokenizer = {"type": "char", "special_tokens": "gpt2"}
    # Only what the client gave is checked (heads agrees; the filled-in defaults never conflict).
    assert [p["field"] for p in parent_conflicts(spec, parent_model, parent_tokenizer)] == ["model.width"]
    merged = JobSpec.model_validate(inherit_from_parent(spec.model_dump(mode="json"), parent_model, parent_tokenizer))
    assert (merged.model.width, merged.model.layers, merged.model.context_length) == (64, 2, 32)
    assert merged.tokenizer is not None and merged.tokenizer.type == "char"
    assert merged.model_dump(mode="json")["init_from"] == {"checkpoint_id": "c"}
    assert "init_from" not in JobSpec.model_validate(base).model_dump(mode="json")  # stored specs stay as they were


def test_probes_need_distinct_metric_names() -> None:
    base: dict[str, Any] = {"corpus_ids": ["cor_1"], "objective": {"type": "masked_lm"}}
    probes = [{"labelled_set_id": "lbl_1", "name": "play"}]
    assert JobSpec.model_validate({**base, "probes": probes}).probes[0].name == "play"
    assert "probes" not in JobSpec.model_validate(base).model_dump(mode="json")
    for bad in (probes * 2, [{"labelled_set_id": "lbl_1", "name": "a/b"}], [{"name": "x"}]):
        with pytest.raises(ValidationError) as error:
            JobSpec.model_validate({**base, "probes": bad})
        assert any(d["field"].startswith("probes") for d in validation_details(error.value.errors())), bad


def test_a_one_device_job_keeps_the_spec_it_had_before_resources() -> None:
    one = _spec({"type": "causal_lm"}, resources={"devices": 1})
    assert "resources" not in one.model_dump() and one.resources.devices == 1
    two = _spec({"type": "causal_lm"}, resources={"devices": 2}, training={"batch_size": 8})
    assert two.model_dump()["resources"] == {"devices": 2, "nodes": 1}
