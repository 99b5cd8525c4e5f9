"""Run one training job under a database lease: the bridge between `Trainer` and the database.

The trainer steps; this module claims the job, resumes from the newest good checkpoint, records
metrics in batches, renews the lease and reads cancellation at most every `control_interval_seconds`,
evaluates, checkpoints, and finishes the job.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable
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
from storage.blobs import BlobStore
from storage.checkpoints import (
    lineage_json,
    load_resume_state,
    verify_files,
    write_checkpoint,
)
from storage.db import session_scope
from storage.keys import job_checkpoints_prefix, join_key
from storage.status import JobStatus
from storage.tables import Checkpoint, Corpus, Job, TokenizedDataset, utcnow
from workers.celery_app import TRAIN_JOB, enqueue
from workers.data.datasets import TOKENIZER_DIR, dataset_meta, special_token_ids
from workers.data.token_arrays import TokenArrays
from workers.faults import Faults
from workers.training.model_card import render_model_card
from workers.training.trainer import StepResult, Trainer, TrainingDiverged, pick_device

log = logging.getLogger(__name__)

LOG_EVERY_STEPS = 10


class LeaseLost(RuntimeError):
    """Another worker took the job over; this one must stop without touching it."""


class StopRequested(RuntimeError):
    """The job was cancelled between steps."""


class CannotTrain(RuntimeError):
    """The job's data or spec cannot be trained (found when the trainer is built); retrying would not help."""


class PauseRequested(RuntimeError):
    """The job was asked to pause: checkpoint, then let go of it."""


@dataclass
class JobControl:
    """Buffers metrics and talks to the database at most every `interval` seconds."""

    job_id: str
    owner: str
    settings: Settings
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
        if job.pause_requested:
            raise PauseRequested("paused")


def _resume_from_checkpoint(trainer: Trainer, store: BlobStore, job: Job) -> Checkpoint | None:
    """Load the newest checkpoint whose files all match their sha256.

    A corrupt or incomplete one is removed (so it is never downloaded either) with an event saying why,
    and the one before it is tried. Folders that no row names (a write killed before it was recorded)
    are removed too.
    """
    with session_scope() as session:
        checkpoints = crud.list_checkpoints(session=session, job_id=job.id)
    _remove_unrecorded_checkpoints(store, job.id, {c.blob_prefix for c in checkpoints})
    for checkpoint in reversed(checkpoints):
        folder = store.local_copy(checkpoint.blob_prefix)
        problem = verify_files(folder, checkpoint.files + checkpoint.resume_files)
        if problem:
            with session_scope() as session:
                crud.delete_checkpoint(session=session, checkpoint_id=checkpoint.id)
                crud.add_event(
                    session=session,
                    job_id=job.id,
                    type="checkpoint_skipped",
                    message=f"checkpoint v{checkpoint.version} (step {checkpoint.step}) is unusable and was "
                    f"removed: {problem}",
                )
            store.delete_prefix(checkpoint.blob_prefix)
            continue
        load_model(trainer.model, str(folder / "model.safetensors"), strict=False, device=str(trainer.device))
        trainer.load_state_dict(load_resume_state(folder))
        return checkpoint
    return None


def _remove_unrecorded_checkpoints(store: BlobStore, job_id: str, recorded: set[str]) -> None:
    for prefix in store.list_children(job_checkpoints_prefix(job_id)):
        if prefix not in recorded:
            store.delete_prefix(prefix)


def _save_checkpoint(
    *,
    trainer: Trainer,
    store: BlobStore,
    job: Job,
    spec: JobSpec,
    corpora: list[Corpus],
    dataset: TokenizedDataset,
    metrics: dict[str, float],
    val_loss: float | None,
    final: bool,
    owner: str,
    faults: Faults,
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
            "corpus_tokens": dataset_meta(store, dataset).get("corpus_tokens", {}),
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
        save_model=trainer.save_pretrained,
        tokenizer_dir=store.local_copy(join_key(dataset.blob_prefix, TOKENIZER_DIR)),
        text_files={"README.md": render_model_card(lineage), "selfsup.json": lineage_json(lineage)},
        resume_state=trainer.state_dict(),
        before_rename=lambda: faults.before_checkpoint_rename(version),
    )
    with session_scope() as session:
        if not crud.lock_job_lease(session=session, job_id=job.id, owner=owner):
            session.rollback()
            store.delete_prefix(written.prefix)
            raise LeaseLost(f"lease on {job.id} lost while saving checkpoint v{version}")
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
            crud.delete_checkpoint(session=session, checkpoint_id=old.id)
    for old in stale:
        store.delete_prefix(old.blob_prefix)
    return checkpoint


