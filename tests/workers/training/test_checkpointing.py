"""A checkpoint's lineage, text files and folder, built without a database."""

from __future__ import annotations

import json
import platform
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import transformers

from models.build import SpecialTokenIds, count_parameters
from selfsup.spec import JobSpec
from storage.blobs import LocalBlobStore
from storage.checkpoints import RESUME_DIR, RESUME_STATE_FILE, load_resume_state, verify_files
from storage.tables import Corpus, Job, TokenizedDataset
from workers.data.token_arrays import TokenArrays
from workers.training.checkpointing import (
    CheckpointRecord,
    RunLineage,
    checkpoint_manifest,
    checkpoint_text_files,
    write_checkpoint_folder,
)
from workers.training.trainer import Trainer

SPEC = JobSpec.model_validate(
    {
        "corpus_ids": ["cor_1", "cor_2"],
        "objective": {"type": "causal_lm"},
        "tokenizer": {"type": "char"},
        "model": {"layers": 1, "heads": 2, "width": 32, "context_length": 16},
        "training": {"max_steps": 4, "batch_size": 2},
        "evaluation": {"batches": 1},
    }
)
CORPUS_TOKENS = {"cor_1": {"train": 900, "validation": 90}, "cor_2": {"train": 100, "validation": 10}}


def _lineage() -> RunLineage:
    # Rows that were never added to a session: the lineage reads their columns and nothing else.
    return RunLineage.of(
        job=Job(id="job_1", name="shakespeare"),
        spec=SPEC,
        corpora=[
            Corpus(id="cor_1", name="a.txt", sha256="ab" * 32, documents=7, characters=1_000),
            Corpus(id="cor_2", name="b.jsonl", sha256="cd" * 32, documents=3, characters=110),
        ],
        dataset=TokenizedDataset(key="k", train_tokens=1_000, validation_tokens=100, blob_prefix="datasets/k"),
        corpus_tokens=CORPUS_TOKENS,
    )


RECORD = CheckpointRecord(
    version=3, step=40, tokens_seen=1_280, final=False, metrics={"train_loss": 2.5, "val_loss": 2.75}, val_loss=2.75
)


def test_manifest_says_where_a_checkpoint_came_from_and_where_training_stood() -> None:
    manifest = checkpoint_manifest(_lineage(), replace(RECORD, final=True), parameters=12_345)
    assert manifest == {
        "job": {"id": "job_1", "name": "shakespeare", "spec": SPEC.model_dump(mode="json")},
        "corpora": [
            {"id": "cor_1", "name": "a.txt", "sha256": "ab" * 32, "documents": 7, "characters": 1_000},
            {"id": "cor_2", "name": "b.jsonl", "sha256": "cd" * 32, "documents": 3, "characters": 110},
        ],
        "dataset": {"key": "k", "train_tokens": 1_000, "validation_tokens": 100, "corpus_tokens": CORPUS_TOKENS},
        "checkpoint": {
            "version": 3,
            "step": 40,
            "tokens_seen": 1_280,
            "final": True,
            "metrics": {"train_loss": 2.5, "val_loss": 2.75},
        },
        "parameters": 12_345,
        "software": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }


def test_the_validation_loss_is_recorded_in_the_row_not_in_the_lineage() -> None:
    with_loss = checkpoint_manifest(_lineage(), RECORD, parameters=1)
    without = checkpoint_manifest(_lineage(), replace(RECORD, val_loss=None), parameters=1)
    assert with_loss == without


def test_text_files_are_the_model_card_and_the_sorted_lineage() -> None:
    manifest = checkpoint_manifest(_lineage(), RECORD, parameters=12_345)
    files = checkpoint_text_files(manifest)
    assert set(files) == {"README.md", "selfsup.json"}
    assert files["selfsup.json"] == json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    assert json.loads(files["selfsup.json"]) == manifest
    assert "AutoModelForCausalLM" in files["README.md"] and "`ab" in files["README.md"]


def test_folder_holds_the_model_tokenizer_card_lineage_and_resume_state(tmp_path: Path) -> None:
    tokens = (np.arange(2_000) % 50).astype(np.uint16)
    data = TokenArrays(train=tokens, validation=tokens[:500], vocab_size=52, special=SpecialTokenIds(eos=0))
    trainer = Trainer(SPEC, data, device=torch.device("cpu"))
    trainer.train_step()
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "tokenizer.json").write_text("{}")
    # A dataset's tokenizer serves every context length; the checkpoint's says the job's.
    (tokenizer_dir / "tokenizer_config.json").write_text('{"model_max_length": 1000000, "eos_token": "x"}')
    store = LocalBlobStore(tmp_path / "blobs")
    renames: list[str] = []

    written = write_checkpoint_folder(
        store=store,
        trainer=trainer,
        run=_lineage(),
        record=replace(RECORD, step=trainer.step, tokens_seen=trainer.tokens_seen),
        tokenizer_dir=tokenizer_dir,
        before_rename=lambda: renames.append("now"),
    )

    assert renames == ["now"]
    assert written.prefix.startswith("checkpoints/job_1/v000003-")
    folder = tmp_path / "blobs" / written.prefix
    names = {f["name"] for f in written.files}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "selfsup.json"} <= names
    assert [f["name"] for f in written.resume_files] == [f"{RESUME_DIR}/{RESUME_STATE_FILE}"]
    assert verify_files(folder, written.files + written.resume_files) is None
    lineage = json.loads((folder / "selfsup.json").read_text())
    assert lineage["checkpoint"]["step"] == 1 and lineage["parameters"] == count_parameters(trainer.model)
    assert load_resume_state(folder)["step"] == 1
    context = SPEC.model.context_length
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config == {"model_max_length": context, "eos_token": "x"}
    assert json.loads((folder / "generation_config.json").read_text())["max_length"] == context
