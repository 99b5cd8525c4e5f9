"""Next-token prediction: the pretext exercise that hides the future and asks for it back."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def sample_window_offsets(num_tokens: int, *, window: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` random start offsets of windows of `window` tokens inside an array of `num_tokens`."""
    if num_tokens < window:
        raise ValueError(f"need at least {window} tokens for one window, have {num_tokens}")
    return rng.integers(0, num_tokens - window + 1, size=count, dtype=np.int64)


def gather_windows(tokens: np.ndarray, offsets: np.ndarray, window: int) -> torch.Tensor:
    """The token windows starting at `offsets`, as a (len(offsets), window) int64 tensor."""
    index = offsets[:, None] + np.arange(window, dtype=np.int64)[None, :]
    return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))


def manufacture_causal_lm_batch(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split windows of `context_length + 1` tokens into inputs (all but the last) and labels (shifted by one)."""
    return windows[:, :-1], windows[:, 1:]


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the predicted next tokens."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1))
