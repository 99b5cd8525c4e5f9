"""Where each blob lives: every key the service reads or writes is built here.

corpora/<corpus_id>/upload                 the bytes as uploaded
corpora/<corpus_id>/<split>.jsonl          an ingested split (train, validation)
datasets/<dataset_key>/...                 a tokenized dataset folder
checkpoints/<job_id>/v<version>-<random>/  one checkpoint (a Hugging Face folder and resume/)
"""

from __future__ import annotations

import secrets

CORPORA = "corpora"
DATASETS = "datasets"
CHECKPOINTS = "checkpoints"


def join_key(prefix: str, *names: str) -> str:
    """The key of `names` under `prefix` (a file in a dataset or checkpoint folder)."""
    return "/".join((prefix.rstrip("/"), *names))


def corpus_prefix(corpus_id: str) -> str:
    """The blob prefix of everything stored for one corpus."""
    return join_key(CORPORA, corpus_id)


def corpus_upload_key(corpus_id: str) -> str:
    """Blob key of a corpus's bytes as uploaded."""
    return join_key(corpus_prefix(corpus_id), "upload")


def corpus_split_key(corpus_id: str, split: str) -> str:
    """Blob key of one split (`train`, `validation`) of an ingested corpus, as JSONL."""
    return join_key(corpus_prefix(corpus_id), f"{split}.jsonl")


def dataset_prefix(dataset_key: str) -> str:
    """The blob prefix of a tokenized dataset, named by its cache key."""
    return join_key(DATASETS, dataset_key)


def job_checkpoints_prefix(job_id: str) -> str:
    """The blob prefix under which all of a job's checkpoints live."""
    return join_key(CHECKPOINTS, job_id)


def checkpoint_prefix(job_id: str, version: int) -> str:
    """A fresh blob prefix for a job's checkpoint version (unique, so two writers never share one)."""
    return join_key(job_checkpoints_prefix(job_id), f"v{version:06d}-{secrets.token_hex(4)}")
