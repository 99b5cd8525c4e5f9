"""Celery tasks. Each takes an id, loads its row, and treats the database as the truth."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis
from celery.signals import task_postrun, task_prerun, worker_init, worker_ready, worker_shutting_down

from selfsup.logs import enter_log_context, exit_log_context
from selfsup.processes import freeze_imported_objects
from selfsup.settings import Settings, get_settings
from storage import crud
from storage.blobs import get_blob_store
from storage.cache import release_all
from storage.db import session_scope
from storage.keys import CORPORA, CURATED, DATASETS, MODELS
from storage.tables import utcnow
from workers.celery_app import (
    CURATE_DATASET,
    DELIVER_WEBHOOK,
    INGEST_CORPUS,
    PREPARE_JOB,
    PROBE_CHECKPOINT,
    RECONCILE,
    SWEEP_WEBHOOKS,
    TRAIN_JOB,
    VALIDATE_MODEL,
    enqueue,
    get_celery,
    training_queue,
    waiting_ids,
    wake_trainer,
)
from workers.fleet import largest_worker_devices

log = logging.getLogger("selfsup.tasks")
app = get_celery()


def selfsup_task(name: str, **options: Any) -> Callable[[Callable[..., str]], Any]:
    """Register a task under a stable name, with logging of what it did and how it ended."""

    def decorate(fn: Callable[..., str]) -> Any:
        @functools.wraps(fn)
        def run(*args: Any) -> str:
            log.info("%s%s: start", name, args)
            outcome = fn(*args)
            log.info("%s%s: %s", name, args, outcome)
            return outcome

        return app.task(name=name, **options)(run)

    return decorate


# What the id a task takes names, for the log lines the task writes (and Celery's about it).
_ID_FIELD = {
    INGEST_CORPUS: "corpus_id",
    VALIDATE_MODEL: "model_id",
    CURATE_DATASET: "dataset_id",
    PREPARE_JOB: "job_id",
    TRAIN_JOB: "job_id",
    DELIVER_WEBHOOK: "delivery_id",
    PROBE_CHECKPOINT: "probe_run_id",
}
_task_log_contexts: dict[str, Any] = {}


@task_prerun.connect
def _enter_task_log_context(task_id: str | None = None, task: Any = None, args: Any = (), **_: Any) -> None:
    name = getattr(task, "name", "") or ""
    fields = {"task": name}
    if name in _ID_FIELD and args:
        fields[_ID_FIELD[name]] = str(args[0])
    _task_log_contexts[task_id or ""] = enter_log_context(**fields)


@task_postrun.connect
def _exit_task_log_context(task_id: str | None = None, **_: Any) -> None:
    token = _task_log_contexts.pop(task_id or "", None)
    if token is not None:
        exit_log_context(token)


@task_postrun.connect
def _release_cached_copies(**_: Any) -> None:
    # The task is done with the blob copies it used (memory maps, loaded checkpoints): the cache may evict them.
    release_all()


# Set when the worker begins a warm shutdown (SIGTERM): the trainer stops at its next step boundary.
SHUTTING_DOWN = threading.Event()


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    SHUTTING_DOWN.set()


@worker_init.connect
def _prepare_worker(**_: Any) -> None:
    # Pay torch's and transformers' import cost when the worker starts, not inside the first job.
    import torch
    import transformers

    import workers.curate
    import workers.ingest
    import workers.model_upload
    import workers.prepare
    import workers.probes
    import workers.train
    import workers.webhooks  # noqa: F401

    # A progress bar per saved checkpoint is noise in a worker's log (and buries what matters).
    transformers.utils.logging.disable_progress_bar()
    # transformers' warnings go through selfsup's log set-up (JSON where asked), not a handler of its own.
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    threads = get_settings().torch_threads
    if threads:
        torch.set_num_threads(threads)
    # Make the blob store now: an object store's client takes boto3 seconds to set up on a busy machine, which
    # must not be spent inside the first job's lease (a prefork child makes its own, see get_blob_store).
    get_blob_store()
    # Last: what was imported and made above stays for the worker's life, out of the collector's way.
    freeze_imported_objects()


def worker_identity() -> str:
    """Who holds a lease: host and process, unique among live workers."""
    return f"{socket.gethostname()}:{os.getpid()}"


@selfsup_task(INGEST_CORPUS)
def ingest_corpus(corpus_id: str) -> str:
    """Decode, split and count an uploaded corpus, then wake the jobs that wait for it."""
    from workers.ingest import ingest

    return ingest(corpus_id, settings=get_settings(), store=get_blob_store())


@selfsup_task(VALIDATE_MODEL)
def validate_model(model_id: str) -> str:
    """Extract an uploaded model archive safely and check the model (family, safetensors, shapes, tokenizer)."""
    from workers.model_upload import validate_model as validate

    return validate(model_id, settings=get_settings(), store=get_blob_store())


@selfsup_task(CURATE_DATASET)
def curate_dataset(dataset_id: str) -> str:
    """Curate a dataset's corpora once per curation key (or reuse that curation), then wake its jobs."""
    from workers.curate import curate_dataset as curate

    return curate(dataset_id, settings=get_settings(), store=get_blob_store())


