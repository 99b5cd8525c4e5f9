"""`job_flops_per_token` (the `mfu` metric's and the ETA's figure) against the FLOPs torch counts in a real step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from selfsup.estimate import job_flops_per_token, spec_parameters
from selfsup.spec import JobSpec
from tests.factories import OBJECTIVE_FAMILIES, random_token_arrays, small_job_spec
from workers.data.token_arrays import TokenArrays

BATCH = 4


def _counted_flops_per_token(spec: JobSpec, data: TokenArrays) -> float:
    """Forward and backward FLOPs of one training batch, as torch counts them, per token tokens_per_step counts."""
    objective = spec.objective.training(spec, data)
    model = objective.build_model()
    inputs, labels = objective.sample("train", np.random.default_rng(1), BATCH)
    with FlopCounterMode(display=False) as counter:
        loss, _ = objective.loss(model, inputs, labels)
        loss.backward()
    return counter.get_total_flops() / (BATCH * spec.tokens_per_sequence)


@pytest.mark.parametrize("objective", OBJECTIVE_FAMILIES)
def test_flops_per_token_matches_what_a_training_step_computes(objective: str) -> None:
    """Within 10% for every objective: the T5 figure once counted both stacks for every raw token (1.7x the work
    done), the contrastive one a single encoding of each sentence (about half)."""
    torch.manual_seed(0)
    family = OBJECTIVE_FAMILIES[objective]
    spec = JobSpec.model_validate(
        small_job_spec("cor_x", objective={"type": objective}, model={"family": family}, tokenizer=None)
    )
    data = random_token_arrays(family, spec.model.context_length)
    parameters = spec_parameters(spec, vocab_size=data.vocab_size)
    estimated = job_flops_per_token(spec, parameters=parameters, vocab_size=data.vocab_size)
    assert estimated == pytest.approx(_counted_flops_per_token(spec, data), rel=0.1)
