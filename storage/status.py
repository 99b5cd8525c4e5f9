"""The lifecycles of a job, a corpus and a curated dataset: their statuses and the moves between them, written once.

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


class DatasetStatus(StrEnum):
    """Where a curated dataset is in curation."""

    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


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
