"""Run one training job under a database lease: the loop that binds `Trainer` to the database.

The trainer steps; this module claims the job, resumes from the newest good checkpoint, records
metrics in batches, renews the lease and reads cancellation at most every `control_interval_seconds`,
evaluates, checkpoints, and ends the job: succeeded, cancelled, paused, handed back, or failed.
What goes into a checkpoint's folder is `workers/training/checkpointing.py`'s business; recording it
under the lease is this module's.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, assert_never

import torch
from safetensors.torch import load_model
from sqlalchemy.exc import SQLAlchemyError

from models.build import count_parameters
from selfsup.estimate import job_flops_per_token
from selfsup.hardware import model_flops_utilisation, peak_flops
from selfsup.settings import Settings
from selfsup.spec import JobSpec, heldout_metric_names
from storage import crud
from storage.blobs import BlobStore
from storage.cache import CacheError, CorruptBlobError
from storage.checkpoints import WrittenCheckpoint, load_resume_state, verify_files
from storage.db import session_scope
from storage.keys import job_checkpoints_prefix
from storage.status import JobStatus
from storage.tables import Checkpoint, Corpus, Dataset, Job, TokenizedDataset, utcnow
from workers.celery_app import PROBE_CHECKPOINT, enqueue, training_queue, waiting_in, wake_trainer
from workers.data.datasets import TOKENIZER_DIR, dataset_meta, open_token_arrays
from workers.data.heldout import heldout_key, open_heldout, tokenizer_sha256
from workers.data.token_arrays import verify_token_folder
from workers.faults import Faults
from workers.training import compiling
from workers.training.checkpointing import (
    LINEAGE_FILE,
    CheckpointRecord,
    RunLineage,
    base_lineage,
    write_checkpoint_folder,
)
from workers.training.early_stopping import EarlyStopping
from workers.training.precision import CpuBf16Matmuls
from workers.training.ranks import ONE_PROCESS, Order, Ranks
from workers.training.trainer import StepResult, Trainer, TrainingDiverged, pick_device

log = logging.getLogger(__name__)

LOG_EVERY_STEPS = 10


class LeaseLost(RuntimeError):
    """Another worker took the job over; this one must stop without touching it.

    An exception, not a `Directive`: it is found wherever this worker writes (a flush, a checkpoint's
    row), and the only answer is to drop everything at once and write nothing more.
    """


class CannotTrain(RuntimeError):
    """The job's data or spec cannot be trained (found when the trainer is built); retrying would not help."""


class Directive(enum.Enum):
    """What the job's row asks of the loop, read at each flush."""

    CONTINUE = "continue"
    CANCEL = "cancel"
    PAUSE = "pause"


class Ending(enum.Enum):
    """How the step loop ended; each has its own way of ending the job."""

    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"
    PAUSED = "paused"
    STOPPED_EARLY = "stopped early"  # evaluation.early_stopping: the metric stopped improving; the job succeeds
    TIMED_OUT = "timed out"  # training.max_runtime_seconds spent: the job fails, its checkpoint kept
    HANDED_BACK = "handed back"  # the worker is shutting down: another worker takes the job over


# What a flush that does not say CONTINUE ends the loop with.
_ENDING_FOR = {Directive.CANCEL: Ending.CANCELLED, Directive.PAUSE: Ending.PAUSED}


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

    def flush(self, *, step: int, tokens_seen: int) -> Directive:
        """Write buffered metrics, publish progress, renew the lease, and read what the job's row asks."""
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
            return Directive.CANCEL
        if job.pause_requested:
            return Directive.PAUSE
        return Directive.CONTINUE


@dataclass
class ThroughputWindow:
    """Tokens per second and seconds per step over one logging window, leaving out evaluation and checkpoint
    time."""

    start: float = field(default_factory=time.perf_counter)
    tokens: int = 0
    steps: int = 0
    excluded: float = 0.0

    @contextmanager
    def off_the_clock(self) -> Iterator[None]:
        """Leave the time spent inside out of the window."""
        paused = time.perf_counter()
        yield
        self.excluded += time.perf_counter() - paused

    def close(self) -> tuple[float, float]:
        """The window's tokens per second and seconds per step; a new window starts."""
        elapsed = time.perf_counter() - self.start - self.excluded
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        step_seconds = elapsed / self.steps if self.steps else 0.0
        self.start, self.tokens, self.steps, self.excluded = time.perf_counter(), 0, 0, 0.0
        return rate, step_seconds


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
        manifest = checkpoint.files + checkpoint.resume_files
        try:
            # From an object store: downloaded into this machine's cache (again, if the cached copy is bad).
            folder = store.local_copy(checkpoint.blob_prefix, verify=functools.partial(verify_files, manifest=manifest))
            problem = None
        except CorruptBlobError as exc:
            problem = exc.problem
        except FileNotFoundError:
            problem = "its files are missing from the blob store"
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


