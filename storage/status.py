"""The lifecycles of a job, a corpus, a curated dataset, an uploaded model and a webhook delivery: their statuses and
the moves between them, written once; and the events that webhooks subscribe to.

The values are the strings stored in the `status` columns and shown by the API; `crud` checks every
change of status against the tables below, in Python and in the UPDATE's WHERE clause.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class CorpusStatus(StrEnum):
    """Where an uploaded corpus is in ingest."""

    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


class ProbeStatus(StrEnum):
    """Where a probe run is: queued (written with its checkpoint), running on a cpu worker, or done."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class DatasetStatus(StrEnum):
    """Where a curated dataset is in curation."""

    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


class ModelStatus(StrEnum):
    """Where an uploaded base model is in validation."""

    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


class DeliveryStatus(StrEnum):
    """Where one webhook message is in its delivery."""

    PENDING = "pending"  # not yet answered 2xx; retried with backoff
    DELIVERED = "delivered"
    FAILED = "failed"  # no 2xx within the retry window (a day)


class WebhookEventType(StrEnum):
    """What a webhook may subscribe to: a state that a job, checkpoint or corpus reached."""

    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    CHECKPOINT_CREATED = "checkpoint.created"
    CORPUS_READY = "corpus.ready"
    CORPUS_FAILED = "corpus.failed"


# Every move a job can make, and who makes it:
#   queued  -> running    a trainer claims it
#   queued  -> paused     paused before it started
#   queued  -> cancelled  cancelled before it started
#   queued  -> failed     its data cannot serve it (a corpus failed or was deleted, too few tokens)
#   running -> queued     the trainer crashed or its worker shut down: another one resumes it
#   running -> paused     the trainer checkpointed and let go, as asked
#   running -> succeeded  the last step is done
#   running -> failed     it diverged, ran out of time or restarts
#   running -> cancelled  the trainer saw the cancel at a step boundary
#   paused  -> queued     resumed
#   paused  -> cancelled  cancelled while paused
#   paused  -> failed     preparation failed while it was paused
JOB_TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.QUEUED, JobStatus.PAUSED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.PAUSED: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

# A corpus is ingested once: it becomes ready or fails, and stays so.
CORPUS_TRANSITIONS: Mapping[CorpusStatus, frozenset[CorpusStatus]] = {
    CorpusStatus.PROCESSING: frozenset({CorpusStatus.READY, CorpusStatus.FAILED}),
    CorpusStatus.READY: frozenset(),
    CorpusStatus.FAILED: frozenset(),
}

# A dataset is curated once: it becomes ready (curated, or reusing an identical curation) or fails, and stays so.
DATASET_TRANSITIONS: Mapping[DatasetStatus, frozenset[DatasetStatus]] = {
    DatasetStatus.PROCESSING: frozenset({DatasetStatus.READY, DatasetStatus.FAILED}),
    DatasetStatus.READY: frozenset(),
    DatasetStatus.FAILED: frozenset(),
}

# A base model is validated once: it becomes ready or fails, and stays so.
MODEL_TRANSITIONS: Mapping[ModelStatus, frozenset[ModelStatus]] = {
    ModelStatus.PROCESSING: frozenset({ModelStatus.READY, ModelStatus.FAILED}),
    ModelStatus.READY: frozenset(),
    ModelStatus.FAILED: frozenset(),
}

# A delivery is retried while pending, and ends once: answered 2xx, or given up on.
DELIVERY_TRANSITIONS: Mapping[DeliveryStatus, frozenset[DeliveryStatus]] = {
    DeliveryStatus.PENDING: frozenset({DeliveryStatus.DELIVERED, DeliveryStatus.FAILED}),
    DeliveryStatus.DELIVERED: frozenset(),
    DeliveryStatus.FAILED: frozenset(),
}

# The webhook event a job's final status raises.
JOB_ENDING_EVENTS: Mapping[JobStatus, WebhookEventType] = {
    JobStatus.SUCCEEDED: WebhookEventType.JOB_SUCCEEDED,
    JobStatus.FAILED: WebhookEventType.JOB_FAILED,
    JobStatus.CANCELLED: WebhookEventType.JOB_CANCELLED,
}

FINISHED_JOB_STATUSES = frozenset(status for status, moves in JOB_TRANSITIONS.items() if not moves)
ACTIVE_JOB_STATUSES = frozenset(JobStatus) - FINISHED_JOB_STATUSES


def job_statuses_leading_to(target: JobStatus, *, among: frozenset[JobStatus] | None = None) -> frozenset[JobStatus]:
    """The statuses a job may move to `target` from (limited to `among`); ValueError if `among` has others."""
    sources = frozenset(status for status, moves in JOB_TRANSITIONS.items() if target in moves)
    if among is None:
        return sources
    if not among <= sources:
        wrong = ", ".join(sorted(among - sources))
        raise ValueError(f"a job cannot move from {wrong} to {target}")
    return among


def corpus_statuses_leading_to(target: CorpusStatus) -> frozenset[CorpusStatus]:
    """The statuses a corpus may move to `target` from."""
    return frozenset(status for status, moves in CORPUS_TRANSITIONS.items() if target in moves)


def dataset_statuses_leading_to(target: DatasetStatus) -> frozenset[DatasetStatus]:
    """The statuses a curated dataset may move to `target` from."""
    return frozenset(status for status, moves in DATASET_TRANSITIONS.items() if target in moves)


def model_statuses_leading_to(target: ModelStatus) -> frozenset[ModelStatus]:
    """The statuses an uploaded model may move to `target` from."""
    return frozenset(status for status, moves in MODEL_TRANSITIONS.items() if target in moves)


def delivery_statuses_leading_to(target: DeliveryStatus) -> frozenset[DeliveryStatus]:
    """The statuses a webhook delivery may move to `target` from."""
    return frozenset(status for status, moves in DELIVERY_TRANSITIONS.items() if target in moves)
