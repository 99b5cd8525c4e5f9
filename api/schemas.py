"""Response schemas: what clients see, and the small request bodies that are not the job spec (selfsup.spec),
a dataset (selfsup.curation_spec) or a raw upload.

Separate from the tables, so no storage path, key hash or tenant id leaks out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from selfsup.scopes import DEFAULT_SCOPES, Scope
from selfsup.spec import ProbeList, ResourcesSpec
from selfsup.webhook_targets import MAX_URL_LENGTH
from storage.status import WebhookEventType

CorpusStatus = Literal["processing", "ready", "failed"]
DatasetStatus = Literal["processing", "ready", "failed"]
JobStatus = Literal["queued", "running", "paused", "succeeded", "failed", "cancelled"]


class CorpusArchiveStats(BaseModel):
    """What ingest made of an archive's files: one document per text file, the others skipped and counted."""

    type: Literal["zip", "tar"]
    files: int = Field(description="Regular files in the archive (folders not counted).")
    text_files: int = Field(description="Files that became documents.")
    skipped_binary: int = Field(description="Files with a NUL byte or invalid UTF-8.")
    skipped_too_large: int = Field(description="Files larger than SELFSUP_ARCHIVE_MAX_FILE_BYTES.")
    skipped_empty: int = Field(description="Files holding only whitespace.")


class CorpusPublic(BaseModel):
    """An uploaded corpus."""

    id: str = Field(examples=["cor_5f1c0e9a2b7d4c3e8a10"])
    name: str = Field(examples=["tinyshakespeare"])
    status: CorpusStatus
    error: str | None = Field(default=None, description="Why ingest failed, when it did.")
    format: str = Field(examples=["txt"])
    compression: str | None = None
    size_bytes: int = Field(examples=[1115394])
    sha256: str
    documents: int | None = Field(default=None, description="Set when ready.")
    characters: int | None = None
    train_documents: int | None = None
    validation_documents: int | None = None
    archive: CorpusArchiveStats | None = Field(
        default=None, description="For an archive of text files, once ready: what became of its files."
    )
    created_at: datetime


class CorporaPage(BaseModel):
    data: list[CorpusPublic]
    next_cursor: str | None = None


class DatasetSourcePublic(BaseModel):
    """One corpus of a dataset's mixture."""

    corpus_id: str
    name: str = Field(description="The corpus's name when the dataset was made.")
    weight: float = Field(description="As requested.")
    share: float = Field(description="The weight normalised: this source's share of the training tokens.")


class DatasetPublic(BaseModel):
    """A curated dataset: a mixture of corpora, cleaned by the curation rules."""

    id: str = Field(examples=["dst_3c9e1a7b5d2f4e6a8b0c"])
    name: str
    status: DatasetStatus
    error: str | None = Field(default=None, description="Why curation failed, when it did.")
    sources: list[DatasetSourcePublic]
    curation: dict[str, Any] | None = Field(
        description="The curation rules with every default filled in; null: no rule but decontamination."
    )
    decontaminate_against: list[str]
    totals: dict[str, Any] | None = Field(
        default=None, description="The curation report's totals, once ready; the whole report is at `/report`."
    )
    created_at: datetime
    finished_at: datetime | None = None


class DatasetsPage(BaseModel):
    data: list[DatasetPublic]
    next_cursor: str | None = None


class JobPublic(BaseModel):
    """A pretraining job and its progress."""

    id: str = Field(examples=["job_8e2a4b1c9d0f7e6a5b3c"])
    name: str
    status: JobStatus
    spec: dict[str, Any] = Field(description="The spec with every default filled in.")
    step: int
    max_steps: int
    tokens_seen: int
    metrics: dict[str, float] = Field(description="The latest value of each metric.")
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    eta_seconds: float | None = Field(default=None, description="Estimated seconds to finish, while running.")
    cancel_requested: bool = False
    pause_requested: bool = False
    worker: str | None = Field(default=None, description="The worker (host:pid) training it now, if any.")
    restarts: int = Field(default=0, description="Resumes after a crash or a lost worker.")
    last_error: str | None = Field(default=None, description="The error of the last crash, if any.")


class JobResume(BaseModel):
    """What may change when a paused job resumes (`POST /v1/jobs/{id}/resume`; the body is optional)."""

    model_config = ConfigDict(extra="forbid")

    resources: ResourcesSpec | None = Field(
        default=None,
        description="Train on another number of devices from here on (the job's `resources` becomes this): a job "
        "checkpointed on N devices resumes on M with the same loss curve, since the global batch does not depend on "
        "the device count. `training.batch_size` must be a multiple of the new `devices`.",
    )