def open_trainer(
    spec: JobSpec,
    store: BlobStore,
    dataset: TokenizedDataset,
    heldout: list[Corpus],
    ranks: Ranks = ONE_PROCESS,
    base_config: dict[str, Any] | None = None,
    *,
    cpu_bf16_matmuls: CpuBf16Matmuls = "auto",
) -> tuple[Trainer, dict[str, Any]]:
    """A trainer on the dataset's token arrays (and its held-out corpora's, prepared with its tokenizer), its
    model built from `base_config` when the job starts from an uploaded model, and the dataset's meta;
    `CannotTrain` if they do not fit the spec."""
    try:
        meta = dataset_meta(store, dataset)
        # Verified against the sha256s recorded when it was tokenized (an object store's copy is downloaded).
        folder = store.local_copy(dataset.blob_prefix, verify=verify_token_folder)
        data = open_token_arrays(folder, meta)
        heldout_data = {}
        if heldout:
            digest = tokenizer_sha256(folder / TOKENIZER_DIR)
            names = heldout_metric_names([(c.id, c.name) for c in heldout])
            heldout_data = {names[c.id]: open_heldout(store, heldout_key(c.sha256, digest), like=data) for c in heldout}
        device = ranks.device if ranks.world > 1 else pick_device()
        trainer = Trainer(
            spec,
            data,
            device=device,
            heldout=heldout_data,
            ranks=ranks,
            base_config=base_config,
            cpu_bf16_matmuls=cpu_bf16_matmuls,
        )
        return trainer, meta
    except (ValueError, FileNotFoundError, CacheError) as exc:
        raise CannotTrain(f"cannot start training: {exc}") from exc


def _device_peak_flops(trainer: Trainer, settings: Settings) -> float | None:
    """The peak FLOP/s `mfu` is measured against (selfsup/hardware.py), None where none is known."""
    device = trainer.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return peak_flops(name, "bf16" if trainer.bf16 else "tf32", override=settings.device_peak_flops)


def _early_stopping(spec: JobSpec, trainer: Trainer, job_id: str) -> EarlyStopping | None:
    """The job's early-stopping tracker, its state rebuilt from the metric's recorded values on a resume;
    `CannotTrain` if the job records no such metric (a held-out name the API could not check)."""
    stopping = spec.evaluation.early_stopping
    if stopping is None:
        return None
    recorded = spec.validation_metrics()
    recorded += [f"{base}/{name}" for name in trainer.heldout for base in recorded if "/" not in base]
    if stopping.metric not in recorded:
        raise CannotTrain(
            f"evaluation.early_stopping.metric {stopping.metric!r} is not recorded by this job; "
            f"it records {', '.join(recorded)}"
        )
    tracker = EarlyStopping.of(stopping)
    if trainer.step:
        with session_scope() as session:
            history = crud.metric_history(session=session, job_id=job_id, name=stopping.metric, up_to_step=trainer.step)
        tracker.replay(history)
    return tracker


def _resume_or_start(
    trainer: Trainer, store: BlobStore, job: Job, *, owner: str, start: Callable[[], str] | None = None
) -> Checkpoint | None:
    """Resume from the newest good checkpoint, if any, and say so in an event; returns that checkpoint.

    Without one, `start` (if given) loads the weights the job starts from and says from what."""
    resumed = _resume_from_checkpoint(trainer, store, job)
    world = trainer.ranks.world
    devices = f"{world} × {trainer.device.type}" if world > 1 else trainer.device.type
    origin = start() if resumed is None and start is not None else ""
    with session_scope() as session:
        if resumed is None:
            crud.add_event(
                session=session,
                job_id=job.id,
                type="started",
                message=f"training started on {owner} ({devices}, "
                f"{trainer.numerics}, {count_parameters(trainer.model):,} parameters){origin}",
            )
            return None
        # Steps after the checkpoint will be replayed: their metrics are replaced, never duplicated.
        crud.delete_metrics_after(session=session, job_id=job.id, step=trainer.step)
        crud.add_event(
            session=session,
            job_id=job.id,
            type="resumed",
            message=f"resumed from checkpoint v{resumed.version} at step {trainer.step} on {owner} ({devices})",
        )
    return resumed