def train(job_id: str, *, owner: str, settings: Settings, store: BlobStore, should_stop: Callable[[], bool]) -> str:
    """Claim and train a job to its end (or until `should_stop()`); returns what happened, for the log."""
    with session_scope() as session:
        if not crud.claim_job(session=session, job_id=job_id, owner=owner, lease_seconds=settings.lease_seconds):
            return "not claimed: finished, cancelled, or held by a live lease elsewhere"
        job = crud.get_job_by_id(session=session, job_id=job_id)
        assert job is not None
        corpora = crud.job_corpora(session=session, job_id=job_id)
        dataset = crud.get_dataset(session=session, key=job.dataset_key or "")
    run = JobRun(job, corpora, dataset, owner=owner, settings=settings, store=store, should_stop=should_stop)
    try:
        return run.run()
    except LeaseLost:
        log.warning("job %s: lease lost to another worker; stopping without writing", job_id)
        return "lease lost"
    except (TrainingDiverged, CannotTrain) as exc:  # deterministic: running it again would fail again
        run.fail(str(exc))
        return "diverged"
    except Exception as exc:  # possibly transient (disk, database, device): resume, up to max_restarts
        log.exception("job %s crashed", job_id)
        error = f"{type(exc).__name__}: {exc}"
        with session_scope() as session:
            job_row = crud.get_job_by_id(session=session, job_id=job_id)
            outcome = (
                crud.requeue_after_crash(session=session, job=job_row, owner=owner, error=error)
                if job_row
                else crud.RequeueOutcome.SKIPPED
            )
        if outcome == crud.RequeueOutcome.REQUEUED:
            enqueue(TRAIN_JOB, job_id)
        return f"crashed ({error}): {outcome}"


