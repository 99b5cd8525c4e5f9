"""What a checkpoint holds: its lineage (`selfsup.json`), its model card, and the files of its folder.

Pure of the database: the loop in `workers/train.py` picks the version and records the checkpoint under
its lease; this module only says what goes into the folder and writes it.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from models.build import count_parameters
from selfsup.spec import JobSpec
from storage.blobs import BlobStore
from storage.checkpoints import WrittenCheckpoint, lineage_json, write_checkpoint
from storage.tables import Corpus, Dataset, Job, TokenizedDataset
from workers.training.model_card import render_model_card
from workers.training.trainer import Trainer

MODEL_CARD_FILE = "README.md"
LINEAGE_FILE = "selfsup.json"


@dataclass(frozen=True)
class RunLineage:
    """What every checkpoint of one job shares in its lineage: the job, its corpora, its tokenized data and,
    for a job on a curated dataset, that dataset (sources, weights, curation spec, report totals)."""

    job: dict[str, Any]
    corpora: list[dict[str, Any]]
    dataset: dict[str, Any]
    curated_dataset: dict[str, Any] | None = None
    # The checkpoint or model the job started from (`base_lineage`), None for a random init.
    init_from: dict[str, Any] | None = None

    @classmethod
    def of(
        cls,
        *,
        job: Job,
        spec: JobSpec,
        corpora: Sequence[Corpus],
        dataset: TokenizedDataset,
        corpus_tokens: dict[str, Any],
        curated: Dataset | None = None,
        init_from: dict[str, Any] | None = None,
    ) -> RunLineage:
        """The lineage of a job's rows; `corpus_tokens` is the dataset's per-corpus token count."""
        return cls(
            init_from=init_from,
            curated_dataset=curated_lineage(curated) if curated is not None else None,
            job={"id": job.id, "name": job.name, "spec": spec.model_dump(mode="json")},
            corpora=[
                {"id": c.id, "name": c.name, "sha256": c.sha256, "documents": c.documents, "characters": c.characters}
                for c in corpora
            ],
            dataset={
                "key": dataset.key,
                "train_tokens": dataset.train_tokens,
                "validation_tokens": dataset.validation_tokens,
                "corpus_tokens": corpus_tokens,
            },
        )


def base_lineage(base: dict[str, Any], folder: Path) -> dict[str, Any]:
    """What a job's lineage says of the base it started from (`jobs.base`, its files verified in `folder`).

    A checkpoint's entry carries that checkpoint's own corpora, dataset and `init_from` (from its `selfsup.json`), so
    a chain of continued runs nests back to the first corpus."""
    entry: dict[str, Any] = {
        key: base[key] for key in ("type", "id", "name", "job_id", "job_name", "version", "step") if key in base
    }
    entry["files"] = [{"name": f["name"], "size_bytes": f["size_bytes"], "sha256": f["sha256"]} for f in base["files"]]
    entry["tokenizer_sha256"] = base["tokenizer_sha256"]
    parent_lineage = folder / LINEAGE_FILE
    if base["type"] == "checkpoint" and parent_lineage.is_file():
        parent = json.loads(parent_lineage.read_text(encoding="utf-8"))
        entry["objective"] = parent.get("job", {}).get("spec", {}).get("objective")
        for key in ("corpora", "dataset", "curated_dataset", "init_from"):
            if parent.get(key) is not None:
                entry[key] = parent[key]
    return entry


def curated_lineage(dataset: Dataset) -> dict[str, Any]:
    """A curated dataset as lineage names it: what was mixed, how, how it was cleaned, and what that removed."""
    return {
        "id": dataset.id,
        "name": dataset.name,
        "sources": [
            {k: source[k] for k in ("corpus_id", "name", "sha256", "weight", "share")}
            for source in dataset.source_corpora
        ],
        "curation": dataset.request.get("curation"),
        "decontaminate_against": dataset.evaluation_corpora,
        "report_totals": dataset.totals,
    }


@dataclass(frozen=True)
class CheckpointRecord:
    """What one checkpoint records about the moment it was taken (its row and its lineage both say it)."""

    version: int
    step: int
    tokens_seen: int
    final: bool
    metrics: dict[str, float]
    val_loss: float | None = None


def software_versions() -> dict[str, str]:
    """The versions a checkpoint was written with."""
    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def checkpoint_manifest(run: RunLineage, record: CheckpointRecord, *, parameters: int) -> dict[str, Any]:
    """The content of `selfsup.json`: where a checkpoint came from and where training stood."""
    curated = {"curated_dataset": run.curated_dataset} if run.curated_dataset is not None else {}
    init_from = {"init_from": run.init_from} if run.init_from is not None else {}
    return {
        "job": run.job,
        "corpora": run.corpora,
        "dataset": run.dataset,
        **curated,
        **init_from,
        "checkpoint": {
            "version": record.version,
            "step": record.step,
            "tokens_seen": record.tokens_seen,
            "final": record.final,
            "metrics": record.metrics,
        },
        "parameters": parameters,
        "software": software_versions(),
    }


def checkpoint_text_files(manifest: dict[str, Any]) -> dict[str, str]:
    """The text files of a checkpoint folder, by name: its model card and its lineage."""
    return {MODEL_CARD_FILE: render_model_card(manifest), LINEAGE_FILE: lineage_json(manifest)}


def write_checkpoint_folder(
    *,
    store: BlobStore,
    trainer: Trainer,
    run: RunLineage,
    record: CheckpointRecord,
    tokenizer_dir: Path,
    before_rename: Callable[[], None] | None = None,
) -> WrittenCheckpoint:
    """Write a checkpoint's folder atomically: the model, its tokenizer, card, lineage and resume state."""
    manifest = checkpoint_manifest(run, record, parameters=count_parameters(trainer.model))
    return write_checkpoint(
        store=store,
        job_id=run.job["id"],
        version=record.version,
        save_model=trainer.save_pretrained,
        tokenizer_dir=tokenizer_dir,
        text_files=checkpoint_text_files(manifest),
        resume_state=trainer.state_dict(),
        # Tokenizers and pipelines truncate and stop at the job's context length, not the dataset tokenizer's.
        tokenizer_settings={"model_max_length": trainer.spec.model.context_length},
        before_rename=before_rename,
    )