@selfsup_task(PREPARE_JOB)
def prepare_job(job_id: str) -> str:
    """Tokenize a queued job's corpora (or reuse an earlier tokenization), then hand it to a trainer."""
    from workers.prepare import prepare

    return prepare(job_id, store=get_blob_store())


@selfsup_task(TRAIN_JOB)
def train_job(job_id: str) -> str:
    """Train a job under a lease; a delivery for a job someone else holds does nothing."""
    from workers.train import train

    return train(
        job_id,
        owner=worker_identity(),
        settings=get_settings(),
        store=get_blob_store(),
        should_stop=SHUTTING_DOWN.is_set,
    )


@selfsup_task(PROBE_CHECKPOINT)
def probe_checkpoint(probe_run_id: str) -> str:
    """Fit a linear probe on a checkpoint's frozen features (or the random-init baseline's); record its accuracy."""
    from workers.probes import run_probe

    return run_probe(probe_run_id, store=get_blob_store(), heartbeat_seconds=get_settings().lease_seconds / 3)


@selfsup_task(DELIVER_WEBHOOK)
def deliver_webhook(delivery_id: str) -> str:
    """Make one signed attempt at a due webhook delivery; record the answer, or schedule the retry."""
    from workers.webhooks import deliver

    return deliver(delivery_id, settings=get_settings())


@selfsup_task(SWEEP_WEBHOOKS)
def sweep_webhooks() -> str:
    """Wake a delivery task for each due webhook delivery (new, due for a retry, or whose attempt was lost)."""
    from workers.webhooks import sweep

    return sweep(get_settings())


