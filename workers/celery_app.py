"""The Celery application. Light to import: the API uses it to enqueue without loading torch.

A Celery message is only a wake-up call carrying an id; the database says what to do.
"""

from __future__ import annotations

import ast
import json
import logging
from typing import Any

import redis
from celery import Celery
from celery.signals import setup_logging

from selfsup.broker import broker_url
from selfsup.logs import configure_logging
from selfsup.settings import get_settings
from selfsup.spec_types import MAX_DEVICES

CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"

INGEST_CORPUS = "selfsup.ingest_corpus"
PREPARE_JOB = "selfsup.prepare_job"
CURATE_DATASET = "selfsup.curate_dataset"
VALIDATE_MODEL = "selfsup.validate_model"
TRAIN_JOB = "selfsup.train_job"
RECONCILE = "selfsup.reconcile"
DELIVER_WEBHOOK = "selfsup.deliver_webhook"
SWEEP_WEBHOOKS = "selfsup.sweep_webhooks"
PROBE_CHECKPOINT = "selfsup.probe_checkpoint"

TASK_QUEUES = {
    INGEST_CORPUS: CPU_QUEUE,
    CURATE_DATASET: CPU_QUEUE,
    VALIDATE_MODEL: CPU_QUEUE,
    PREPARE_JOB: CPU_QUEUE,
    TRAIN_JOB: GPU_QUEUE,
    RECONCILE: CPU_QUEUE,
    DELIVER_WEBHOOK: CPU_QUEUE,
    SWEEP_WEBHOOKS: CPU_QUEUE,
    # On the cpu queue, one torch thread: probing never slows training down.
    PROBE_CHECKPOINT: CPU_QUEUE,
}


def make_celery() -> Celery:
    """A Celery app configured from the settings."""
    settings = get_settings()
    app = Celery("selfsup", broker=broker_url(settings), include=["workers.tasks"])
    app.conf.update(
        task_default_queue=CPU_QUEUE,
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        task_ignore_result=True,
        # Ack after the task ran, and requeue if the worker process dies: a lost message would
        # otherwise be a lost job. A second delivery is harmless because the database holds the lease.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout,
            # Look for overdue unacknowledged messages every few seconds (kombu's default is ~100 s).
            "unacked_restore_interval": max(1, min(10, settings.broker_visibility_timeout)),
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
        beat_schedule={
            "reconcile": {"task": RECONCILE, "schedule": settings.reconcile_interval_seconds},
            # Sweeps that waited past the next one (a busy worker) are dropped rather than piling up.
            "sweep-webhooks": {
                "task": SWEEP_WEBHOOKS,
                "schedule": settings.webhook_sweep_interval_seconds,
                "options": {"expires": settings.webhook_sweep_interval_seconds},
            },
        },
    )
    return app


@setup_logging.connect
def _selfsup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """A worker logs like the API and `selfsup up` (text or JSON lines); Celery configures nothing itself."""
    level = logging.getLevelName(loglevel) if isinstance(loglevel, str) else loglevel
    configure_logging(get_settings().log_format, level=level or logging.INFO)


_app: Celery | None = None


def get_celery() -> Celery:
    """The process-wide Celery app."""
    global _app
    if _app is None:
        _app = make_celery()
    return _app


def training_queue(devices: int) -> str:
    """The queue a wake-up for a job on `devices` devices goes to: `gpu` for one, `gpu-N` for N.

    A gpu worker with D devices consumes `gpu`, `gpu-2` … `gpu-D` (`training_queues`), so the broker hands a job's
    wake-up only to a worker the job fits: one with fewer devices never takes it (and drops it) in their place.
    """
    return GPU_QUEUE if devices <= 1 else f"{GPU_QUEUE}-{devices}"


def training_queues(devices: int = MAX_DEVICES) -> list[str]:
    """The queues a gpu worker with `devices` devices consumes (by default: every training queue there can be)."""
    return [training_queue(n) for n in range(1, devices + 1)]


def enqueue(task_name: str, *args: str, queue: str | None = None) -> None:
    """Wake a worker for `task_name` on its queue (`queue`, where the task has several: `training_queue`)."""
    get_celery().send_task(task_name, args=list(args), queue=queue or TASK_QUEUES[task_name])


def wake_trainer(job_id: str, devices: int) -> None:
    """Wake a gpu worker with at least `devices` devices to claim a job (`training_queue`)."""
    enqueue(TRAIN_JOB, job_id, queue=training_queue(devices))


def waiting_in(queue: str) -> int:
    """How many messages wait in `queue` (`LLEN`; messages being worked on are not counted)."""
    with get_celery().connection_for_read() as conn:
        return int(conn.default_channel.client.llen(queue))


def _task_queues(task_name: str) -> list[str]:
    return training_queues() if task_name == TRAIN_JOB else [TASK_QUEUES[task_name]]


def waiting_ids(task_name: str, *, limit: int = 10_000) -> set[str]:
    """Ids that already wait in the broker for `task_name` (so the reconciler does not pile up duplicates).

    Reads the Redis lists behind the task's queues; messages being worked on are not in them.
    """
    with get_celery().connection_for_read() as conn:
        pipe = conn.default_channel.client.pipeline(transaction=False)
        for queue in _task_queues(task_name):
            pipe.lrange(queue, 0, limit - 1)
        raw = [item for items in pipe.execute() for item in items]
    ids: set[str] = set()
    for item in raw:
        try:
            headers = json.loads(item)["headers"]
        except (ValueError, KeyError, TypeError):
            continue
        if headers.get("task") != task_name:
            continue
        try:
            args = ast.literal_eval(headers.get("argsrepr") or "()")
        except (ValueError, SyntaxError):
            continue
        ids.update(a for a in args if isinstance(a, str))
    return ids


def queue_depths(*, timeout: float = 2.0) -> dict[str, int]:
    """Messages waiting in the broker on each queue (`LLEN`; messages being worked on are not counted); `gpu`
    counts the wake-ups of every training queue (`training_queue`).

    Its own short-lived connection with socket timeouts, so a broker that is down answers within `timeout`.
    """
    client = redis.Redis.from_url(broker_url(get_settings()), socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        pipe = client.pipeline(transaction=False)
        for queue in (CPU_QUEUE, *training_queues()):
            pipe.llen(queue)
        cpu, *gpu = (int(n) for n in pipe.execute())
        return {CPU_QUEUE: cpu, GPU_QUEUE: sum(gpu)}
    finally:
        client.close()
