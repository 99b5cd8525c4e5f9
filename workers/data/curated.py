"""Curated datasets on the data side: what curation reads and keeps, and the tokenization of the kept text.

How the splits are curated: every source corpus keeps the train/validation split that ingest gave it,
and one `curate` run sees all of them, each source's validation split before any training split
(`sources[0].validation, sources[1].validation, …, sources[0].train, …`). Dedup keeps the first
occurrence, so a training document that duplicates (or nearly duplicates) a validation document is the
one dropped, and validation figures are not flattered by text the model trained on. Every rule applies
to both splits; decontamination drops documents of either split that share an n-gram with the
evaluation corpora (both of their splits).

The kept text lives under `curated/<curation_key>/` (see `storage.keys`), written once and shared by
every dataset with that key. The curation names its sources by position (`sources[0].train`), not by
corpus id, so the report is the same whoever asked for it.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from pydantic import TypeAdapter

from selfsup.curation_spec import CurationSpec, DatasetCreate
from selfsup.spec import TokenizerSpec
from storage.blobs import BlobStore
from storage.keys import (
    CURATION_REPORT_FILE,
    corpus_split_key,
    curated_split_file,
    curated_split_key,
    curation_prefix,
    curation_report_key,
    dataset_prefix,
)
from storage.tables import Corpus, Dataset, TokenizedDataset
from workers.data.curation import CurationSource, curate
from workers.data.datasets import DATASET_FORMAT, write_dataset
from workers.data.documents import read_jsonl_texts

# The order splits are curated in: validation first, so dedup drops the training copy of a document.
CURATION_SPLIT_ORDER = ("validation", "train")
SPLITS = ("train", "validation")
_tokenizer_spec = TypeAdapter(TokenizerSpec)


def effective_curation(request: DatasetCreate) -> CurationSpec:
    """The rules a request runs: its `curation`, or (absent) none but decontamination when it names corpora."""
    if request.curation is not None:
        return request.curation
    off = {name: {"enabled": False} for name in CurationSpec.model_fields}
    off["decontamination"] = {"enabled": bool(request.decontaminate_against)}
    return CurationSpec.model_validate(off)


def source_name(source_index: int, split: str) -> str:
    """How the curation report names one source's split."""
    return f"sources[{source_index}].{split}"


def curation_order(source_count: int) -> list[tuple[int, str]]:
    """(source index, split) in the order curation sees them: every validation split, then every train split."""
    return [(i, split) for split in CURATION_SPLIT_ORDER for i in range(source_count)]


def corpus_documents(store: BlobStore, corpus_id: str, split: str) -> Iterator[str]:
    """An ingested corpus's documents of one split."""
    with store.open(corpus_split_key(corpus_id, split)) as fh:
        yield from read_jsonl_texts(fh)


def _with_heartbeat(documents: Iterable[str], heartbeat: Callable[[], None], every: int = 500) -> Iterator[str]:
    for n, document in enumerate(documents):
        if n % every == 0:
            heartbeat()
        yield document


