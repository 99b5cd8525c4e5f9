"""Held-out corpora: a whole corpus tokenized with a job's tokenizer, to evaluate on (`evaluation.corpus_ids`).

A held-out folder holds `tokens.bin` (both of the corpus's splits as one flat token array, documents
joined by the end-of-text token), `tokens.sentences.npy` (sentence offsets, for contrastive evaluation)
and `meta.json`. It is written once per (corpus contents, tokenizer) and shared by every job that
evaluates that corpus with that tokenizer; the folder appears atomically, so its presence means done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from storage.blobs import BlobStore
from storage.keys import corpus_split_key, heldout_prefix, join_key
from storage.tables import Corpus
from workers.data.documents import read_jsonl_texts
from workers.data.token_arrays import TokenArrays, recorded_files, verify_token_folder
from workers.data.tokenization import TokenArrayWriter

TOKENS_FILE = "tokens.bin"
SENTENCES_FILE = "tokens.sentences.npy"
META_FILE = "meta.json"
# Bumped when the files of a held-out folder change.
HELDOUT_FORMAT = 1


def tokenizer_sha256(tokenizer_dir: Path) -> str:
    """A digest of a saved tokenizer's files: what its token ids depend on."""
    digest = hashlib.sha256()
    for path in sorted(p for p in tokenizer_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(tokenizer_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def heldout_key(corpus_sha256: str, tokenizer_digest: str) -> str:
    """The cache key: the corpus's contents and the tokenizer, and nothing else."""
    payload = json.dumps(
        {"corpus": corpus_sha256, "tokenizer": tokenizer_digest, "format": HELDOUT_FORMAT}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def ensure_heldout(*, store: BlobStore, corpus: Corpus, tokenizer_dir: Path, key: str) -> int:
    """Tokenize the corpus (both splits) with the tokenizer unless already done; returns its token count."""
    prefix = heldout_prefix(key)
    if not store.exists(join_key(prefix, META_FILE)):
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir), local_files_only=True)
        with store.staging_dir(prefix) as staging:
            writer = TokenArrayWriter(tokenizer, staging / TOKENS_FILE, sentences_path=staging / SENTENCES_FILE)
            try:
                for split in ("train", "validation"):
                    writer.add(_documents(store, corpus, split))
            finally:
                writer.close()
            meta = {
                "corpus_sha256": corpus.sha256,
                "tokens": writer.total,
                "dtype": writer.dtype.name,
                "files": recorded_files(staging),
            }
            (staging / META_FILE).write_text(json.dumps(meta, indent=2))
    with store.open(join_key(prefix, META_FILE)) as fh:
        return int(json.load(fh)["tokens"])


def open_heldout(store: BlobStore, key: str, like: TokenArrays) -> TokenArrays:
    """A held-out corpus's tokens as the validation (and train) split of arrays `like` the job's own."""
    folder = store.local_copy(heldout_prefix(key), verify=verify_token_folder)
    meta = json.loads((folder / META_FILE).read_text())
    tokens = np.memmap(folder / TOKENS_FILE, dtype=meta["dtype"], mode="r")
    sentences = np.load(folder / SENTENCES_FILE, mmap_mode="r")
    return dataclasses.replace(
        like, train=tokens, validation=tokens, train_sentences=sentences, validation_sentences=sentences, sources=()
    )


def _documents(store: BlobStore, corpus: Corpus, split: str) -> Iterator[str]:
    with store.open(corpus_split_key(corpus.id, split)) as fh:
        yield from read_jsonl_texts(fh)