def _remove_unrecorded_checkpoints(store: BlobStore, job_id: str, recorded: set[str]) -> None:
    for prefix in store.list_children(job_checkpoints_prefix(job_id)):
        if prefix not in recorded:
            store.delete_prefix(prefix)


@dataclass(frozen=True)
class Lease:
    """This worker's hold on a job, and what it writes about the job.

    Ending, pausing or handing back the job and recording a checkpoint happen only while `owner` still
    holds the lease, so a worker that lost it never overwrites the one that took over.
    """

    job_id: str
    owner: str

    def finish(self, status: JobStatus, message: str) -> bool:
        """End the job with `status` and an event saying `message`; False if that did not happen."""
        with session_scope() as session:
            return crud.finish_job(
                session=session, job_id=self.job_id, status=status, message=message, owner=self.owner
            )

    def fail(self, reason: str) -> bool:
        """End the job as failed, saying why; False if that did not happen."""
        with session_scope() as session:
            return crud.fail_job(session=session, job_id=self.job_id, reason=reason, owner=self.owner)

    def pause(self, step: int) -> None:
        """Let go of the job as paused at `step` (it resumes from its newest checkpoint)."""
        with session_scope() as session:
            crud.mark_paused(session=session, job_id=self.job_id, owner=self.owner, step=step)

    def hand_back(self, message: str) -> None:
        """Let go of the job as queued, for another worker to take over."""
        with session_scope() as session:
            crud.requeue_job(session=session, job_id=self.job_id, owner=self.owner, message=message)

    def add_event(self, type: str, message: str) -> None:
        """Tell the job's history something."""
        with session_scope() as session:
            crud.add_event(session=session, job_id=self.job_id, type=type, message=message)

    def next_checkpoint_version(self) -> int:
        """The version the job's next checkpoint gets."""
        with session_scope() as session:
            return crud.next_checkpoint_version(session=session, job_id=self.job_id)

    def record_checkpoint(
        self,
        store: BlobStore,
        written: WrittenCheckpoint,
        record: CheckpointRecord,
        *,
        keep_last: int,
        write_seconds: float,
    ) -> None:
        """Record a written checkpoint and its event, then prune all but the newest `keep_last`.

        How long the write took and how many bytes it wrote become the job's `checkpoint_write_seconds` and
        `checkpoint_bytes` metrics at the checkpoint's step (operators see them on `/metrics`).
        If the lease was lost meanwhile, the files are removed and nothing is recorded.
        """
        with session_scope() as session:
            if not crud.lock_job_lease(session=session, job_id=self.job_id, owner=self.owner):
                session.rollback()
                store.delete_prefix(written.prefix)
                raise LeaseLost(f"lease on {self.job_id} lost while saving checkpoint v{record.version}")
            checkpoint = crud.add_checkpoint(
                session=session,
                checkpoint=Checkpoint(
                    job_id=self.job_id,
                    step=record.step,
                    version=record.version,
                    is_final=record.final,
                    val_loss=record.val_loss,
                    metrics=record.metrics,
                    files=written.files,
                    resume_files=written.resume_files,
                    blob_prefix=written.prefix,
                ),
            )
            size = sum(int(f["size_bytes"]) for f in (*written.files, *written.resume_files))
            now = utcnow()
            crud.write_metrics(
                session=session,
                job_id=self.job_id,
                rows=[
                    (record.step, "checkpoint_write_seconds", write_seconds, now),
                    (record.step, "checkpoint_bytes", float(size), now),
                ],
            )
            final = " (final)" if record.final else ""
            crud.add_event(
                session=session,
                job_id=self.job_id,
                type="checkpoint_saved",
                message=f"checkpoint v{record.version} saved at step {record.step}{final}",
            )
            stale = crud.prunable_checkpoints(session=session, job_id=self.job_id, keep_last=keep_last)
            for old in stale:
                crud.delete_checkpoint(session=session, checkpoint_id=old.id)
            # The spec's probes of this checkpoint (and the random-init baseline, once): queued in this transaction.
            probe_runs = [run.id for run in crud.queue_job_probes(session=session, checkpoint=checkpoint)]
        for old in stale:
            store.delete_prefix(old.blob_prefix)
        for run_id in probe_runs:
            enqueue(PROBE_CHECKPOINT, run_id)


