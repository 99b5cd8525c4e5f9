"""The API's resources as typed models (they mirror the server's `api/schemas.py`).

Fields the server adds later are kept (`extra="allow"`), so `model_dump()` is always the whole resource.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

CorpusStatus = Literal["processing", "ready", "failed"]
JobStatus = Literal["queued", "running", "paused", "succeeded", "failed", "cancelled"]
FINISHED_JOB_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class Resource(BaseModel):
    """Base of every resource: keeps unknown fields."""

    model_config = ConfigDict(extra="allow")


class Corpus(Resource):
    """An uploaded corpus; `status` becomes `ready` (or `failed`, with `error`) once ingested."""

    id: str
    name: str
    status: CorpusStatus
    error: str | None = None
    format: str
    compression: str | None = None
    size_bytes: int
    sha256: str
    documents: int | None = None
    characters: int | None = None
    train_documents: int | None = None
    validation_documents: int | None = None
    created_at: datetime


class Job(Resource):
    """A pretraining job and its progress."""

    id: str
    name: str
    status: JobStatus
    spec: dict[str, Any]
    step: int
    max_steps: int
    tokens_seen: int
    metrics: dict[str, float]
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    eta_seconds: float | None = None
    cancel_requested: bool = False
    pause_requested: bool = False
    worker: str | None = None
    restarts: int = 0
    last_error: str | None = None

    @property
    def finished(self) -> bool:
        """Succeeded, failed or cancelled: nothing more will happen to it."""
        return self.status in FINISHED_JOB_STATUSES


class EstimateBasis(Resource):
    """The recorded throughput a job estimate's ETA was computed from."""

    job_ids: list[str]
    count: int
    shape_match: str
    history_days: float
    tokens_per_second: float
    method: str


class JobEstimate(Resource):
    """What a job spec would cost (`POST /v1/jobs:estimate`); no job is created."""

    parameters: int
    vocab_size: int
    approximate: bool
    note: str | None = None
    tokens_per_step: int
    max_steps: int
    total_tokens: int
    flops_per_token: int
    training_flops: int
    flops_formula: str
    tokens_per_parameter: float
    compute_optimal_tokens_per_parameter: float
    compute_optimal_ratio: float
    compute_optimal: Literal["under-trained", "compute-optimal", "over-trained"]
    eta_seconds: float | None = None
    eta_reason: str | None = None
    eta_basis: EstimateBasis | None = None


class Event(Resource):
    """One entry of a job's history (`queued`, `started`, `checkpoint_saved`, `finished`, …)."""

    id: int
    time: datetime
    type: str
    message: str


class MetricPoint(Resource):
    """One recorded value of a metric at a step."""

    step: int
    name: str
    value: float
    time: datetime


class CheckpointFile(Resource):
    """One file of a checkpoint, with the sha256 a download is checked against."""

    name: str
    size_bytes: int
    sha256: str


class Checkpoint(Resource):
    """A saved, complete checkpoint: a Hugging Face directory."""

    id: str
    job_id: str
    step: int
    version: int
    aliases: list[str]
    metrics: dict[str, float]
    files: list[CheckpointFile]
    created_at: datetime


class LabelledSet(Resource):
    """A labelled set for probes (JSONL `{"text", "label"}`), validated when uploaded."""

    id: str
    name: str
    size_bytes: int
    sha256: str
    examples: int
    label_counts: dict[str, int]
    created_at: datetime


ProbeRunStatus = Literal["queued", "running", "succeeded", "failed"]


class ProbeRun(Resource):
    """One linear probe of one checkpoint, or of the random-init model of the job's shape (`random_init`, step 0).

    Its held-out `accuracy` is also the job's metric `metric` (`probe_accuracy/<name>`) at `step`."""

    id: str
    job_id: str
    checkpoint_id: str | None = None
    random_init: bool
    step: int
    name: str
    metric: str
    labelled_set_id: str
    pooling: str = "mean"
    layer: int = -1
    status: ProbeRunStatus
    accuracy: float | None = None
    error: str | None = None
    created_at: datetime

    @property
    def finished(self) -> bool:
        """Succeeded or failed: nothing more will happen to it."""
        return self.status in ("succeeded", "failed")


class StreamMessage(BaseModel):
    """One message of a job's live stream: `status` and `end` carry the job, `event` an event, `metric` a point."""

    id: str
    event: Literal["status", "event", "metric", "end"]
    data: Job | Event | MetricPoint

    @property
    def job(self) -> Job | None:
        """The job resource of a `status` or `end` message."""
        return self.data if isinstance(self.data, Job) else None
