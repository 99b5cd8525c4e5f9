"""Tokenized datasets: trained once per (corpus contents, tokenizer spec), then reused by later jobs.

A dataset folder holds `tokenizer/` (the saved tokenizer), `train.bin` and `validation.bin` (flat
token arrays, documents joined by the end-of-text token), `train.sentences.npy` and
`validation.sentences.npy` (token offsets of each sentence, for contrastive training),
`word_boundaries.npy` (which tokens begin and end words, for whole-word masking) and `meta.json` (which
records, under `files`, the size and sha256 of each of the others).

The sources are written one after the other, so each is a contiguous segment of both arrays. A dataset
written with mixture weights records, under `sources` in its meta, each source's normalised weight and
its [start, end) token offsets in each split, which training draws from by weight
(`models.windows.MixtureSource`).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from models.build import SpecialTokenIds
from models.windows import MixtureSource
from selfsup.spec import TokenizerSpec
from storage.bases import TOKENIZER_FILES
from storage.blobs import BlobStore
from storage.keys import corpus_split_key, dataset_prefix, join_key
from storage.tables import Corpus, TokenizedDataset
from workers.data.documents import read_jsonl_texts
from workers.data.token_arrays import TokenArrays, recorded_files
from workers.data.tokenization import (
    AnyTokenizerSpec,
    TokenArrayWriter,
    special_token_meta,
    token_dtype,
    train_tokenizer,
    word_boundaries,
)

TOKENIZER_DIR = "tokenizer"
WORD_BOUNDARIES_FILE = "word_boundaries.npy"
# Bumped when the files of a dataset change, so a cached dataset never lacks what the trainer reads.
DATASET_FORMAT = 2
_tokenizer_spec = TypeAdapter(TokenizerSpec)


def tokenizer_identity(tokenizer_spec: dict[str, Any], base_tokenizer_sha256: str | None = None) -> dict[str, Any]:
    """What the tokens depend on besides the text: the spec of a tokenizer trained on it, or, for a job that
    starts from a base (`init_from`), the sha256 of the base's tokenizer files (`storage.bases.tokenizer_sha256`)."""
    if base_tokenizer_sha256 is not None:
        return {"base_tokenizer_sha256": base_tokenizer_sha256}
    return tokenizer_spec


def dataset_key(corpus_sha256s: Sequence[str], tokenizer_spec: dict[str, Any]) -> str:
    """The cache key: what the tokens depend on, and nothing else (`tokenizer_spec`: a `tokenizer_identity`)."""
    payload = json.dumps(
        {"corpora": list(corpus_sha256s), "tokenizer": tokenizer_spec, "format": DATASET_FORMAT}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


# Each corpus id's documents of a split ("train" or "validation"), readable as many times as asked.
DocumentSources = Mapping[str, Callable[[str], Iterable[str]]]


def build_dataset(
    *,
    store: BlobStore,
    key: str,
    corpora: Sequence[Corpus],
    tokenizer_spec: dict[str, Any],
    base_tokenizer: Path | None = None,
    identity: dict[str, Any] | None = None,
) -> TokenizedDataset:
    """Train the tokenizer on the training split (or take `base_tokenizer`'s) and write both splits as flat token
    arrays; `identity` is what the key says of the tokenizer (`tokenizer_identity`), recorded with the dataset."""
    spec = _tokenizer_spec.validate_python(tokenizer_spec)
    prefix = dataset_prefix(key)
    sources = {corpus.id: functools.partial(_corpus_documents, store, corpus) for corpus in corpora}
    with store.staging_dir(prefix) as staging:
        meta = write_dataset(staging, spec, sources, base_tokenizer=base_tokenizer)
    return TokenizedDataset(
        key=key,
        tokenizer_spec=identity or tokenizer_spec,
        corpus_sha256s=[c.sha256 for c in corpora],
        vocab_size=meta["vocab_size"],
        train_tokens=meta["train_tokens"],
        validation_tokens=meta["validation_tokens"],
        blob_prefix=prefix,
    )


def write_dataset(
    folder: Path,
    spec: AnyTokenizerSpec,
    sources: DocumentSources,
    weights: Mapping[str, float] | None = None,
    *,
    base_tokenizer: Path | None = None,
) -> dict[str, Any]:
    """Write a dataset folder (see the module docstring) from each source's documents; returns its meta.

    With `base_tokenizer` (a folder holding a saved tokenizer: a base's, for `init_from`), that tokenizer's files
    are copied as they are and used; otherwise `spec`'s tokenizer is trained on the training split."""
    shares = None if weights is None else normalised_weights(weights, sources=list(sources))
    if base_tokenizer is not None:
        tokenizer = copy_base_tokenizer(base_tokenizer, folder / TOKENIZER_DIR)
    else:
        tokenizer = train_tokenizer(spec, itertools.chain.from_iterable(read("train") for read in sources.values()))
        tokenizer.save_pretrained(folder / TOKENIZER_DIR)
        _portable_tokenizer_config(folder / TOKENIZER_DIR / "tokenizer_config.json")
    with open(folder / WORD_BOUNDARIES_FILE, "wb") as fh:
        np.save(fh, word_boundaries(tokenizer))
    corpus_tokens: dict[str, dict[str, int]] = {corpus_id: {} for corpus_id in sources}
    for split in ("train", "validation"):
        writer = TokenArrayWriter(tokenizer, folder / f"{split}.bin", sentences_path=folder / f"{split}.sentences.npy")
        try:
            for corpus_id, read in sources.items():
                corpus_tokens[corpus_id][split] = writer.add(read(split))
        finally:
            writer.close()
    meta = {
        "vocab_size": len(tokenizer),
        "dtype": token_dtype(len(tokenizer)).name,
        "special_tokens": spec.special_tokens or "gpt2",
        **special_token_meta(tokenizer),
        "train_tokens": sum(counts["train"] for counts in corpus_tokens.values()),
        "validation_tokens": sum(counts["validation"] for counts in corpus_tokens.values()),
        "corpus_tokens": corpus_tokens,
    }
    if shares is not None:
        meta["sources"] = _source_segments(corpus_tokens, shares)
    # The sha256 of every file, recorded as it is written: a worker checks its downloaded copy against them.
    meta["files"] = recorded_files(folder)
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def copy_base_tokenizer(source: Path, target: Path) -> PreTrainedTokenizerFast:
    """Copy a base's tokenizer files byte for byte (so their sha256s stay the base's) and load the copy."""
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=True, use_fast=True)
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ValueError(f"the base's tokenizer ({type(tokenizer).__name__}) has no fast (Rust) version")
    return tokenizer