@selfsup_task(RECONCILE)
def reconcile() -> str:
    """Re-enqueue what the broker may have lost (jobs, ingests, curations, probes, model validations), resume jobs
    whose trainer died, fail probes whose worker died, sweep broken uploads."""
    settings = get_settings()
    stale = utcnow() - timedelta(seconds=settings.lease_seconds)
    to_prepare: list[str] = []
    to_train: dict[str, int] = {}  # job id: its devices (the training queue its wake-up goes to)
    with session_scope() as session:
        # Queued for a while: the broker may have lost the wake-up (restarted without persistence).
        for job in crud.stale_queued_jobs(session=session, untouched_since=stale):
            if job.dataset_key:
                to_train[job.id] = job.devices
            else:
                to_prepare.append(job.id)
        to_ingest = crud.stale_processing_corpora(session=session, untouched_since=stale)
        # A curation touches its dataset as it goes, so only a lost wake-up or a dead worker looks stale.
        to_curate = crud.stale_processing_curated_datasets(session=session, untouched_since=stale)
        to_probe = crud.stale_queued_probe_runs(session=session, untouched_since=stale)
        # Running with no heartbeat for a lease: the worker died mid-probe.
        dead_probes = crud.fail_stale_running_probe_runs(session=session, untouched_since=stale)
        to_validate = crud.stale_processing_models(session=session, untouched_since=stale)
    to_train.update(_requeue_expired_leases())
    sent = 0
    for task, ids in (
        (PREPARE_JOB, to_prepare),
        (TRAIN_JOB, list(to_train)),
        (INGEST_CORPUS, to_ingest),
        (CURATE_DATASET, to_curate),
        (PROBE_CHECKPOINT, to_probe),
        (VALIDATE_MODEL, to_validate),
    ):
        # A job waiting behind a long one is still in the queue: only re-send what the broker lost.
        waiting = waiting_ids(task) if ids else set()
        for row_id in ids:
            if row_id not in waiting:
                enqueue(task, row_id, queue=training_queue(to_train[row_id]) if task == TRAIN_JOB else None)
                sent += 1
    too_wide = _say_why_wide_jobs_wait(settings)
    store = get_blob_store()
    swept = [
        *store.sweep_orphans(CORPORA, older_than=settings.orphan_seconds),
        *store.sweep_orphans(DATASETS, older_than=settings.orphan_seconds),
        *store.sweep_orphans(CURATED, older_than=settings.orphan_seconds),
        *store.sweep_orphans(MODELS, older_than=settings.orphan_seconds),
    ]
    died = f"failed {len(dead_probes)} probes whose worker died"
    wide = f"{too_wide} jobs wait for a gpu worker with more devices"
    return f"re-sent {sent} wake-ups; {died}; {wide}; swept {len(swept)} orphaned temporary files"


def _say_why_wide_jobs_wait(settings: Settings) -> int:
    """Tell each job that waits for more devices than any connected gpu worker has (`workers/fleet.py`) why it
    waits, in an event (once while nothing changes); returns how many there are. With no gpu worker connected
    at all nothing is said: every job waits for one then."""
    try:
        largest = largest_worker_devices(settings)
    except redis.RedisError:  # the broker is away: say it at a later look
        log.warning("could not read the gpu workers' device counts from the broker", exc_info=True)
        return 0
    if largest is None:
        return 0
    with session_scope() as session:
        wide = crud.jobs_waiting_for_more_devices(session=session, than=largest)
        for job_id, devices in wide:
            crud.add_event_unless_latest(
                session=session,
                job_id=job_id,
                type="waiting_for_devices",
                message=f"waiting for a gpu worker with {devices} devices (resources.devices): the largest connected "
                f"has {largest} (SELFSUP_WORKER_DEVICES); the job starts once one with {devices} or more connects",
            )
    return len(wide)


def _requeue_expired_leases() -> dict[str, int]:
    """Requeue (or fail, past max_restarts) running jobs whose lease expired; returns those to train (and their
    devices)."""
    requeued = {}
    with session_scope() as session:
        for job in crud.expired_leases(session=session):
            error = (
                f"worker {job.lease_owner} stopped renewing its lease (killed, crashed or cut off) at step {job.step}"
            )
            outcome = crud.requeue_after_crash(session=session, job=job, owner=job.lease_owner, error=error)
            if outcome == crud.RequeueOutcome.REQUEUED:
                requeued[job.id] = job.devices
    return requeued


@worker_ready.connect
def _recover_from_dead_workers_on_this_host(**_: Any) -> None:
    """A worker that starts on a host requeues jobs whose trainer there died, without waiting for the lease."""
    host = socket.gethostname()
    requeued = {}
    with session_scope() as session:
        for job in crud.running_jobs_of(session=session, owner_prefix=f"{host}:"):
            pid = int((job.lease_owner or ":0").rsplit(":", 1)[1] or 0)
            if pid and _alive(pid):
                continue
            error = f"worker {job.lease_owner} died at step {job.step}"
            outcome = crud.requeue_after_crash(session=session, job=job, owner=job.lease_owner, error=error)
            if outcome == crud.RequeueOutcome.REQUEUED:
                requeued[job.id] = job.devices
    for job_id, devices in requeued.items():
        wake_trainer(job_id, devices)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
