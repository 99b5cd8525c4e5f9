"""The model card says, in words a person reads, what a checkpoint is and how to load it."""

from __future__ import annotations

from typing import Any

import pytest

from selfsup.spec import JobSpec
from workers.training.model_card import render_model_card


def _lineage(objective: dict[str, Any]) -> dict[str, Any]:
    spec = JobSpec.model_validate({"corpus_ids": ["cor_1"], "objective": objective})
    return {
        "job": {"id": "job_1", "name": "shakespeare", "spec": spec.model_dump(mode="json")},
        "corpora": [{"id": "cor_1", "name": "tinyshakespeare.txt", "sha256": "ab" * 32, "documents": 7222}],
        "dataset": {
            "key": "k",
            "train_tokens": 300_000,
            "validation_tokens": 30_000,
            "corpus_tokens": {"cor_1": {"train": 300_000, "validation": 30_000}},
        },
        "checkpoint": {
            "version": 2,
            "step": 2000,
            "tokens_seen": 1_536_000,
            "final": True,
            "metrics": {"train_loss": 2.5, "val_loss": 2.75},
        },
        "parameters": 1_234_567,
    }


@pytest.mark.parametrize(
    ("objective", "words", "loader"),
    [
        ({"type": "causal_lm"}, ["causal language modelling"], "AutoModelForCausalLM"),
        (
            {"type": "masked_lm", "whole_word": True},
            ["masked language modelling", "15%", "a whole word at a time", "80%", "10% a random token"],
            "AutoModelForMaskedLM",
        ),
        (
            {"type": "span_corruption"},
            ["span corruption", "15% of the tokens", "mean length 3", "<extra_id_0>", "encoder and 4 decoder"],
            "AutoModelForSeq2SeqLM",
        ),
        (
            {"type": "contrastive", "pooling": "cls"},
            ["SimCSE", "temperature 0.05", "cls pooling", "SentenceTransformer(path)"],
            "AutoModel",
        ),
    ],
)
def test_the_card_describes_objective_model_data_training_and_loading(
    objective: dict[str, Any], words: list[str], loader: str
) -> None:
    card = render_model_card(_lineage(objective))
    for expected in [
        *words,
        "1,234,567 parameters",
        "tinyshakespeare.txt",
        "`cor_1`",
        "ab" * 32,
        "7,222",
        "300,000 / 30,000",
        "2,000 of 2,000 steps, 1,536,000 tokens seen",
        "| val_loss | 2.75 |",
        f"model = {loader}.from_pretrained(path, local_files_only=True)",
    ]:
        assert expected in card, expected
