"""Windows of the flat token arrays: where every objective's examples come from.

A split is one long array of token ids (documents joined by the end-of-text token); an example starts
as a window of it at a random offset drawn from the batch's NumPy generator.

A dataset built from a weighted mixture of sources holds each source as one contiguous segment of the
array. A training window then first draws its source, with probability equal to the source's weight,
and then its offset inside that source's segment, so no window straddles two sources and a source of
weight 0.7 supplies about 70% of the training tokens (every window has the same length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.build import SpecialTokenIds


@dataclass(frozen=True)
class MixtureSource:
    """One source of a weighted mixture: its share of the training examples, and where its tokens lie."""

    name: str
    weight: float
    # [start, end) token offsets of the source's segment in each split's flat array.
    train: tuple[int, int]
    validation: tuple[int, int]


def draw_sources(sources: Sequence[MixtureSource], *, count: int, rng: np.random.Generator) -> np.ndarray:
    """The index of the source each of `count` examples comes from, drawn with probability = weight."""
    weights = np.array([source.weight for source in sources], dtype=np.float64)
    return rng.choice(len(sources), size=count, p=weights / weights.sum())


def check_sources_hold_a_window(sources: Sequence[MixtureSource], window: int) -> None:
    """Refuse a mixture with a source that can be drawn but holds fewer training tokens than one window."""
    for source in sources:
        start, end = source.train
        if source.weight > 0 and end - start < window:
            raise ValueError(
                f"source {source.name} has {end - start} training tokens, fewer than one window of {window}"
            )


def segment_table(sources: Sequence[MixtureSource]) -> np.ndarray:
    """The sources' training segments as a (len(sources), 2) int64 array of [start, end) offsets."""
    return np.array([source.train for source in sources], dtype=np.int64).reshape(-1, 2)


def sample_window_offsets(num_tokens: int, *, window: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` random start offsets of windows of `window` tokens inside an array of `num_tokens`."""
    if num_tokens < window:
        raise ValueError(f"need at least {window} tokens for one window, have {num_tokens}")
    return rng.integers(0, num_tokens - window + 1, size=count, dtype=np.int64)


def sample_window_offsets_in(segments: np.ndarray, *, window: int, rng: np.random.Generator) -> np.ndarray:
    """One random window offset inside each row's [start, end) segment of a (count, 2) array."""
    starts, lengths = segments[:, 0], segments[:, 1] - segments[:, 0]
    if len(segments) and int(lengths.min()) < window:
        raise ValueError(f"need at least {window} tokens for one window in every source, have {int(lengths.min())}")
    return starts + rng.integers(0, lengths - window + 1, dtype=np.int64)


def gather_windows(tokens: np.ndarray, offsets: np.ndarray, window: int) -> torch.Tensor:
    """The token windows starting at `offsets`, as a (len(offsets), window) int64 tensor."""
    index = offsets[:, None] + np.arange(window, dtype=np.int64)[None, :]
    return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))


def sample_windows(
    tokens: np.ndarray, *, window: int, count: int, rng: np.random.Generator, segments: np.ndarray | None = None
) -> torch.Tensor:
    """`count` windows of `window` tokens at random offsets, as a (count, window) int64 tensor.

    With `segments` ((count, 2) [start, end) offsets, one row per window), each window lies inside its row's.
    """
    if segments is None:
        offsets = sample_window_offsets(len(tokens), window=window, count=count, rng=rng)
    else:
        offsets = sample_window_offsets_in(segments, window=window, rng=rng)
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
