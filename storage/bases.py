"""The base a job starts from (`init_from`): a Hugging Face folder in the blob store, recorded on the job at creation.

A base is a plain dict (the `jobs.base` column) so prepare and train never need the parent's row again:

    {"type": "checkpoint" | "model", "id": "ckpt_…" | "mdl_…", "blob_prefix": "…",
     "files": [{"name", "size_bytes", "sha256"}, …],   # every file of the folder, verified before use
     "tokenizer_sha256": "…",                           # `tokenizer_sha256(files)`: the tokenization cache key
     "model": {family, layers, heads, width, context_length, …}, "tokenizer": {type, …, special_tokens},
     # a checkpoint also names where it came from:
     "job_id": "job_…", "job_name": "…", "version": 3, "step": 80}

The folder holds `config.json`, safetensors weights and the tokenizer files (`TOKENIZER_FILES`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from storage.tables import Checkpoint, Job

# The files a Hugging Face tokenizer is saved as; those of a base that exist are its tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


class BaseUnusable(RuntimeError):
    """The base's files are gone or no longer match their sha256s: the job cannot start from it."""


def tokenizer_files(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries of a base's file list that are its tokenizer, by name."""
    return sorted((f for f in files if f["name"] in TOKENIZER_FILES), key=lambda f: f["name"])


def tokenizer_sha256(files: list[dict[str, Any]]) -> str:
    """One sha256 for a base's tokenizer: over its tokenizer files' names and sha256s."""
    listing = [[f["name"], f["sha256"]] for f in tokenizer_files(files)]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def checkpoint_base(checkpoint: Checkpoint, job: Job) -> dict[str, Any]:
    """The base a job continuing from `checkpoint` (of `job`) starts from."""
    return {
        "type": "checkpoint",
        "id": checkpoint.id,
        "job_id": job.id,
        "job_name": job.name,
        "version": checkpoint.version,
        "step": checkpoint.step,
        "blob_prefix": checkpoint.blob_prefix,
        "files": list(checkpoint.files),
        "tokenizer_sha256": tokenizer_sha256(checkpoint.files),
        "model": dict(job.spec["model"]),
        "tokenizer": dict(job.spec["tokenizer"]),
    }