class JobsPage(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = None


class EstimateBasis(BaseModel):
    """The recorded throughput an ETA was computed from."""

    job_ids: list[str] = Field(description="The reference jobs (the caller's own), newest first.")
    count: int
    shape_match: Literal["same family and objective", "any shape"] = Field(
        description="Whether the reference jobs train the same model family with the same objective; only when "
        "none does are jobs of other shapes used."
    )
    history_days: float = Field(description="Throughput recorded this recently was considered.")
    tokens_per_second: float = Field(description="The throughput expected for this spec, after FLOPs scaling.")
    method: str = Field(description="How the reference throughput is scaled to this spec.")


class JobEstimate(BaseModel):
    """What a job spec would cost, from `POST /v1/jobs:estimate` (no job is created)."""

    parameters: int = Field(description="Trainable parameters of the model the spec builds (tied weights once).")
    vocab_size: int = Field(description="The vocabulary the parameter count assumes.")
    approximate: bool = Field(
        description="True when the vocabulary (so the embedding's parameters) is assumed, not yet known: no job "
        "has tokenized these corpora with this tokenizer. `note` says what was assumed."
    )
    note: str | None = None
    tokens_per_step: int
    max_steps: int
    total_tokens: int = Field(description="max_steps × tokens_per_step.")
    flops_per_token: int
    training_flops: int
    flops_formula: str
    tokens_per_parameter: float
    compute_optimal_tokens_per_parameter: float = Field(
        description="About 20 tokens per parameter is compute-optimal (Hoffmann et al. 2022, Chinchilla)."
    )
    compute_optimal_ratio: float = Field(description="tokens_per_parameter / compute_optimal_tokens_per_parameter.")
    compute_optimal: Literal["under-trained", "compute-optimal", "over-trained"] = Field(
        description="compute-optimal within a factor of 2 of the ratio; under- or over-trained outside it."
    )
    eta_seconds: float | None = Field(description="Expected training time; null when there is no throughput history.")
    eta_reason: str | None = Field(default=None, description="Why eta_seconds is null, when it is.")
    eta_basis: EstimateBasis | None = None


class MetricPoint(BaseModel):
    step: int
    name: str
    value: float
    time: datetime


class MetricsPage(BaseModel):
    data: list[MetricPoint]


class EventPublic(BaseModel):
    id: int
    time: datetime
    type: str = Field(examples=["checkpoint_saved"])
    message: str


class EventsPage(BaseModel):
    data: list[EventPublic]


class CheckpointFile(BaseModel):
    name: str = Field(examples=["model.safetensors"])
    size_bytes: int
    sha256: str


class CheckpointPublic(BaseModel):
    """A saved, complete checkpoint: a Hugging Face directory."""

    id: str = Field(examples=["ckpt_0a1b2c3d4e5f60718293"])
    job_id: str
    step: int
    version: int = Field(description="1, 2, 3… per job.")
    aliases: list[str] = Field(
        description="Any of latest, final, best (the best value of the job's checkpointing.best metric; default lowest "
        "val_loss)."
    )
    metrics: dict[str, float]
    files: list[CheckpointFile]
    created_at: datetime


class CheckpointsPage(BaseModel):
    data: list[CheckpointPublic]


ModelStatus = Literal["processing", "ready", "failed"]
ModelFamily = Literal["gpt2", "llama", "bert", "roberta", "t5"]


class ModelFile(BaseModel):
    """One file of an uploaded model's Hugging Face folder."""

    name: str = Field(examples=["model.safetensors"])
    size_bytes: int
    sha256: str


class ModelPublic(BaseModel):
    """A base model a tenant uploaded: a Hugging Face folder, validated before it is ready to start jobs from."""

    id: str = Field(examples=["mdl_7d2e9c4b1a3f5e6d8c0b"])
    name: str = Field(examples=["gpt2-small-domain"])
    status: ModelStatus
    error: str | None = Field(default=None, description="Why validation failed, when it did: what to fix.")
    family: ModelFamily | None = Field(default=None, description="The architecture, set when ready.")
    parameters: int | None = Field(default=None, description="Parameter count, set when ready.")
    archive_format: Literal["tar", "zip"]
    archive_bytes: int
    archive_sha256: str = Field(description="sha256 of the archive as uploaded.")
    files: list[ModelFile] = Field(description="The extracted files, set when ready.")
    created_at: datetime


class ModelsPage(BaseModel):
    data: list[ModelPublic]
    next_cursor: str | None = None


DeliveryStatus = Literal["pending", "delivered", "failed"]


# The longest lifetime a key may be given (ten years); a key without an expiry lives until revoked.
MAX_KEY_LIFETIME_SECONDS = 10 * 365 * 86400


class KeyCreate(BaseModel):
    """An API key to create for the caller's tenant: its name, scopes and (optionally) when it expires."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200, description="What the key is for.", examples=["ci-reader"])
    scopes: list[Scope] = Field(
        default_factory=lambda: list(DEFAULT_SCOPES),
        min_length=1,
        max_length=len(Scope),
        description="`read` (GET requests), `write` (every other `/v1` request but key management; includes "
        "read), `admin` (manage the tenant's keys; includes read and write).",
        examples=[["read"]],
    )
    expires_in_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_KEY_LIFETIME_SECONDS,
        description="The key stops working this many seconds from now (give this or `expires_at`, or neither).",
    )
    expires_at: AwareDatetime | None = Field(
        default=None, description="The key stops working at this time (with a timezone; in the future)."
    )

    @field_validator("scopes")
    @classmethod
    def _once_each(cls, value: list[Scope]) -> list[Scope]:
        return [scope for scope in Scope if scope in value]

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyCreate:
        if self.expires_in_seconds is not None and self.expires_at is not None:
            raise ValueError("give expires_in_seconds or expires_at, not both")
        return self


class KeyPublic(BaseModel):
    """An API key as its tenant's admins see it: never the key itself nor its hash."""

    id: str = Field(examples=["key_0a1b2c3d4e5f60718293"])
    name: str
    prefix: str = Field(description="The key's first characters, to tell keys apart.", examples=["ss_Xy3kQ9a"])
    scopes: list[str] = Field(examples=[["read", "write"]])
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = Field(
        default=None, description="When the key was last used (written every few seconds, so a little late)."
    )
    revoked: bool
    revoked_at: datetime | None = None


class KeyCreated(KeyPublic):
    """A new API key: `key` is shown this once and never again (only its hash is stored)."""

    key: str = Field(description="Send it as `Authorization: Bearer <key>`.", examples=["ss_Xy3kQ9a..."])


class KeysPage(BaseModel):
    data: list[KeyPublic]


class WebhookCreate(BaseModel):
    """A webhook to create: where to POST, and which events."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="An http(s) URL whose host resolves to public addresses only.",
        examples=["https://example.com/hooks/selfsup"],
    )
    event_types: list[WebhookEventType] = Field(
        min_length=1,
        max_length=64,
        description="The events to send; repeats are ignored.",
        examples=[["job.succeeded"]],
    )

    @field_validator("event_types")
    @classmethod
    def _once_each(cls, value: list[WebhookEventType]) -> list[WebhookEventType]:
        return list(dict.fromkeys(value))


class WebhookPublic(BaseModel):
    """A webhook; its secret is shown only in the response that created it."""

    id: str = Field(examples=["wh_1f2e3d4c5b6a79880a1b"])
    url: str
    event_types: list[WebhookEventType]
    created_at: datetime


class WebhookCreated(WebhookPublic):
    """A new webhook and its signing secret, shown this once: keep it to verify our signatures."""

    secret: str = Field(
        description="Standard Webhooks signing secret (`whsec_` + base64); "
        "verify deliveries with `standardwebhooks.Webhook(secret).verify(body, headers)`.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


class WebhooksPage(BaseModel):
    data: list[WebhookPublic]


class DeliveryPublic(BaseModel):
    """One message to a webhook and how its delivery went."""

    id: str = Field(description="The message's `webhook-id`, the same on every attempt.", examples=["msg_a1b2c3"])
    event_type: WebhookEventType
    status: DeliveryStatus = Field(description="pending (retrying), delivered (answered 2xx), or failed (gave up).")
    attempts: int
    last_response_code: int | None = Field(default=None, description="The last attempt's HTTP status, if any.")
    last_error: str | None = Field(default=None, description="Why the last attempt failed, if it did.")
    next_attempt_at: datetime | None = Field(default=None, description="When the next attempt is due, while pending.")
    payload: dict[str, Any] = Field(description="The body sent: `{type, timestamp, data}`.")
    created_at: datetime
    delivered_at: datetime | None = None


class DeliveriesPage(BaseModel):
    data: list[DeliveryPublic]
    next_cursor: str | None = None


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class ErrorDetail(BaseModel):
    """One thing to fix: the field (its path, as `model.heads` or `corpus_ids[0]`) and what is wrong with it."""

    field: str = Field(examples=["model.heads"])
    message: str = Field(examples=["model.width 100 is not divisible by model.heads 3"])
    type: str | None = Field(
        default=None, description="The validation error's kind, when the spec's own checks gave it."
    )
    line: int | None = Field(default=None, description="For an upload checked line by line, the line (from 1).")


class ErrorBody(BaseModel):
    code: str = Field(
        description="Stable and machine-readable: bad_request, unauthorized, forbidden, not_found, conflict, "
        "payload_too_large, unsupported_media_type, invalid_request, unavailable, internal_error.",
        examples=["not_found"],
    )
    message: str = Field(description="What went wrong and what to do about it.", examples=["no job job_8e2a4b1c"])
    details: list[ErrorDetail] | dict[str, Any] | None = Field(
        default=None,
        description="For a 422, each bad field; for a 409 on a reused Idempotency-Key, the earlier `job_id`.",
    )


class ErrorResponse(BaseModel):
    """Every error the API answers: `{"error": {"code", "message", "details"}}`."""

    error: ErrorBody


class LabelledSetPublic(BaseModel):
    """A labelled set for probes: JSONL `{"text", "label"}`, validated when uploaded."""

    id: str = Field(examples=["lbl_5f1c0e9a2b7d4c3e8a10"])
    name: str = Field(examples=["which-play"])
    size_bytes: int
    sha256: str
    examples: int
    label_counts: dict[str, int] = Field(description="Examples per label.")
    created_at: datetime


class LabelledSetsPage(BaseModel):
    data: list[LabelledSetPublic]
    next_cursor: str | None = None


class ProbesRequest(BaseModel):
    """Probes to run on an existing checkpoint, as in the job spec's `probes`."""

    model_config = ConfigDict(extra="forbid")

    probes: ProbeList = Field(min_length=1)


ProbeRunStatus = Literal["queued", "running", "succeeded", "failed"]


class ProbeRunPublic(BaseModel):
    """One probe of one checkpoint (or of the random-init model, at step 0)."""

    id: str = Field(examples=["prb_0a1b2c3d4e5f60718293"])
    job_id: str
    checkpoint_id: str | None = Field(description="The checkpoint probed; for the random-init baseline, whose shape.")
    random_init: bool
    step: int
    name: str
    metric: str = Field(examples=["probe_accuracy/source"])
    labelled_set_id: str
    pooling: Literal["mean", "cls"] = Field(default="mean", description="Mean of the tokens' states, or the first's.")
    layer: int = Field(default=-1, description="The layer read: -1 the last, k block k, 0 the embeddings.")
    status: ProbeRunStatus
    accuracy: float | None = Field(default=None, description="Held-out accuracy, once succeeded.")
    error: str | None = None
    created_at: datetime


class ProbeRunsPage(BaseModel):
    data: list[ProbeRunPublic]


class TenantQuotas(BaseModel):
    """A tenant's quotas as an operator sets them (`PUT /v1/tenants/{name}/quotas`, `selfsup quotas set`).

    A limit left out or null falls back to the service-wide default (`SELFSUP_QUOTA_*`); with no default, it is
    unlimited. A `PUT` replaces all of them."""

    model_config = ConfigDict(extra="forbid")

    max_running_jobs: int | None = Field(default=None, ge=0, description="Jobs training at once; more wait queued.")
    max_queued_jobs: int | None = Field(default=None, ge=0, description="Jobs queued at once; more are refused.")
    max_storage_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Bytes of corpora, labelled sets, models and checkpoints; an upload past it is refused.",
    )
    max_upload_bytes: int | None = Field(default=None, ge=1, description="Bytes in one upload.")
    max_job_tokens: int | None = Field(default=None, ge=1, description="A job's max_steps × tokens_per_step.")
    allow_high_priority: bool = Field(default=False, description="Whether jobs may ask for `priority: high`.")


class TenantQuotasPublic(TenantQuotas):
    """A tenant's own quotas (null: the service default applies)."""

    tenant: str


class QuotaUse(BaseModel):
    """One quota: its limit (null: unlimited) and the current use (0 for the per-request ones)."""

    limit: int | None
    used: int


class UsagePublic(BaseModel):
    """The caller's tenant's quotas and what it uses against each (`GET /v1/usage`)."""

    tenant: str
    quotas: dict[str, QuotaUse] = Field(
        description="By quota: max_running_jobs, max_queued_jobs, max_storage_bytes, max_upload_bytes (one upload; "
        "used is 0), max_job_tokens (one job; used is 0)."
    )
    allow_high_priority: bool
    device_seconds: float = Field(
        description="Seconds your jobs held a trainer in the fair-share window (SELFSUP_FAIR_SHARE_WINDOW_SECONDS): "
        "among jobs of one priority, the tenant with the fewest goes first."
    )
