"""The tokenized splits of a dataset, memory-mapped: what the trainer and the objectives read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.build import SpecialTokenIds
from models.windows import MixtureSource


@dataclass(frozen=True)
class TokenArrays:
    """The tokenized splits, memory-mapped, with what the objectives need to know about the vocabulary."""

    train: np.ndarray
    validation: np.ndarray
    vocab_size: int
    special: SpecialTokenIds
    # (n, 2) token offsets of each sentence into the split's array (contrastive draws from them).
    train_sentences: np.ndarray | None = None
    validation_sentences: np.ndarray | None = None
    # (2, vocab_size) bool: which tokens begin a word, and after which a new word begins (whole-word masking).
    word_boundaries: np.ndarray | None = None
    # The weighted sources, each a segment of both splits, of a dataset built as a mixture; () otherwise.
    sources: tuple[MixtureSource, ...] = ()

    @classmethod
    def open(
        cls,
        folder: Path,
        *,
        dtype: str,
        vocab_size: int,
        special: SpecialTokenIds,
        sources: tuple[MixtureSource, ...] = (),
    ) -> TokenArrays:
        """Memory-map `train.bin` and `validation.bin` in `folder`, and load the sentence and word tables."""

        def optional(name: str) -> np.ndarray | None:
            path = folder / name
            return np.load(path, mmap_mode="r") if path.is_file() else None

        return cls(
            train=np.memmap(folder / "train.bin", dtype=dtype, mode="r"),
            validation=np.memmap(folder / "validation.bin", dtype=dtype, mode="r"),
            vocab_size=vocab_size,
            special=special,
            train_sentences=optional("train.sentences.npy"),
            validation_sentences=optional("validation.sentences.npy"),
            word_boundaries=optional("word_boundaries.npy"),
            sources=sources,
        )
