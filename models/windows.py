"""Windows of the flat token arrays: where every objective's examples come from.

A split is one long array of token ids (documents joined by the end-of-text token); an example starts
as a window of it at a random offset drawn from the batch's NumPy generator.
"""

from __future__ import annotations

import numpy as np
import torch

from models.build import SpecialTokenIds


def sample_window_offsets(num_tokens: int, *, window: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` random start offsets of windows of `window` tokens inside an array of `num_tokens`."""
    if num_tokens < window:
        raise ValueError(f"need at least {window} tokens for one window, have {num_tokens}")
    return rng.integers(0, num_tokens - window + 1, size=count, dtype=np.int64)


def gather_windows(tokens: np.ndarray, offsets: np.ndarray, window: int) -> torch.Tensor:
    """The token windows starting at `offsets`, as a (len(offsets), window) int64 tensor."""
    index = offsets[:, None] + np.arange(window, dtype=np.int64)[None, :]
    return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))


def sample_windows(tokens: np.ndarray, *, window: int, count: int, rng: np.random.Generator) -> torch.Tensor:
    """`count` windows of `window` tokens at random offsets, as a (count, window) int64 tensor."""
    offsets = sample_window_offsets(len(tokens), window=window, count=count, rng=rng)
    return gather_windows(tokens, offsets, window)


def encoder_wrapping_ids(special: SpecialTokenIds) -> tuple[int, int]:
    """The ids that open and close an encoder's example: [CLS] … [SEP], or <s> … </s>."""
    begin = special.cls if special.cls is not None else special.bos
    if begin is None:
        raise ValueError("an encoder objective needs a vocabulary with a [CLS] or <s> token")
    return begin, special.sep if special.sep is not None else special.eos


def wrap_windows(windows: torch.Tensor, begin: int, end: int) -> torch.Tensor:
    """Each row of a (B, T) batch between `begin` and `end`: (B, T + 2)."""
    rows = windows.size(0)
    return torch.cat([windows.new_full((rows, 1), begin), windows, windows.new_full((rows, 1), end)], dim=1)


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU torch generator seeded from the batch's NumPy generator (masking and corruption draw from it)."""
    return torch.Generator().manual_seed(int(rng.integers(2**62)))
