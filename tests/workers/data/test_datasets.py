"""Dataset folders (workers/data/datasets.py): several sources in one folder, and their mixture weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.windows import MixtureSource
from selfsup.spec import CharTokenizerSpec
from workers.data.datasets import DocumentSources, open_dataset, write_dataset
from workers.data.token_arrays import verify_token_folder

DOCUMENTS = {
    "cor_a": {
        "train": ["Alpha beta gamma. Delta epsilon zeta eta theta.", "Iota kappa lambda mu nu xi."],
        "validation": ["Omicron pi rho sigma tau."],
    },
    "cor_b": {
        "train": ["Upsilon phi chi psi omega, the last of them all."],
        "validation": ["One two three four five six seven."],
    },
}
SOURCES: DocumentSources = {name: (lambda split, name=name: DOCUMENTS[name][split]) for name in DOCUMENTS}
CHAR = CharTokenizerSpec(type="char")


def _write(folder: Path, weights: dict[str, float] | None = None) -> dict[str, Any]:
    folder.mkdir()
    return write_dataset(folder, CHAR, SOURCES, weights=weights)


def test_a_dataset_without_weights_is_written_as_before_mixtures(tmp_path: Path) -> None:
    meta = _write(tmp_path / "plain")
    files = meta.pop("files")  # the sha256s of the files (issue 9), checked below
    # The meta of this dataset as written before mixtures existed (commit cd6a85f), field for field.
    assert meta == {
        "vocab_size": 29,
        "dtype": "uint16",
        "special_tokens": "gpt2",
        "eos_token_id": 0,
        "unk_token_id": 1,
        "pad_token_id": 0,
        "bos_token_id": 0,
        "cls_token_id": None,
        "sep_token_id": None,
        "mask_token_id": None,
        "sentinel_token_ids": [],
        "special_token_ids": [0, 1],
        "train_tokens": 125,
        "validation_tokens": 61,
        "corpus_tokens": {"cor_a": {"train": 76, "validation": 26}, "cor_b": {"train": 49, "validation": 35}},
    }
    assert json.loads((tmp_path / "plain" / "meta.json").read_text()) == {**meta, "files": files}
    assert open_dataset(tmp_path / "plain").sources == ()


def test_the_meta_records_every_files_sha256_and_a_changed_byte_is_found(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    meta = _write(folder)
    names = {f["name"] for f in meta["files"]}
    assert {"train.bin", "validation.bin", "word_boundaries.npy", "tokenizer/tokenizer.json"} <= names
    assert "meta.json" not in names
    assert verify_token_folder(folder) is None
    data = bytearray((folder / "train.bin").read_bytes())
    data[3] ^= 0x01
    (folder / "train.bin").write_bytes(bytes(data))
    assert verify_token_folder(folder) == "train.bin does not match its recorded sha256"
    (folder / "validation.bin").write_bytes(b"")
    (folder / "train.bin").unlink()
    assert verify_token_folder(folder) == "train.bin is missing"


def test_weights_record_each_sources_segment_and_share(tmp_path: Path) -> None:
    plain, mixed = _write(tmp_path / "plain"), _write(tmp_path / "mixed", weights={"cor_a": 7.0, "cor_b": 3.0})
    assert mixed["sources"] == [
        {"name": "cor_a", "weight": 0.7, "train": [0, 76], "validation": [0, 26]},
        {"name": "cor_b", "weight": 0.3, "train": [76, 125], "validation": [26, 61]},
    ]
    # Weights add fields; they change nothing else, in the meta or in the files.
    assert {k: v for k, v in mixed.items() if k != "sources"} == plain
    for name in ("train.bin", "validation.bin", "train.sentences.npy", "validation.sentences.npy"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "mixed" / name).read_bytes()
    data = open_dataset(tmp_path / "mixed")
    assert data.sources == (
        MixtureSource(name="cor_a", weight=0.7, train=(0, 76), validation=(0, 26)),
        MixtureSource(name="cor_b", weight=0.3, train=(76, 125), validation=(26, 61)),
    )
    # Each segment ends with its source's last end-of-text token, and the next source starts after it.
    eos = 0
    for source in data.sources:
        for split, tokens in (("train", data.train), ("validation", data.validation)):
            start, end = getattr(source, split)
            assert tokens[end - 1] == eos and np.count_nonzero(tokens[start:end] == eos) == len(
                DOCUMENTS[source.name][split]
            )


@pytest.mark.parametrize(
    ("weights", "problem"),
    [
        ({"cor_a": 1.0}, "mixture weights name"),
        ({"cor_a": 1.0, "cor_b": 1.0, "cor_c": 1.0}, "mixture weights name"),
        ({"cor_a": 1.0, "cor_b": -0.5}, "non-negative"),
        ({"cor_a": 0.0, "cor_b": 0.0}, "not all zero"),
        ({"cor_a": float("nan"), "cor_b": 1.0}, "finite"),
    ],
)
def test_weights_that_do_not_fit_the_sources_are_refused(
    weights: dict[str, float], problem: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=problem):
        _write(tmp_path / "bad", weights=weights)