@dataclass(frozen=True)
class ClaimedJob:
    """A claimed job's rows: what training it reads."""

    job: Job
    corpora: list[Corpus]
    dataset: TokenizedDataset | None
    curated: Dataset | None
    heldout: list[Corpus]


def load_claimed(job_id: str) -> ClaimedJob:
    """The rows a claimed job trains from: the job, its corpora (a curated dataset's sources that were not deleted
    since), its tokenized data and held-out corpora."""
    with session_scope() as session:
        job = crud.get_job_by_id(session=session, job_id=job_id)
        assert job is not None
        corpora = crud.job_corpora(session=session, job_id=job_id)
        heldout_ids = (job.spec.get("evaluation") or {}).get("corpus_ids", [])
        heldout_by_id = crud.corpora_by_ids(session=session, corpus_ids=heldout_ids)
        heldout = [heldout_by_id[corpus_id] for corpus_id in heldout_ids if corpus_id in heldout_by_id]
        dataset = crud.get_dataset(session=session, key=job.dataset_key or "")
        curated = crud.get_curated_dataset_by_id(session=session, dataset_id=job.dataset_id) if job.dataset_id else None
        if curated is not None:
            by_id = crud.corpora_by_ids(session=session, corpus_ids=[s["corpus_id"] for s in curated.source_corpora])
            corpora = [by_id[s["corpus_id"]] for s in curated.source_corpora if s["corpus_id"] in by_id]
    return ClaimedJob(job, corpora, dataset, curated, heldout)


