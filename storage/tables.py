"""The database tables: the single source of truth for tenants, corpora, datasets, uploaded models, jobs, metrics,
checkpoints and webhooks."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from storage.status import CorpusStatus, DatasetStatus, DeliveryStatus, JobStatus, ModelStatus, ProbeStatus


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A random, URL-safe id that says what it names (`job_…`, `cor_…`)."""
    return f"{prefix}_{secrets.token_hex(10)}"


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ten"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TenantQuota(Base):
    """A tenant's quotas, set by an operator; a null limit falls back to the service-wide default setting
    (`SELFSUP_QUOTA_*`), and a null default means unlimited. No row: every limit is the default."""

    __tablename__ = "tenant_quotas"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    max_running_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    max_storage_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    max_upload_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    max_job_tokens: Mapped[int | None] = mapped_column(BigInteger, default=None)  # max_steps × tokens_per_step
    allow_high_priority: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # Only the sha256 of the key is stored; the key itself is shown once, when created.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), default="")
    # Scope names (selfsup/scopes.py): `read`, `write`, `admin`.
    scopes: Mapped[list[Any]] = mapped_column(default=lambda: ["read", "write"])
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    # Written in batches by the API (api/key_uses.py), not on every request: late by up to the flush interval.
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Corpus(Base):
    __tablename__ = "corpora"
    __table_args__ = (Index("ix_corpora_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("cor"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=CorpusStatus.PROCESSING)  # a CorpusStatus
    error: Mapped[str | None] = mapped_column(Text, default=None)
    format: Mapped[str] = mapped_column(String(16))  # txt | jsonl | archive
    compression: Mapped[str | None] = mapped_column(String(16), default=None)  # gzip | bzip2 | xz (a tar) | None
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    documents: Mapped[int | None] = mapped_column(BigInteger, default=None)
    characters: Mapped[int | None] = mapped_column(BigInteger, default=None)
    train_documents: Mapped[int | None] = mapped_column(BigInteger, default=None)
    validation_documents: Mapped[int | None] = mapped_column(BigInteger, default=None)
    ingest_report: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Dataset(Base):
    """A curated mixture of corpora (`POST /v1/datasets`); its kept text is stored once per `curation_key`."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("dst"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=DatasetStatus.PROCESSING)  # a DatasetStatus
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # The request with every default filled in (`DatasetCreate.canonical()`).
    request: Mapped[dict[str, Any]] = mapped_column()
    # [{corpus_id, name, sha256, weight, share}] of the sources and [{corpus_id, name, sha256}] of the
    # evaluation corpora, as they were when the dataset was asked for (lineage outlives a deleted corpus).
    source_corpora: Mapped[list[Any]] = mapped_column()
    evaluation_corpora: Mapped[list[Any]] = mapped_column(default=list)
    # sha256 over the sources' contents in order, their weights, the curation spec and the evaluation
    # corpora's contents: datasets with one key share one curation run and its blobs.
    curation_key: Mapped[str] = mapped_column(String(64), index=True)
    totals: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class Model(Base):
    """A base model a tenant uploaded (`POST /v1/models`): a Hugging Face directory, validated before it is ready."""

    __tablename__ = "models"
    __table_args__ = (Index("ix_models_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mdl"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=ModelStatus.PROCESSING)  # a ModelStatus
    error: Mapped[str | None] = mapped_column(Text, default=None)
    archive_format: Mapped[str] = mapped_column(String(16))  # tar | zip
    archive_bytes: Mapped[int] = mapped_column(BigInteger)
    archive_sha256: Mapped[str] = mapped_column(String(64))
    # Set when ready: gpt2 | llama | bert | roberta | t5 (a ModelFamily), the parameter count, and
    # [{name, bytes, sha256}] of the extracted files, which live under `blob_prefix` (a Hugging Face folder).
    family: Mapped[str | None] = mapped_column(String(16), default=None)
    parameters: Mapped[int | None] = mapped_column(BigInteger, default=None)
    files: Mapped[list[Any]] = mapped_column(default=list)
    blob_prefix: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)  # a JobStatus
    spec: Mapped[dict[str, Any]] = mapped_column()
    step: Mapped[int] = mapped_column(BigInteger, default=0)
    max_steps: Mapped[int] = mapped_column(BigInteger)
    tokens_seen: Mapped[int] = mapped_column(BigInteger, default=0)
    latest_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # low | normal | high: the first key of the order a free trainer picks the next job by (`crud.claim_next_job`).
    priority: Mapped[str] = mapped_column(String(8), default="normal", server_default="normal")
    # The job's `resources.devices`: a trainer claims it only with at least that many (`crud.claim_next_job`).
    devices: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Resumes after a crash or a lost worker; past `training.max_restarts` the job fails with `last_error`.
    restarts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    dataset_key: Mapped[str | None] = mapped_column(String(64), default=None)
    # The curated dataset the job trains on, when its spec names `dataset_id` instead of `corpus_ids`.
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL", name="fk_jobs_dataset_id_datasets"), default=None, index=True
    )
    # What `init_from` named, resolved when the job was created (`storage.bases`); None for a random init.
    base: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # The lease: who trains this job now, and until when that claim holds without a heartbeat.
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobCorpus(Base):
    """Which corpora a job reads, so a corpus in use cannot be deleted."""

    __tablename__ = "job_corpora"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    corpus_id: Mapped[str] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer)


class Metric(Base):
    """One value per job, step and name: a replayed step replaces, never duplicates.

    `id` grows in the order the values were written (a replaced value gets a new one), so a live stream
    can follow a job's metrics with a cursor, as it follows its events.
    """

    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("job_id", "name", "step", name="uq_metrics_job_name_step"),
        Index("ix_metrics_job_id_id", "job_id", "id"),
    )

    # BIGINT on PostgreSQL (metrics outnumber every other row); SQLite autoincrements only an INTEGER key.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float] = mapped_column(Float)
    time: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    time: Mapped[datetime] = mapped_column(default=utcnow)
    type: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "version", name="uq_checkpoints_job_version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ckpt"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(Integer)
    is_final: Mapped[bool] = mapped_column(Boolean, default=False)
    val_loss: Mapped[float | None] = mapped_column(Float, default=None)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # [{name, size_bytes, sha256}] of the downloadable files; resume state is listed separately.
    files: Mapped[list[Any]] = mapped_column(default=list)
    resume_files: Mapped[list[Any]] = mapped_column(default=list)
    blob_prefix: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TokenizedDataset(Base):
    """Tokenized train/validation arrays, stored once per (corpus contents, tokenizer spec)."""

    __tablename__ = "tokenized_datasets"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokenizer_spec: Mapped[dict[str, Any]] = mapped_column()
    corpus_sha256s: Mapped[list[Any]] = mapped_column()
    vocab_size: Mapped[int] = mapped_column(Integer)
    train_tokens: Mapped[int] = mapped_column(BigInteger)
    validation_tokens: Mapped[int] = mapped_column(BigInteger)
    blob_prefix: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Webhook(Base):
    """A tenant's subscription: events of these types are POSTed to `url`, signed with `secret`."""

    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("wh"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[Any]] = mapped_column()  # WebhookEventType values
    # `whsec_<base64>`: the HMAC key itself, because signing needs it (unlike an API key, it cannot be
    # stored hashed). Shown once, when created; the API never returns it again. See docs/webhooks.md.
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One message to one webhook (the transactional outbox): written with the change that raised it, sent and
    retried by the workers. Its id is the message's `webhook-id`, the same on every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_webhook_created", "webhook_id", "created_at", "id"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("msg"))
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(32))  # a WebhookEventType
    payload: Mapped[dict[str, Any]] = mapped_column()  # {"type", "timestamp", "data"}, as sent
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)  # a DeliveryStatus
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When the next attempt is due; while an attempt is under way, when it counts as lost (a dead worker).
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    last_response_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class LabelledSet(Base):
    """A tenant's small labelled set (`POST /v1/labelled-sets`): JSONL `{"text", "label"}`, validated on upload.

    Its examples live in the blob store as uploaded; the row says what they hold."""

    __tablename__ = "labelled_sets"
    __table_args__ = (Index("ix_labelled_sets_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("lbl"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    examples: Mapped[int] = mapped_column(Integer)
    label_counts: Mapped[dict[str, Any]] = mapped_column()  # {label: examples}
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProbeRun(Base):
    """One linear probe of one checkpoint (or, with `random_init`, of the job's untrained model, at step 0).

    Written in the transaction that records the checkpoint (or by `POST /v1/checkpoints/{id}/probes`); a cpu
    worker runs it and records `probe_accuracy/<name>` at `step`. `checkpoint_id` is no foreign key: a
    checkpoint pruned before its probe ran leaves the run to fail with that reason."""

    __tablename__ = "probe_runs"
    __table_args__ = (Index("ix_probe_runs_status", "status", "updated_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("prb"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    # The checkpoint probed; for the random-init baseline, one whose config and tokenizer give the shape.
    checkpoint_id: Mapped[str | None] = mapped_column(String(40), default=None)
    random_init: Mapped[bool] = mapped_column(Boolean, default=False)
    step: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(64))
    labelled_set_id: Mapped[str] = mapped_column(String(40))
    # Which hidden states the probe reads: `mean` over the tokens or the first (`cls`), of `layer` (-1: the last).
    pooling: Mapped[str] = mapped_column(String(8), default="mean", server_default="mean")
    layer: Mapped[int] = mapped_column(Integer, default=-1, server_default="-1")
    status: Mapped[str] = mapped_column(String(16), default=ProbeStatus.QUEUED)  # a ProbeStatus
    accuracy: Mapped[float | None] = mapped_column(Float, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
