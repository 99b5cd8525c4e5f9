"""Where each blob lives: every key the service reads or writes is built here.

corpora/<corpus_id>/upload                 the bytes as uploaded
corpora/<corpus_id>/<split>.jsonl          an ingested split (train, validation)
datasets/<dataset_key>/...                 a tokenized dataset folder
curated/<curation_key>/                    a curated dataset's kept text, once per curation key:
    source-<i>/<split>.jsonl               the kept documents of source i's split (train, validation)
    report.json                            the curation report (written last: its presence means done)
checkpoints/<job_id>/v<version>-<random>/  one checkpoint (a Hugging Face folder and resume/)
heldout/<heldout_key>/                     a held-out corpus tokenized with one job tokenizer (both splits)
labelled-sets/<labelled_set_id>/examples.jsonl  a labelled set for probes, as uploaded
models/<model_id>/upload                   an uploaded model archive, until it is validated
models/<model_id>/hf/                      the uploaded model's extracted Hugging Face folder
"""

from __future__ import annotations

import secrets

CORPORA = "corpora"
DATASETS = "datasets"
CURATED = "curated"
CHECKPOINTS = "checkpoints"
HELDOUT = "heldout"
MODELS = "models"


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


def curation_prefix(curation_key: str) -> str:
    """The blob prefix of the kept text and report of one curation (shared by datasets with the same key)."""
    return join_key(CURATED, curation_key)


def curated_split_file(source_index: int, split: str) -> str:
    """The path, inside a curation's folder, of one source's kept documents of a split, as JSONL."""
    return f"source-{source_index}/{split}.jsonl"


def curated_split_key(curation_key: str, source_index: int, split: str) -> str:
    """Blob key of one source's kept documents of a split (`train`, `validation`)."""
    return join_key(curation_prefix(curation_key), curated_split_file(source_index, split))


CURATION_REPORT_FILE = "report.json"


def curation_report_key(curation_key: str) -> str:
    """Blob key of a curation's report (JSON)."""
    return join_key(curation_prefix(curation_key), CURATION_REPORT_FILE)


def job_checkpoints_prefix(job_id: str) -> str:
    """The blob prefix under which all of a job's checkpoints live."""
    return join_key(CHECKPOINTS, job_id)


def checkpoint_prefix(job_id: str, version: int) -> str:
    """A fresh blob prefix for a job's checkpoint version (unique, so two writers never share one)."""
    return join_key(job_checkpoints_prefix(job_id), f"v{version:06d}-{secrets.token_hex(4)}")


def heldout_prefix(heldout_key: str) -> str:
    """The blob prefix of a held-out corpus's token array, named by its cache key."""
    return join_key(HELDOUT, heldout_key)


LABELLED_SETS = "labelled-sets"


def labelled_set_key(labelled_set_id: str) -> str:
    """Blob key of a labelled set's examples, as uploaded (JSONL `{"text", "label"}`)."""
    return join_key(LABELLED_SETS, labelled_set_id, "examples.jsonl")


def labelled_set_prefix(labelled_set_id: str) -> str:
    """The blob prefix of everything stored for one labelled set."""
    return join_key(LABELLED_SETS, labelled_set_id)


def model_prefix(model_id: str) -> str:
    """The blob prefix of everything stored for one uploaded model."""
    return join_key(MODELS, model_id)


def model_upload_key(model_id: str) -> str:
    """Blob key of a model archive as uploaded (removed once extracted)."""
    return join_key(model_prefix(model_id), "upload")


def model_files_prefix(model_id: str) -> str:
    """The blob prefix of an uploaded model's extracted Hugging Face folder."""
    return join_key(model_prefix(model_id), "hf")