@contextmanager
def lease_kept(lease: Lease, settings: Settings) -> Iterator[None]:
    """Keep renewing `lease` from a thread while the block does something long outside the step loop (downloading
    a dataset or checkpoint into the cache, uploading a checkpoint); LeaseLost after it if the lease was lost."""
    done, lost = threading.Event(), threading.Event()

    def renew() -> None:
        while not done.wait(settings.control_interval_seconds):
            with session_scope() as session:
                kept = crud.extend_lease(
                    session=session, job_id=lease.job_id, owner=lease.owner, lease_seconds=settings.lease_seconds
                )
            if not kept:
                lost.set()
                return

    thread = threading.Thread(target=renew, name=f"lease-{lease.job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    if lost.is_set():
        raise LeaseLost(f"lease on {lease.job_id} lost")


def train(job_id: str, *, owner: str, settings: Settings, store: BlobStore, should_stop: Callable[[], bool]) -> str:
    """Claim the best waiting job that fits this worker's devices and train it to its end (or until
    `should_stop()`); returns what happened.

    `job_id` is the job whose wake-up this is; the broker only wakes trainers: the database decides which job
    a free one takes (`crud.claim_next_job`: priority, the tenant's fair share, age). The woken job, if not
    taken now, is still queued and another wake-up (its own, or the one sent when a run ends) takes it.
    A job on one device trains in this process; one on several, in `torchrun` processes (`workers/distributed.py`).
    """
    woken_for = job_id
    with session_scope() as session:
        claimed = crud.claim_next_job(
            session=session,
            owner=owner,
            lease_seconds=settings.lease_seconds,
            fair_share_window_seconds=settings.fair_share_window_seconds,
            default_max_running_jobs=settings.quota_max_running_jobs,
            devices=settings.resolved_worker_devices,
        )
    if claimed is None:
        return (
            "not claimed: finished, cancelled, held by a live lease elsewhere, over its running quota, or needing "
            "more devices than this worker has"
        )
    job_id = claimed
    rows = load_claimed(job_id)
    if job_id != woken_for:
        log.info("woken for job %s; claimed job %s, the first in the claim order", woken_for, job_id)
        # This trainer took another job, so the woken job's wake-up is spent: pass it on to a free trainer it fits.
        _wake_again(woken_for)
    try:
        if rows.job.devices > 1:
            from workers.distributed import train_on_devices

            return train_on_devices(rows.job, owner=owner, settings=settings, should_stop=should_stop)
        return _train_claimed(rows, owner, settings, store, should_stop)
    finally:
        _wake_for_waiting_job()


def _wake_for_waiting_job() -> None:
    """A run ended and this trainer is free: wake one for the jobs still waiting, of each device count they need
    (one whose own wake-up was spent by a trainer that found it over its tenant's running quota would otherwise
    wait for `reconcile`)."""
    try:
        with session_scope() as session:
            waiting = crud.jobs_waiting_to_train_by_devices(session=session)
    except SQLAlchemyError:  # the database is away: `reconcile` re-sends the wake-ups once it is back
        log.warning("could not look for a job waiting to train", exc_info=True)
        return
    for devices, job_id in waiting.items():
        # A wake-up already waiting there makes the next free trainer of that size claim the best of these jobs;
        # another would only pile up behind it while no worker that size is connected.
        if not waiting_in(training_queue(devices)):
            wake_trainer(job_id, devices)


def _wake_again(job_id: str) -> None:
    """Wake a trainer for `job_id` again if it still waits to be claimed."""
    with session_scope() as session:
        devices = crud.devices_if_waiting_to_train(session=session, job_id=job_id)
    if devices is not None:
        wake_trainer(job_id, devices)


def _train_claimed(
    rows: ClaimedJob, owner: str, settings: Settings, store: BlobStore, should_stop: Callable[[], bool]
) -> str:
    """Train a job this worker claimed; a crash requeues it (or fails it past `max_restarts`)."""
    run = JobRun(rows, owner=owner, settings=settings, store=store, should_stop=should_stop)
    try:
        return run_to_its_end(run)
    except Exception as exc:  # possibly transient (disk, database, device): resume, up to max_restarts
        log.exception("job %s crashed", rows.job.id)
        return requeue_crashed(rows.job.id, owner, f"{type(exc).__name__}: {exc}")


def run_to_its_end(run: JobRun) -> str:
    """Run a job to an ending; the endings known to be final (a lost lease, a divergence, data that cannot be
    trained) are handled here, any other exception is a crash for the caller to requeue."""
    try:
        return run.run()
    except LeaseLost:
        log.warning("job %s: lease lost to another worker; stopping without writing", run.job.id)
        return "lease lost"
    except (TrainingDiverged, CannotTrain) as exc:  # deterministic: running it again would fail again
        run.lease.fail(str(exc))
        return "diverged"


def requeue_crashed(job_id: str, owner: str, error: str) -> str:
    """Queue a crashed job to resume (and wake a trainer), or fail it past `max_restarts`; says what happened."""
    with session_scope() as session:
        job_row = crud.get_job_by_id(session=session, job_id=job_id)
        outcome = (
            crud.requeue_after_crash(session=session, job=job_row, owner=owner, error=error)
            if job_row
            else crud.RequeueOutcome.SKIPPED
        )
        devices = job_row.devices if job_row else 1
    if outcome == crud.RequeueOutcome.REQUEUED:
        wake_trainer(job_id, devices)
    return f"crashed ({error}): {outcome}"


class JobRun:
    """One claimed job being trained: set-up, the step loop, and the ending the loop arrives at."""

    def __init__(
        self,
        rows: ClaimedJob,
        *,
        owner: str,
        settings: Settings,
        store: BlobStore,
        should_stop: Callable[[], bool],
        ranks: Ranks = ONE_PROCESS,
    ) -> None:
        job = rows.job
        self.job = job
        self.spec = JobSpec.model_validate(job.spec)
        self.corpora = rows.corpora
        self.dataset = rows.dataset
        self.curated = rows.curated
        self.heldout = rows.heldout
        # Rank 0 of a job on several devices runs this, the other ranks follow it (`workers/distributed.py`).
        self.ranks = ranks
        self.owner = owner
        self.settings = settings
        self.store = store
        self.should_stop = should_stop
        self.lease = Lease(job.id, owner)
        self.control = JobControl(job_id=job.id, owner=owner, settings=settings)
        self.faults = Faults.parse(
            settings.fault_injection,
            job_id=job.id,
            job_name=job.name,
            marker_dir=settings.resolved_home / "faults",
            rank=ranks.rank,
        )
        self.started = time.monotonic()
        self.last_checkpoint_step: int | None = None
        # Why evaluation.early_stopping ended the run (None while it goes on).
        self.stopped_early: str | None = None
        self.window = ThroughputWindow()

    def run(self) -> str:
        """Train from the newest good checkpoint (or from scratch) to `max_steps`, then end the job.

        On several devices the other ranks follow: they start from this rank's state once it is set up, take
        each step this rank orders, and stop when it stops, whatever ended the loop (an ending, a lost lease, a
        crash)."""
        try:
            with lease_kept(self.lease, self.control.settings):  # downloads from an object store may take a while
                self._set_up()
            self.ranks.order(Order.STEP)
            self.trainer.join_ranks()  # on several devices, it lets go of the group as the rank leaves it
            self._compile_at_start()  # after join_ranks: on several devices, what compiles is DDP's wrapper
            self.window = ThroughputWindow()  # set-up and a compile warm-up are not training time
            ending = self._step_loop()
        finally:
            self.ranks.stop()
        return self._end(ending)

    # Set-up

    def _set_up(self) -> None:
        """Build the trainer on the job's tokenized data, then resume it or say that training started."""
        dataset = self.dataset
        if dataset is None:
            raise RuntimeError("the job was started before its tokenized data existed")
        if len(self.heldout) < len(self.spec.evaluation.corpus_ids):
            raise CannotTrain("cannot start training: a corpus of evaluation.corpus_ids was deleted")
        # An uploaded base's config.json (kept on the job at creation); a checkpoint's base is our own build.
        base_config = self.job.base.get("config") if self.job.base is not None else None
        self.trainer, meta = open_trainer(
            self.spec,
            self.store,
            dataset,
            self.heldout,
            self.ranks,
            base_config,
            cpu_bf16_matmuls=self.settings.cpu_bf16_matmuls,
        )
        self.init_from: dict[str, Any] | None = None
        self.tokenizer_dir = self.store.local_copy(dataset.blob_prefix) / TOKENIZER_DIR
        start = self._start_from_base if self.job.base is not None else None
        resumed = _resume_or_start(self.trainer, self.store, self.job, owner=self.owner, start=start)
        if resumed is not None:
            self.control.latest = dict(resumed.metrics)
            if self.job.base is not None:  # resumed from its own checkpoint: the parent is not read again
                folder = self.store.local_copy(resumed.blob_prefix)
                self.init_from = json.loads((folder / LINEAGE_FILE).read_text(encoding="utf-8")).get("init_from")
        self.lineage = RunLineage.of(
            job=self.job,
            spec=self.spec,
            corpora=self.corpora,
            dataset=dataset,
            corpus_tokens=meta.get("corpus_tokens", {}),
            curated=self.curated,
            init_from=self.init_from,
        )
        self.early_stopping = _early_stopping(self.spec, self.trainer, self.job.id)
        model = self.trainer.model
        self.flops_per_token = job_flops_per_token(
            self.spec,
            parameters=count_parameters(model),
            vocab_size=int(model.config.vocab_size),  # the embedding rows: a base's padded vocabulary included
        )
        self.peak_flops = _device_peak_flops(self.trainer, self.settings)

    # torch.compile (training.compile; the rule for `auto` is workers/training/compiling.py's)

    def _compile_at_start(self) -> None:
        """Compile now (`true`), never, or once `auto` has measured the first steps; says which in an event."""
        setting, remaining = self.spec.training.compile, self.spec.training.max_steps - self.trainer.step
        choice = compiling.choose_at_start(
            setting,
            self.trainer.device,
            remaining_steps=remaining,
            shapes_vary=self.trainer.objective.batch_shape_varies,
        )
        self.compile_pending = choice.compile is None
        if choice.compile:
            self._compile(choice.reason)
        elif choice.compile is False and setting is not False:  # `false` asked for exactly this: no event
            self.lease.add_event("compile", f"compile {choice.reason}")

    def _compile_if_it_pays(self, step_seconds: float) -> None:
        """`auto`'s decision, from the eager steps of the window just logged."""
        remaining = self.spec.training.max_steps - self.trainer.step
        choice = compiling.choose_after_measuring(
            step_seconds, remaining_steps=remaining, min_seconds=self.settings.compile_auto_min_seconds
        )
        self.compile_pending = False
        if choice.compile:
            with self.window.off_the_clock():
                self._compile(choice.reason)
        else:
            self.lease.add_event("compile", f"compile {choice.reason}")

    def _compile(self, reason: str) -> None:
        """Compile and warm up the forward (with the other ranks of a job on several devices, which compile
        with it); if that fails on any rank, train on eager and say why (the job goes on)."""
        self.ranks.order(Order.COMPILE)
        try:
            with lease_kept(self.lease, self.settings):  # a warm-up can outlast the lease many times over
                seconds = self.trainer.compile_forward(
                    backend=self.faults.compile_backend(self.settings.compile_backend)
                )
        except LeaseLost:
            raise
        except Exception as exc:  # dynamo and inductor fail in many ways (C++ errors, unsupported ops): eager works
            log.warning("job %s: torch.compile failed; training eager", self.job.id, exc_info=True)
            self.lease.add_event(
                "compile_failed", f"compile {reason} failed, training eager instead: {compiling.root_cause(exc)}"
            )
            return
        self.control.record(self.trainer.step, {"compile_seconds": seconds})
        self.lease.add_event(
            "compiled",
            f"compile {reason}: warm-up {seconds:.1f} s at step {self.trainer.step}, not counted in tokens_per_second",
        )

    def _start_from_base(self) -> str:
        """Load the weights of the job's base (`init_from`), its files checked against their sha256s first."""
        base = self.job.base
        assert base is not None
        folder = self.store.local_copy(base["blob_prefix"])
        problem = verify_files(folder, base["files"])
        if problem:
            raise CannotTrain(f"cannot start from {base['type']} {base['id']} (init_from): {problem}")
        try:
            self.trainer.load_pretrained(folder)
        except ValueError as exc:
            raise CannotTrain(f"cannot start from {base['type']} {base['id']}: {exc}") from exc
        self.init_from = base_lineage(base, folder)
        return f", from {base['type']} {base['id']}"

    # The step loop

    def _step_loop(self) -> Ending:
        """Step to `max_steps`; every way the loop can end is decided here."""
        while self.trainer.step < self.spec.training.max_steps:
            self.ranks.order(Order.STEP)
            # Only a step whose metrics are due (or that evaluates or checkpoints) waits for the device.
            result = self.trainer.train_step(sync=self._synced(self.trainer.step + 1))
            self.faults.after_step(self.trainer.step)
            directive = self._after_step(result)
            if directive is not Directive.CONTINUE:
                return _ENDING_FOR[directive]
            if self.stopped_early is not None:
                return _ENDING_FOR.get(self._flush(), Ending.STOPPED_EARLY)
            letting_go = self._reason_to_let_go()
            if letting_go is not None:
                self._checkpoint_unless_saved()
                return _ENDING_FOR.get(self._flush(), letting_go)
        return _ENDING_FOR.get(self._flush(), Ending.SUCCEEDED)

    def _log_due(self, step: int) -> bool:
        return step % LOG_EVERY_STEPS == 0 or step == 1 or step == self.spec.training.max_steps

    def _checkpoint_due(self, step: int) -> bool:
        return step % self.spec.checkpointing.every_steps == 0 or step == self.spec.training.max_steps

    def _synced(self, step: int) -> bool:
        """Whether `step` reads its loss back from the device: it logs, evaluates or checkpoints."""
        return self._log_due(step) or self._checkpoint_due(step) or step % self.spec.evaluation.every_steps == 0

    def _after_step(self, result: StepResult | None) -> Directive:
        """Log, evaluate and checkpoint as the spec asks; stops early if a flush says anything but CONTINUE."""
        step = self.trainer.step
        self.window.tokens += self.spec.tokens_per_step
        self.window.steps += 1
        checkpoint_due = self._checkpoint_due(step)
        evaluating = step % self.spec.evaluation.every_steps == 0 or checkpoint_due
        if self._log_due(step):
            assert result is not None  # a logging step is a synced one
            steps_measured = self.window.steps
            step_seconds = self._log(step, result)
            if self.compile_pending and steps_measured >= compiling.AUTO_PROBE_STEPS:
                self._compile_if_it_pays(step_seconds)
            # A step that evaluates flushes after its evaluation: a pause or a cancel read here would end the run
            # with this step checkpointed but never evaluated, and the resumed run starts after it (a gap in val_loss).
            if not evaluating and self.control.due() and (directive := self._flush()) is not Directive.CONTINUE:
                return directive
        val_loss = None
        if evaluating:
            with self.window.off_the_clock():
                val_loss = self._evaluate()
                if (directive := self._flush()) is not Directive.CONTINUE:
                    return directive
                self.lease.add_event("evaluation", f"step {step}: val_loss {val_loss:.4f}")
            stopping = self.early_stopping
            value = self.control.latest.get(stopping.metric) if stopping is not None else None
            if stopping is not None and value is not None and stopping.update(step, value):
                self.stopped_early = stopping.reason(step)
        if checkpoint_due or self.stopped_early is not None:
            final = step == self.spec.training.max_steps or self.stopped_early is not None
            self._checkpoint(val_loss=val_loss, final=final)
        return Directive.CONTINUE

    def _log(self, step: int, result: StepResult) -> float:
        """Record the step's metrics and the closing window's speed (and `mfu`); returns its seconds per step."""
        tokens_per_second, step_seconds = self.window.close()
        speed = {"tokens_per_second": tokens_per_second, "step_seconds": step_seconds}
        if self.peak_flops is not None:
            speed["mfu"] = model_flops_utilisation(tokens_per_second, self.flops_per_token, self.peak_flops)
        if self.trainer.device.type == "cuda":  # the allocator's own count: no sync
            speed["gpu_memory_peak_bytes"] = float(torch.cuda.max_memory_allocated(self.trainer.device))
        self.control.record(
            step,
            {
                "train_loss": result.loss,
                "learning_rate": result.learning_rate,
                "grad_norm": result.grad_norm,
                **speed,
                **result.extra,
                **{f"tokens/{name}": float(tokens) for name, tokens in self.trainer.tokens_by_source.items()},
            },
        )
        return step_seconds

    def _evaluate(self) -> float:
        val_loss = self.trainer.evaluate()
        self.control.record(self.trainer.step, {"val_loss": val_loss, **self.trainer.last_eval_metrics})
        return val_loss

    def _reason_to_let_go(self) -> Ending | None:
        """Between steps: the time budget is spent, or the worker is shutting down (None if neither)."""
        if self.trainer.step >= self.spec.training.max_steps:
            return None
        if self._over_time():
            return Ending.TIMED_OUT
        return Ending.HANDED_BACK if self.should_stop() else None

    def _over_time(self) -> bool:
        limit = self.spec.training.max_runtime_seconds
        return limit is not None and time.monotonic() - self.started > limit

    def _flush(self) -> Directive:
        return self.control.flush(step=self.trainer.step, tokens_seen=self.trainer.tokens_seen)

    def _checkpoint_unless_saved(self) -> None:
        if self.last_checkpoint_step != self.trainer.step:
            self._checkpoint(val_loss=None, final=False)

    def _checkpoint(self, *, val_loss: float | None, final: bool) -> None:
        """Write a checkpoint's folder and record it under the lease (off the throughput clock)."""
        self.trainer.raise_if_diverged()  # never save the weights of a run that diverged between synced steps
        with self.window.off_the_clock():
            record = CheckpointRecord(
                version=self.lease.next_checkpoint_version(),
                step=self.trainer.step,
                tokens_seen=self.trainer.tokens_seen,
                final=final,
                metrics=dict(self.control.latest),
                val_loss=val_loss,
            )
            started = time.perf_counter()
            with lease_kept(self.lease, self.control.settings):  # an upload to an object store may take a while
                written = write_checkpoint_folder(
                    store=self.store,
                    trainer=self.trainer,
                    run=self.lineage,
                    record=record,
                    tokenizer_dir=self.tokenizer_dir,
                    before_rename=lambda: self.faults.before_checkpoint_rename(record.version),
                )
            write_seconds = time.perf_counter() - started
            self.lease.record_checkpoint(
                self.store, written, record, keep_last=self.spec.checkpointing.keep_last, write_seconds=write_seconds
            )
        self.last_checkpoint_step = self.trainer.step

    # The endings

    def _end(self, ending: Ending) -> str:
        """End the job the way the loop decided; returns what happened, for the log."""
        step = self.trainer.step
        match ending:
            case Ending.SUCCEEDED | Ending.STOPPED_EARLY:
                max_steps = self.spec.training.max_steps
                message = self.stopped_early or f"finished {max_steps} steps, {self.trainer.tokens_seen:,} tokens"
                if self.lease.finish(JobStatus.SUCCEEDED, message):
                    return "succeeded" if ending is Ending.SUCCEEDED else "succeeded (stopped early)"
                # A cancel arrived after the last step: honour it rather than report success.
                self.lease.finish(JobStatus.CANCELLED, f"cancelled at step {step}, after the last step")
                return "cancelled"
            case Ending.CANCELLED:
                self.lease.finish(JobStatus.CANCELLED, f"cancelled at step {step}")
                return "cancelled"
            case Ending.PAUSED:
                self._checkpoint_unless_saved()
                self.lease.pause(step)
                return f"paused at step {step}"
            case Ending.TIMED_OUT:
                limit = self.spec.training.max_runtime_seconds
                self.lease.fail(f"exceeded training.max_runtime_seconds ({limit:g}s) at step {step}; checkpoint saved")
                return "timed out"
            case Ending.HANDED_BACK:
                self.lease.hand_back(f"released at step {step}: worker {self.owner} is shutting down")
                wake_trainer(self.job.id, self.job.devices)
                return "released for worker shutdown"
            case _:
                assert_never(ending)