def normalised_weights(weights: Mapping[str, float], *, sources: Sequence[str]) -> dict[str, float]:
    """Each source's mixture weight divided by their sum, in the sources' order; refuses a mismatch."""
    if set(weights) != set(sources):
        raise ValueError(f"mixture weights name {sorted(weights)}, the sources are {sorted(sources)}")
    if any(not math.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"mixture weights must be finite, non-negative and not all zero: {dict(weights)}")
    total = sum(weights.values())
    return {name: weights[name] / total for name in sources}


def _source_segments(corpus_tokens: dict[str, dict[str, int]], shares: dict[str, float]) -> list[dict[str, Any]]:
    """Each source's weight and [start, end) token offsets in each split, in the order they were written."""
    segments: list[dict[str, Any]] = []
    start = {"train": 0, "validation": 0}
    for name, share in shares.items():
        segment: dict[str, Any] = {"name": name, "weight": share}
        for split in ("train", "validation"):
            end = start[split] + corpus_tokens[name][split]
            segment[split] = [start[split], end]
            start[split] = end
        segments.append(segment)
    return segments


def mixture_sources(meta: dict[str, Any]) -> tuple[MixtureSource, ...]:
    """The weighted sources recorded in a dataset's meta; () for a dataset written without weights."""
    return tuple(
        MixtureSource(
            name=source["name"],
            weight=float(source["weight"]),
            train=(int(source["train"][0]), int(source["train"][1])),
            validation=(int(source["validation"][0]), int(source["validation"][1])),
        )
        for source in meta.get("sources", ())
    )


def open_token_arrays(folder: Path, meta: dict[str, Any]) -> TokenArrays:
    """The token arrays of a dataset folder, described by its meta (special ids, mixture sources)."""
    return TokenArrays.open(
        folder,
        dtype=meta["dtype"],
        vocab_size=meta["vocab_size"],
        special=special_token_ids(meta),
        sources=mixture_sources(meta),
    )


def open_dataset(folder: Path) -> TokenArrays:
    """The token arrays of a dataset folder, with the special ids and mixture sources from its `meta.json`."""
    return open_token_arrays(folder, json.loads((folder / "meta.json").read_text()))


def _corpus_documents(store: BlobStore, corpus: Corpus, split: str) -> Iterator[str]:
    with store.open(corpus_split_key(corpus.id, split)) as fh:
        yield from read_jsonl_texts(fh)


def _portable_tokenizer_config(path: Path) -> None:
    # transformers 5 writes its own class name; the generic fast class loads on 4.x and 5.x alike.
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(config.get("extra_special_tokens"), list):
        # 5.x writes T5's sentinels as a list under this name; 4.x expects a dict there, and both
        # read the list under its older name.
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    path.write_text(json.dumps(config, indent=2))


def dataset_meta(store: BlobStore, dataset: TokenizedDataset) -> dict[str, Any]:
    """The dataset's `meta.json`."""
    with store.open(join_key(dataset.blob_prefix, "meta.json")) as fh:
        meta: dict[str, Any] = json.load(fh)
    return meta


def special_token_ids(meta: dict[str, Any]) -> SpecialTokenIds:
    """The special ids a model config and the objectives need, from a dataset's meta."""
    return SpecialTokenIds(
        eos=meta["eos_token_id"],
        unk=meta.get("unk_token_id"),
        bos=meta.get("bos_token_id"),
        pad=meta.get("pad_token_id"),
        cls=meta.get("cls_token_id"),
        sep=meta.get("sep_token_id"),
        mask=meta.get("mask_token_id"),
        sentinels=tuple(meta.get("sentinel_token_ids", ())),
        all=tuple(meta.get("special_token_ids", (meta["eos_token_id"],))),
    )
