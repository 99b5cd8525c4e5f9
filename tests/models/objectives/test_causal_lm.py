"""Tests for the causal-LM objective (models/objectives/causal_lm.py)."""

from __future__ import annotations

import numpy as np
import torch

from models.objectives.causal_lm import manufacture_causal_lm_batch
from models.windows import gather_windows, sample_window_offsets


def test_causal_lm_labels_are_inputs_shifted_by_one() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    rng = np.random.default_rng(0)
    offsets = sample_window_offsets(len(tokens), window=9, count=6, rng=rng)
    inputs, labels = manufacture_causal_lm_batch(gather_windows(tokens, offsets, 9))
    assert inputs.shape == labels.shape == (6, 8) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], labels[:, :-1])
    assert torch.equal(inputs[:, 0], torch.from_numpy(offsets))
    assert torch.equal(labels, inputs + 1)