def run_curation(
    *,
    store: BlobStore,
    curation_key: str,
    request: DatasetCreate,
    sources: Sequence[Corpus],
    evaluation: Sequence[Corpus],
    workdir: Path,
    heartbeat: Callable[[], None] = lambda: None,
    processes: int = 1,
) -> dict[str, Any]:
    """Curate the sources' splits, store the kept text and the report under the key at once; returns the report.

    The per-document rules run in `processes` worker processes.
    """
    order = curation_order(len(sources))
    curation_sources = [
        CurationSource(
            name=source_name(i, split),
            documents=functools.partial(_heartbeat_documents, store, sources[i].id, split, heartbeat),
        )
        for i, split in order
    ]
    evaluation_documents = itertools.chain.from_iterable(
        corpus_documents(store, corpus.id, split) for corpus in evaluation for split in SPLITS
    )
    with store.staging_dir(curation_prefix(curation_key)) as staging:
        outputs: list[IO[bytes]] = []
        try:
            for i, split in order:
                path = staging / curated_split_file(i, split)
                path.parent.mkdir(parents=True, exist_ok=True)
                outputs.append(open(path, "wb"))  # noqa: SIM115 - closed together below

            def keep(position: int, text: str) -> None:
                outputs[position].write((json.dumps({"text": text}, ensure_ascii=False) + "\n").encode("utf-8"))

            report = curate(
                curation_sources,
                effective_curation(request),
                evaluation=evaluation_documents,
                workdir=workdir,
                on_kept=keep,
                processes=processes,
            )
        finally:
            for out in outputs:
                out.close()
        dumped: dict[str, Any] = report.model_dump(mode="json")
        (staging / CURATION_REPORT_FILE).write_text(json.dumps(dumped, indent=1, ensure_ascii=False))
    return dumped


def _heartbeat_documents(store: BlobStore, corpus_id: str, split: str, heartbeat: Callable[[], None]) -> Iterator[str]:
    return _with_heartbeat(corpus_documents(store, corpus_id, split), heartbeat)


def stored_report(store: BlobStore, curation_key: str) -> dict[str, Any] | None:
    """The report of a finished curation with this key, or None if it has not been stored."""
    key = curation_report_key(curation_key)
    if not store.exists(key):
        return None
    with store.open(key) as fh:
        report: dict[str, Any] = json.load(fh)
    return report


def report_totals(report: dict[str, Any]) -> dict[str, Any]:
    """The headline of a report: documents and characters in and out, and documents each rule removed."""
    if isinstance(report.get("totals"), dict):
        return dict(report["totals"])
    totals: dict[str, Any] = {k: v for k, v in report.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    rules = report.get("rules")
    if isinstance(rules, dict):
        totals["documents_removed"] = {
            rule: counts.get("documents_removed", 0) for rule, counts in rules.items() if isinstance(counts, dict)
        }
    return totals


def curated_dataset_key(curation_key: str, source_names: Sequence[str], tokenizer_spec: dict[str, Any]) -> str:
    """The tokenization cache key of a curated dataset: its kept text, its sources' names, the tokenizer."""
    payload = json.dumps(
        {
            "curation": curation_key,
            "sources": list(source_names),
            "tokenizer": tokenizer_spec,
            "format": DATASET_FORMAT,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _curated_documents(store: BlobStore, curation_key: str, source_index: int, split: str) -> Iterator[str]:
    with store.open(curated_split_key(curation_key, source_index, split)) as fh:
        yield from read_jsonl_texts(fh)


def build_curated_dataset(
    *,
    store: BlobStore,
    key: str,
    dataset: Dataset,
    tokenizer_spec: dict[str, Any],
    base_tokenizer: Path | None = None,
    identity: dict[str, Any] | None = None,
) -> TokenizedDataset:
    """Tokenize a ready dataset's kept text, each source (named by its corpus id) drawn by its weight."""
    spec = _tokenizer_spec.validate_python(tokenizer_spec)
    prefix = dataset_prefix(key)
    sources = {
        source["corpus_id"]: functools.partial(_curated_documents, store, dataset.curation_key, i)
        for i, source in enumerate(dataset.source_corpora)
    }
    weights = {source["corpus_id"]: float(source["share"]) for source in dataset.source_corpora}
    with store.staging_dir(prefix) as staging:
        meta = write_dataset(staging, spec, sources, weights=weights, base_tokenizer=base_tokenizer)
    return TokenizedDataset(
        key=key,
        tokenizer_spec=identity or tokenizer_spec,
        corpus_sha256s=[source["sha256"] for source in dataset.source_corpora],
        vocab_size=meta["vocab_size"],
        train_tokens=meta["train_tokens"],
        validation_tokens=meta["validation_tokens"],
        blob_prefix=prefix,
    )
