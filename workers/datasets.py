"""Tokenized datasets: trained once per (corpus contents, tokenizer spec), then reused by later jobs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from models.build import SpecialTokenIds
from selfsup.spec import TokenizerSpec
from storage.blobs import LocalBlobStore, corpus_split_key
from storage.tables import Corpus, TokenizedDataset
from workers.ingest import read_jsonl_texts
from workers.tokenization import END_OF_TEXT, UNKNOWN, token_dtype, train_tokenizer, write_token_array

TOKENIZER_DIR = "tokenizer"
_tokenizer_spec = TypeAdapter(TokenizerSpec)


def dataset_key(corpus_sha256s: Sequence[str], tokenizer_spec: dict[str, Any]) -> str:
    """The cache key: what the tokens depend on, and nothing else."""
    payload = json.dumps({"corpora": list(corpus_sha256s), "tokenizer": tokenizer_spec}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _documents(store: LocalBlobStore, corpora: Sequence[Corpus], split: str) -> Iterator[str]:
    for corpus in corpora:
        with store.open(corpus_split_key(corpus.id, split)) as fh:
            yield from read_jsonl_texts(fh)


def build_dataset(
    *, store: LocalBlobStore, key: str, corpora: Sequence[Corpus], tokenizer_spec: dict[str, Any]
) -> TokenizedDataset:
    """Train the tokenizer on the training split and write both splits as flat token arrays."""
    spec = _tokenizer_spec.validate_python(tokenizer_spec)
    prefix = f"datasets/{key}"
    with store.staging_dir(prefix) as staging:
        tokenizer = train_tokenizer(spec, _documents(store, corpora, "train"))
        tokenizer.save_pretrained(staging / TOKENIZER_DIR)
        _portable_tokenizer_config(staging / TOKENIZER_DIR / "tokenizer_config.json")
        train_tokens = write_token_array(tokenizer, _documents(store, corpora, "train"), staging / "train.bin")
        validation_tokens = write_token_array(
            tokenizer, _documents(store, corpora, "validation"), staging / "validation.bin"
        )
        meta = {
            "vocab_size": len(tokenizer),
            "dtype": token_dtype(len(tokenizer)).name,
            "eos_token_id": tokenizer.convert_tokens_to_ids(END_OF_TEXT),
            "unk_token_id": tokenizer.convert_tokens_to_ids(UNKNOWN) if tokenizer.unk_token else None,
            "train_tokens": train_tokens,
            "validation_tokens": validation_tokens,
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    return TokenizedDataset(
        key=key,
        tokenizer_spec=tokenizer_spec,
        corpus_sha256s=[c.sha256 for c in corpora],
        vocab_size=meta["vocab_size"],
        train_tokens=train_tokens,
        validation_tokens=validation_tokens,
        blob_prefix=prefix,
    )


def _portable_tokenizer_config(path: Path) -> None:
    # transformers 5 writes its own class name; the generic fast class loads on 4.x and 5.x alike.
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2))


def dataset_meta(store: LocalBlobStore, dataset: TokenizedDataset) -> dict[str, Any]:
    """The dataset's `meta.json`."""
    meta: dict[str, Any] = json.loads(store.local_path(f"{dataset.blob_prefix}/meta.json").read_text())
    return meta


def special_token_ids(meta: dict[str, Any]) -> SpecialTokenIds:
    """The special ids a model config needs, from a dataset's meta."""
    return SpecialTokenIds(eos=meta["eos_token_id"], unk=meta["unk_token_id"])
