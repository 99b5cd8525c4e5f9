"""`job_flops_per_token` (the `mfu` metric's and the ETA's figure) against the FLOPs torch counts in a real step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.build import SpecialTokenIds
from selfsup.estimate import job_flops_per_token, spec_parameters
from selfsup.spec import JobSpec
from tests.factories import small_job_spec
from workers.data.token_arrays import TokenArrays

TEXT_IDS = 40  # ids of ordinary text tokens, after the specials
BATCH = 4

BERT_SPECIAL = SpecialTokenIds(eos=3, pad=0, unk=1, cls=2, sep=3, mask=4, all=(0, 1, 2, 3, 4))
T5_SPECIAL = SpecialTokenIds(eos=1, pad=0, unk=2, sentinels=tuple(range(3, 103)), all=tuple(range(103)))
GPT2_SPECIAL = SpecialTokenIds(eos=0, unk=1, all=(0, 1))


def _data(special: SpecialTokenIds, context_length: int) -> TokenArrays:
    """Random text tokens, and sentences that all fill the context (so a contrastive batch has no padding)."""
    first = max(special.every) + 1
    rng = np.random.default_rng(0)
    train, validation = (rng.integers(first, first + TEXT_IDS, size=4000, dtype=np.int64) for _ in range(2))
    sentences = np.array([[start, start + 2 * context_length] for start in range(0, 3000, 100)], dtype=np.int64)
    return TokenArrays(
        train=train,
        validation=validation,
        vocab_size=first + TEXT_IDS,
        special=special,
        train_sentences=sentences,
        validation_sentences=sentences,
    )


def _counted_flops_per_token(spec: JobSpec, data: TokenArrays) -> float:
    """Forward and backward FLOPs of one training batch, as torch counts them, per token tokens_per_step counts."""
    objective = spec.objective.training(spec, data)
    model = objective.build_model()
    inputs, labels = objective.sample("train", np.random.default_rng(1), BATCH)
    with FlopCounterMode(display=False) as counter:
        loss, _ = objective.loss(model, inputs, labels)
        loss.backward()
    return counter.get_total_flops() / (BATCH * spec.tokens_per_sequence)


@pytest.mark.parametrize(
    ("objective", "family", "special"),
    [
        ("causal_lm", "gpt2", GPT2_SPECIAL),
        ("masked_lm", "bert", BERT_SPECIAL),
        ("span_corruption", "t5", T5_SPECIAL),
        ("contrastive", "bert", BERT_SPECIAL),
    ],
)
def test_flops_per_token_matches_what_a_training_step_computes(
    objective: str, family: str, special: SpecialTokenIds
) -> None:
    """Within 10% for every objective: the T5 figure once counted both stacks for every raw token (about twice
    the work done), the contrastive one a single encoding of each sentence (about half)."""
    torch.manual_seed(0)
    overrides: dict[str, Any] = {"objective": {"type": objective}, "model": {"family": family}, "tokenizer": None}
    spec = JobSpec.model_validate(small_job_spec("cor_x", **overrides))
    data = _data(special, spec.model.context_length)
    parameters = spec_parameters(spec, vocab_size=data.vocab_size)
    estimated = job_flops_per_token(spec, parameters=parameters, vocab_size=data.vocab_size)
    assert estimated == pytest.approx(_counted_flops_per_token(spec, data), rel=0.1)
