"""The base a job starts from (`init_from`): a Hugging Face folder in the blob store, recorded on the job at creation.

A base is a plain dict (the `jobs.base` column) so prepare and train never need the parent's row again:

    {"type": "checkpoint" | "model", "id": "ckpt_…" | "mdl_…", "blob_prefix": "…",
     "files": [{"name", "size_bytes", "sha256"}, …],   # every file of the folder, verified before use
     "tokenizer_sha256": "…",                           # `tokenizer_sha256(files)`: the tokenization cache key
     "model": {family, layers, heads, width, context_length, …}, "tokenizer": {type, …, special_tokens},
     # an uploaded model also keeps its `config.json`, which the trainer builds the model from:
     "config": {…},
     # a checkpoint also names where it came from:
     "job_id": "job_…", "job_name": "…", "version": 3, "step": 80}

The folder holds `config.json`, safetensors weights and the tokenizer files (`TOKENIZER_FILES`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

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


# --- uploaded models (`init_from.model_id`): the plumbing the models table plugs into ---
class ModelRow(Protocol):
    """What a base needs of an uploaded model's row (`storage.tables.Model`, issue 13's contract)."""

    id: str
    name: str
    family: str | None  # set once the model is ready
    files: list[Any]
    blob_prefix: str


# The tokenizer algorithm a family's stock Hugging Face tokenizer uses, for the spec and the model card.
_TOKENIZER_TYPE_BY_FAMILY = {"gpt2": "bpe", "llama": "bpe", "roberta": "bpe", "bert": "wordpiece", "t5": "unigram"}


def shape_from_hf_config(family: str, config: dict[str, Any]) -> dict[str, Any]:
    """A job spec's `model` shape (family, layers, heads, width, context_length) from a `config.json`.

    The inverse of `models.build` for each family; `ValueError` naming the key a config lacks."""
    try:
        if family == "gpt2":
            return _shape(family, config["n_layer"], config["n_head"], config["n_embd"], config["n_positions"])
        if family in ("llama", "bert"):
            return _shape(
                family,
                config["num_hidden_layers"],
                config["num_attention_heads"],
                config["hidden_size"],
                config["max_position_embeddings"],
            )
        if family == "roberta":  # positions are numbered from pad_token_id + 1
            context = config["max_position_embeddings"] - config.get("pad_token_id", 1) - 1
            return _shape(
                family, config["num_hidden_layers"], config["num_attention_heads"], config["hidden_size"], context
            )
        if family == "t5":  # relative positions: the context is the tokenizer's, 512 as in the stock models
            return _shape(
                family, config["num_layers"], config["num_heads"], config["d_model"], config.get("n_positions", 512)
            )
    except KeyError as exc:
        raise ValueError(f"config.json of a {family} model has no {exc.args[0]}") from exc
    raise ValueError(f"selfsup does not train the {family} family")


def _shape(family: str, layers: int, heads: int, width: int, context_length: int) -> dict[str, Any]:
    return {"family": family, "layers": layers, "heads": heads, "width": width, "context_length": context_length}


def model_base(model: ModelRow, *, config: dict[str, Any]) -> dict[str, Any]:
    """The base a job starting from an uploaded model starts from (`config`: its `config.json`). The config is kept
    whole: the trainer builds the job's model from it, so what our builder would choose differently (a vocabulary
    padded past the tokenizer's length, as released models often have; a feed-forward width, an epsilon) stays
    the uploaded model's. The tokenizer section says what kind of tokenizer the family's is, with its specials."""
    family = model.family
    if family is None:
        raise ValueError("it has not been validated (no family yet)")
    if "vocab_size" not in config:
        raise ValueError(f"config.json of a {family} model has no vocab_size")
    return {
        "type": "model",
        "id": model.id,
        "name": model.name,
        "blob_prefix": model.blob_prefix,
        # As a checkpoint lists them (`size_bytes`), whichever name the row gives the size.
        "files": [
            {"name": f["name"], "size_bytes": f.get("size_bytes", f.get("bytes")), "sha256": f["sha256"]}
            for f in model.files
        ],
        "tokenizer_sha256": tokenizer_sha256(model.files),
        "model": shape_from_hf_config(family, config),
        "config": config,
        "tokenizer": {
            "type": _TOKENIZER_TYPE_BY_FAMILY[family],
            "vocab_size": config["vocab_size"],
            "special_tokens": "gpt2" if family == "llama" else family,
        },
    }
