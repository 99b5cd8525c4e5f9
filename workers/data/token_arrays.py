"""The tokenized splits of a dataset, memory-mapped: what the trainer and the objectives read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.build import SpecialTokenIds
from models.windows import MixtureSource
from storage.checkpoints import file_manifest, verify_files


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


META_FILE = "meta.json"


def recorded_files(folder: Path) -> list[dict[str, Any]]:
    """The name, size and sha256 of every file of a token-array folder but its meta (which records them)."""
    return [entry for entry in file_manifest(folder, folder) if entry["name"] != META_FILE]


def verify_token_folder(folder: Path) -> str | None:
    """None if every file that the folder's `meta.json` lists (under `files`) has its recorded size and sha256,
    else what is wrong. A folder written before the sha256s were recorded has nothing to check."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        return f"{META_FILE} is unreadable ({exc})"
    return verify_files(folder, meta.get("files", []))
