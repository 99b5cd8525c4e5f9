"""Run one training job under a database lease: the bridge between `Trainer` and the database.

The trainer steps; this module claims the job, resumes from the newest good checkpoint, records
metrics in batches, renews the lease and reads cancellation at most every `control_interval_seconds`,
evaluates, checkpoints, and finishes the job.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import torch
import transformers
from safetensors.torch import load_model

from models.build import count_parameters
from selfsup.settings import Settings
from selfsup.spec import JobSpec
from storage import crud
from storage.blobs import LocalBlobStore
from storage.checkpoints import lineage_json, load_resume_state, verify_files, write_checkpoint
from storage.db import session_scope
from storage.tables import Checkpoint, Corpus, Job, TokenizedDataset, utcnow
from workers.datasets import TOKENIZER_DIR, dataset_meta, special_token_ids
from workers.model_card import render_model_card
from workers.trainer import TokenArrays, Trainer, TrainingDiverged, pick_device

log = logging.getLogger(__name__)

LOG_EVERY_STEPS = 10


class LeaseLost(RuntimeError):
    """Another worker took the job over; this one must stop without touching it."""


class StopRequested(RuntimeError):
    """The job was cancelled between steps."""


@dataclass
class JobControl:
    """Buffers metrics and talks to the database at most every `interval` seconds."""

    job_id: str
    owner: str
    settings: Settings
    tokens_per_step: int
    max_steps: int
    pending: list[tuple[int, str, float, datetime]] = field(default_factory=list)
    latest: dict[str, float] = field(default_factory=dict)
    last_flush: float = field(default_factory=time.monotonic)

    def record(self, step: int, values: dict[str, float]) -> None:
        """Buffer metric values for `step`."""
        now = utcnow()
        for name, value in values.items():
            self.pending.append((step, name, value, now))
            self.latest[name] = value

    def due(self) -> bool:
        """Whether it is time to talk to the database."""
        return time.monotonic() - self.last_flush >= self.settings.control_interval_seconds

    def flush(self, *, step: int, tokens_seen: int) -> None:
        """Write buffered metrics, publish progress, renew the lease, and read cancellation."""
        with session_scope() as session:
            crud.write_metrics(session=session, job_id=self.job_id, rows=self.pending)
            job = crud.renew_lease(
                session=session,
                job_id=self.job_id,
                owner=self.owner,
                lease_seconds=self.settings.lease_seconds,
                step=step,
                tokens_seen=tokens_seen,
                latest_metrics=dict(self.latest),
            )
            if job is None:
                session.rollback()
                raise LeaseLost(f"lease on {self.job_id} lost")
        self.pending.clear()
        self.last_flush = time.monotonic()
        if job.cancel_requested:
            raise StopRequested("cancelled")


def _resume_from_checkpoint(trainer: Trainer, store: LocalBlobStore, job: Job) -> Checkpoint | None:
    """Load the newest checkpoint whose files all match their sha256; skip corrupt ones with an event."""
    with session_scope() as session:
        checkpoints = crud.list_checkpoints(session=session, job_id=job.id)
    for checkpoint in reversed(checkpoints):
        folder = store.local_path(checkpoint.blob_prefix)
        problem = verify_files(folder, checkpoint.files + checkpoint.resume_files)
        if problem:
            with session_scope() as session:
                crud.add_event(
                    session=session,
                    job_id=job.id,
                    type="checkpoint_skipped",
                    message=f"checkpoint v{checkpoint.version} (step {checkpoint.step}) is unusable: {problem}",
                )
            continue
        load_model(trainer.model, str(folder / "model.safetensors"), strict=False, device=str(trainer.device))
        trainer.load_state_dict(load_resume_state(folder))
        return checkpoint
    return None


def _save_checkpoint(
    *,
    trainer: Trainer,
    store: LocalBlobStore,
    job: Job,
    spec: JobSpec,
    corpora: list[Corpus],
    dataset: TokenizedDataset,
    metrics: dict[str, float],
    val_loss: float | None,
    final: bool,
) -> Checkpoint:
    with session_scope() as session:
        version = crud.next_checkpoint_version(session=session, job_id=job.id)
    lineage: dict[str, Any] = {
        "job": {"id": job.id, "name": job.name, "spec": spec.model_dump(mode="json")},
        "corpora": [
            {
                "id": c.id,
                "name": c.name,
                "sha256": c.sha256,
                "documents": c.documents,
                "characters": c.characters,
            }
            for c in corpora
        ],
        "dataset": {
            "key": dataset.key,
            "train_tokens": dataset.train_tokens,
            "validation_tokens": dataset.validation_tokens,
        },
        "checkpoint": {
            "version": version,
            "step": trainer.step,
            "tokens_seen": trainer.tokens_seen,
            "final": final,
            "metrics": metrics,
        },
        "parameters": count_parameters(trainer.model),
        "software": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }
    written = write_checkpoint(
        store=store,
        job_id=job.id,
        version=version,
        save_model=lambda folder: trainer.model.save_pretrained(folder),
        tokenizer_dir=store.local_path(f"{dataset.blob_prefix}/{TOKENIZER_DIR}"),
        text_files={"README.md": render_model_card(lineage), "selfsup.json": lineage_json(lineage)},
        resume_state=trainer.state_dict(),
    )
    with session_scope() as session:
        checkpoint = crud.add_checkpoint(
            session=session,
            checkpoint=Checkpoint(
                job_id=job.id,
                step=trainer.step,
                version=version,
                is_final=final,
                val_loss=val_loss,
                metrics=metrics,
                files=written.files,
                resume_files=written.resume_files,
                blob_prefix=written.prefix,
            ),
        )
        crud.add_event(
            session=session,
            job_id=job.id,
            type="checkpoint_saved",
            message=f"checkpoint v{version} saved at step {trainer.step}" + (" (final)" if final else ""),
        )
        stale = crud.prunable_checkpoints(
            checkpoints=crud.list_checkpoints(session=session, job_id=job.id),
            keep_last=spec.checkpointing.keep_last,
        )
        for old in stale:
            session.delete(old)
    for old in stale:
        store.delete_prefix(old.blob_prefix)
    return checkpoint


def train_job(job_id: str, *, owner: str, settings: Settings, store: LocalBlobStore) -> str:
    """Claim and train a job to its end; returns what happened (for the log)."""
    with session_scope() as session:
        if not crud.claim_job(session=session, job_id=job_id, owner=owner, lease_seconds=settings.lease_seconds):
            return "not claimed: finished, cancelled, or held by a live lease elsewhere"
        job = session.get(Job, job_id)
        assert job is not None
        corpora = crud.job_corpora(session=session, job_id=job_id)
        dataset = crud.get_dataset(session=session, key=job.dataset_key or "")
    if dataset is None:
        _fail(job, owner, "internal error: the job was started before its tokenized data existed")
        return "failed: no dataset"
    spec = JobSpec.model_validate(job.spec)
    try:
        return _train(job, spec, corpora, dataset, owner=owner, settings=settings, store=store)
    except LeaseLost:
        log.warning("job %s: lease lost to another worker; stopping without writing", job_id)
        return "lease lost"
    except TrainingDiverged as exc:
        _fail(job, owner, str(exc))
        return "diverged"
    except Exception as exc:
        log.exception("job %s failed", job_id)
        _fail(job, owner, f"{type(exc).__name__}: {exc}")
        return "failed"


def _fail(job: Job, owner: str, reason: str) -> None:
    with session_scope() as session:
        crud.finish_job(session=session, job_id=job.id, status="failed", message=f"failed: {reason}", error=reason)


def _train(
    job: Job,
    spec: JobSpec,
    corpora: list[Corpus],
    dataset: TokenizedDataset,
    *,
    owner: str,
    settings: Settings,
    store: LocalBlobStore,
) -> str:
    meta = dataset_meta(store, dataset)
    data = TokenArrays.open(
        store.local_path(dataset.blob_prefix),
        dtype=meta["dtype"],
        vocab_size=meta["vocab_size"],
        special=special_token_ids(meta),
    )
    device = pick_device()
    trainer = Trainer(spec, data, device=device)
    resumed = _resume_from_checkpoint(trainer, store, job)
    with session_scope() as session:
        if resumed is not None:
            crud.delete_metrics_after(session=session, job_id=job.id, step=trainer.step)
            crud.add_event(
                session=session,
                job_id=job.id,
                type="resumed",
                message=f"resumed from checkpoint v{resumed.version} at step {trainer.step} on {owner}",
            )
        else:
            crud.add_event(
                session=session,
                job_id=job.id,
                type="started",
                message=f"training started on {owner} ({device.type}, "
                f"{'bf16' if trainer.bf16 else 'fp32'}, {count_parameters(trainer.model):,} parameters)",
            )

    training, max_steps = spec.training, spec.training.max_steps
    control = JobControl(
        job_id=job.id,
        owner=owner,
        settings=settings,
        tokens_per_step=spec.tokens_per_step,
        max_steps=max_steps,
        latest=dict(job.latest_metrics or {}) if resumed is not None else {},
    )
    started = time.monotonic()
    window_start, window_tokens, excluded = time.perf_counter(), 0, 0.0
    try:
        while trainer.step < max_steps:
            result = trainer.train_step()
            step = trainer.step
            window_tokens += spec.tokens_per_step
            if step % LOG_EVERY_STEPS == 0 or step == 1 or step == max_steps:
                # Throughput over the window, leaving out evaluation and checkpoint time.
                elapsed = time.perf_counter() - window_start - excluded
                control.record(
                    step,
                    {
                        "train_loss": result.loss,
                        "learning_rate": result.learning_rate,
                        "grad_norm": result.grad_norm,
                        "tokens_per_second": window_tokens / elapsed if elapsed > 0 else 0.0,
                    },
                )
                window_start, window_tokens, excluded = time.perf_counter(), 0, 0.0
                if control.due():
                    control.flush(step=step, tokens_seen=trainer.tokens_seen)
            checkpoint_now = step % spec.checkpointing.every_steps == 0 or step == max_steps
            val_loss = None
            if step % spec.evaluation.every_steps == 0 or checkpoint_now:
                paused = time.perf_counter()
                val_loss = trainer.evaluate()
                control.record(step, {"val_loss": val_loss})
                control.flush(step=step, tokens_seen=trainer.tokens_seen)
                with session_scope() as session:
                    crud.add_event(
                        session=session,
                        job_id=job.id,
                        type="evaluation",
                        message=f"step {step}: val_loss {val_loss:.4f}",
                    )
                excluded += time.perf_counter() - paused
            if checkpoint_now:
                paused = time.perf_counter()
                _save_checkpoint(
                    trainer=trainer,
                    store=store,
                    job=job,
                    spec=spec,
                    corpora=corpora,
                    dataset=dataset,
                    metrics=dict(control.latest),
                    val_loss=val_loss,
                    final=step == max_steps,
                )
                excluded += time.perf_counter() - paused
            if training.max_runtime_seconds and time.monotonic() - started > training.max_runtime_seconds:
                control.flush(step=step, tokens_seen=trainer.tokens_seen)
                _fail(
                    job,
                    owner,
                    f"exceeded training.max_runtime_seconds ({training.max_runtime_seconds:g}s) at step {step}",
                )
                return "timed out"
        control.flush(step=trainer.step, tokens_seen=trainer.tokens_seen)
    except StopRequested:
        with session_scope() as session:
            crud.finish_job(
                session=session,
                job_id=job.id,
                status="cancelled",
                message=f"cancelled at step {trainer.step}",
            )
        return "cancelled"
    with session_scope() as session:
        crud.finish_job(
            session=session,
            job_id=job.id,
            status="succeeded",
            message=f"finished {max_steps} steps, {trainer.tokens_seen:,} tokens",
        )
    return "succeeded"
