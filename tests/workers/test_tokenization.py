"""Tokenizers train on a split, round-trip text, and load back through transformers' AutoTokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from selfsup.spec import BPETokenizerSpec, CharTokenizerSpec
from workers.datasets import dataset_key
from workers.tokenization import END_OF_TEXT, train_tokenizer, write_token_array

DOCS = ["First Citizen:\nBefore we proceed any further, hear me speak.", "All:\nSpeak, speak.", "ROMEO:\nO, she doth!"]


@pytest.mark.parametrize("spec", [CharTokenizerSpec(type="char"), BPETokenizerSpec(type="bpe", vocab_size=300)])
def test_tokenizer_roundtrips_and_loads_with_autotokenizer(spec: object, tmp_path: Path) -> None:
    tokenizer = train_tokenizer(spec, DOCS)  # type: ignore[arg-type]
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for doc in DOCS:
        ids = loaded(doc)["input_ids"]
        assert loaded.decode(ids) == doc
    assert loaded.eos_token == END_OF_TEXT and loaded.pad_token == END_OF_TEXT

    count = write_token_array(tokenizer, DOCS, tmp_path / "train.bin")
    tokens = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    assert len(tokens) == count
    eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    assert int((tokens == eos).sum()) == len(DOCS) and tokens[-1] == eos  # each document ends with end-of-text


def test_char_tokenizer_has_one_id_per_character_and_an_unknown() -> None:
    tokenizer = train_tokenizer(CharTokenizerSpec(type="char"), ["abca"])
    assert len(tokenizer) == 2 + 3
    assert tokenizer("abz")["input_ids"][-1] == tokenizer.convert_tokens_to_ids(tokenizer.unk_token)


def test_dataset_key_depends_on_contents_and_tokenizer_only() -> None:
    a = dataset_key(["sha1", "sha2"], {"type": "bpe", "vocab_size": 300})
    assert a == dataset_key(["sha1", "sha2"], {"vocab_size": 300, "type": "bpe"})
    assert a != dataset_key(["sha2", "sha1"], {"type": "bpe", "vocab_size": 300})
    assert a != dataset_key(["sha1", "sha2"], {"type": "bpe", "vocab_size": 301})