class JobRun:
    """One claimed job being trained: the loop, with logging, evaluation, checkpoints and interruptions."""

    def __init__(
        self,
        job: Job,
        corpora: list[Corpus],
        dataset: TokenizedDataset | None,
        *,
        owner: str,
        settings: Settings,
        store: BlobStore,
        should_stop: Callable[[], bool],
    ) -> None:
        self.job = job
        self.spec = JobSpec.model_validate(job.spec)
        self.corpora = corpora
        self.dataset = dataset
        self.owner = owner
        self.store = store
        self.should_stop = should_stop
        self.control = JobControl(job_id=job.id, owner=owner, settings=settings)
        self.faults = Faults.parse(
            settings.fault_injection, job_id=job.id, job_name=job.name, marker_dir=settings.resolved_home / "faults"
        )
        self.started = time.monotonic()
        self.last_checkpoint_step: int | None = None
        # Throughput is measured over each logging window, leaving out evaluation and checkpoint time.
        self.window_start, self.window_tokens, self.excluded = time.perf_counter(), 0, 0.0

    def run(self) -> str:
        """Train from the newest good checkpoint (or from scratch) to `max_steps`."""
        if self.dataset is None:
            raise RuntimeError("the job was started before its tokenized data existed")
        try:
            self.trainer = self._build_trainer(self.dataset)
        except ValueError as exc:
            raise CannotTrain(f"cannot start training: {exc}") from exc
        self._resume_or_start()
        max_steps = self.spec.training.max_steps
        try:
            while self.trainer.step < max_steps:
                result = self.trainer.train_step()
                self.faults.after_step(self.trainer.step)
                self._after_step(result)
                interrupted = self._interruption()
                if interrupted:
                    return interrupted
            self.control.flush(step=self.trainer.step, tokens_seen=self.trainer.tokens_seen)
        except StopRequested:
            self.finish(JobStatus.CANCELLED, f"cancelled at step {self.trainer.step}")
            return "cancelled"
        except PauseRequested:
            return self._pause()
        if not self.finish(JobStatus.SUCCEEDED, f"finished {max_steps} steps, {self.trainer.tokens_seen:,} tokens"):
            # A cancel arrived after the last step: honour it rather than report success.
            self.finish(JobStatus.CANCELLED, f"cancelled at step {self.trainer.step}, after the last step")
            return "cancelled"
        return "succeeded"

    def finish(self, status: JobStatus, message: str) -> bool:
        """End the job (only while this worker still holds it); False if that did not happen."""
        with session_scope() as session:
            return crud.finish_job(
                session=session, job_id=self.job.id, status=status, message=message, owner=self.owner
            )

    def fail(self, reason: str) -> bool:
        """Fail the job with `reason` (only while this worker still holds it); False if that did not happen."""
        with session_scope() as session:
            return crud.fail_job(session=session, job_id=self.job.id, reason=reason, owner=self.owner)

    def _build_trainer(self, dataset: TokenizedDataset) -> Trainer:
        meta = dataset_meta(self.store, dataset)
        data = TokenArrays.open(
            self.store.local_copy(dataset.blob_prefix),
            dtype=meta["dtype"],
            vocab_size=meta["vocab_size"],
            special=special_token_ids(meta),
        )
        return Trainer(self.spec, data, device=pick_device())

    def _resume_or_start(self) -> None:
        resumed = _resume_from_checkpoint(self.trainer, self.store, self.job)
        with session_scope() as session:
            if resumed is None:
                trainer = self.trainer
                crud.add_event(
                    session=session,
                    job_id=self.job.id,
                    type="started",
                    message=f"training started on {self.owner} ({trainer.device.type}, "
                    f"{'bf16' if trainer.bf16 else 'fp32'}, {count_parameters(trainer.model):,} parameters)",
                )
                return
            # Steps after the checkpoint will be replayed: their metrics are replaced, never duplicated.
            crud.delete_metrics_after(session=session, job_id=self.job.id, step=self.trainer.step)
            self.control.latest = dict(resumed.metrics)
            crud.add_event(
                session=session,
                job_id=self.job.id,
                type="resumed",
                message=f"resumed from checkpoint v{resumed.version} at step {self.trainer.step} on {self.owner}",
            )

    def _after_step(self, result: StepResult) -> None:
        step, max_steps = self.trainer.step, self.spec.training.max_steps
        self.window_tokens += self.spec.tokens_per_step
        if step % LOG_EVERY_STEPS == 0 or step == 1 or step == max_steps:
            elapsed = time.perf_counter() - self.window_start - self.excluded
            self.control.record(
                step,
                {
                    "train_loss": result.loss,
                    "learning_rate": result.learning_rate,
                    "grad_norm": result.grad_norm,
                    "tokens_per_second": self.window_tokens / elapsed if elapsed > 0 else 0.0,
                    **result.extra,
                },
            )
            self.window_start, self.window_tokens, self.excluded = time.perf_counter(), 0, 0.0
            if self.control.due():
                self.control.flush(step=step, tokens_seen=self.trainer.tokens_seen)
        checkpoint_due = step % self.spec.checkpointing.every_steps == 0 or step == max_steps
        val_loss = None
        if step % self.spec.evaluation.every_steps == 0 or checkpoint_due:
            val_loss = self._evaluate()
        if checkpoint_due:
            self._checkpoint(val_loss=val_loss, final=step == max_steps)

    def _evaluate(self) -> float:
        paused = time.perf_counter()
        step = self.trainer.step
        val_loss = self.trainer.evaluate()
        self.control.record(step, {"val_loss": val_loss, **self.trainer.last_eval_metrics})
        self.control.flush(step=step, tokens_seen=self.trainer.tokens_seen)
        with session_scope() as session:
            crud.add_event(
                session=session, job_id=self.job.id, type="evaluation", message=f"step {step}: val_loss {val_loss:.4f}"
            )
        self.excluded += time.perf_counter() - paused
        return val_loss

    def _checkpoint(self, *, val_loss: float | None, final: bool) -> None:
        paused = time.perf_counter()
        assert self.dataset is not None
        _save_checkpoint(
            trainer=self.trainer,
            store=self.store,
            job=self.job,
            spec=self.spec,
            corpora=self.corpora,
            dataset=self.dataset,
            metrics=dict(self.control.latest),
            val_loss=val_loss,
            final=final,
            owner=self.owner,
            faults=self.faults,
        )
        self.last_checkpoint_step = self.trainer.step
        self.excluded += time.perf_counter() - paused

    def _pause(self) -> str:
        step = self.trainer.step
        if self.last_checkpoint_step != step:
            self._checkpoint(val_loss=None, final=False)
        with session_scope() as session:
            crud.mark_paused(session=session, job_id=self.job.id, owner=self.owner, step=step)
        return f"paused at step {step}"

    def _interruption(self) -> str | None:
        """Stop between steps when the worker shuts down or the time budget is spent."""
        step = self.trainer.step
        if step >= self.spec.training.max_steps:
            return None
        limit = self.spec.training.max_runtime_seconds
        over_time = limit is not None and time.monotonic() - self.started > limit
        if not (over_time or self.should_stop()):
            return None
        if self.last_checkpoint_step != step:
            self._checkpoint(val_loss=None, final=False)
        self.control.flush(step=step, tokens_seen=self.trainer.tokens_seen)
        if over_time:
            reason = f"exceeded training.max_runtime_seconds ({limit:g}s) at step {step}; checkpoint saved"
            self.fail(reason)
            return "timed out"
        # The worker is shutting down (a deploy, a preemption): hand the job to another worker.
        with session_scope() as session:
            crud.requeue_job(
                session=session,
                job_id=self.job.id,
                owner=self.owner,
                message=f"released at step {step}: worker {self.owner} is shutting down",
            )
        enqueue(TRAIN_JOB, self.job.id)
        return "released for worker shutdown"
