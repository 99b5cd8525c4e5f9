"""The one typed settings object that the API, the workers and the command line all import."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """selfsup's configuration, read from `SELFSUP_*` environment variables (and `.env`)."""

    # Errors name the setting and what is wrong, never its value: some are secrets (keys, tokens, passwords).
    model_config = SettingsConfigDict(env_prefix="SELFSUP_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    environment: Literal["development", "production"] = "development"
    home: Path = Field(default=Path("selfsup-data"), description="Data directory of the embedded default.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in home.")
    redis_url: str | None = Field(default=None, description="Broker URL; default an embedded Valkey server.")
    blob_dir: Path | None = Field(default=None, description="Blob store folder; default home/blobs.")
    blob_url: str | None = Field(
        default=None,
        pattern=r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|file://.+)$",
        description="Where blobs live: `s3://bucket/prefix` (an S3-compatible object store, reached with the "
        "standard AWS_* variables) or `file:///path` (a folder); unset: SELFSUP_BLOB_DIR, else home/blobs.",
    )
    blob_direct_writes: bool = Field(
        default=True,
        description="The blob folder's files are written with O_DIRECT, past the page cache, where the filesystem "
        "allows it (ext4, XFS, recent tmpfs): on a VM whose memory the host reclaims, a 1 GiB upload ran at "
        "715-839 MB/s instead of 327-546, with about half the API's CPU. Their first reader then reads the disk. "
        "false: buffered writes.",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Where a process keeps local copies of object-store blobs it must read as files (token arrays, "
        "checkpoints to resume); default home/cache.",
    )
    cache_max_bytes: int = Field(
        default=50 * 1024**3,
        gt=0,
        description="The most bytes the local cache holds; least recently used copies not in use are evicted.",
    )

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    database_pool_size: int = Field(
        default=10, ge=1, description="Connections each process keeps; the API lets this many requests use them."
    )
    database_pool_overflow: int = Field(default=5, ge=0, description="Extra connections a process may open.")
    api_wait_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How long a request waits for a database connection before it is answered 503 + Retry-After.",
    )
    api_max_connections: int = Field(
        default=2048, ge=1, description="Open HTTP connections the API serves at once; more are answered 503."
    )
    api_receive_buffer_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=64 * 1024,
        description="Request body an API connection reads ahead of the app before it stops reading; larger "
        "buffers receive uploads faster (64 KiB, uvicorn's own, received 0.7-0.8x of 4 MiB's rate in bench/).",
    )
    api_nice: int = Field(
        default=0,
        ge=0,
        le=19,
        description="CPU niceness of the API process; above 0, training on the same machine keeps more of the CPU "
        "while many clients poll (and the clients wait longer); 0 = the niceness it was started with.",
    )
    api_keepalive_seconds: int = Field(
        default=75,
        ge=1,
        description=(
            "How long an idle keep-alive connection stays open. Longer than clients' own idle expiry (httpx 5 s,"
            " load balancers about 60 s), so a client never reuses a connection the server is closing."
        ),
    )
    stream_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often the API reads a streamed job's new events, metrics and status (once per job, "
        "however many clients stream it).",
    )
    download_url_seconds: int = Field(
        default=300,
        ge=1,
        le=7 * 86400,
        description="How long the presigned URL of a `?redirect=true` checkpoint download stays valid (object store).",
    )
    max_upload_bytes: int = Field(default=2 * 1024**3, gt=0)
    upload_chunk_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description="An upload is hashed and written by a worker thread in batches of this many bytes (two in memory).",
    )
    max_labelled_set_bytes: int = Field(
        default=16 * 1024**2, gt=0, description="The largest labelled set (`POST /v1/labelled-sets`) accepted."
    )
    max_labelled_set_examples: int = Field(
        default=20_000, ge=4, description="The most examples a labelled set may hold (probes fit on CPU)."
    )
    # Base-model uploads (`POST /v1/models`): a Hugging Face directory as a tar or zip archive.
    model_max_bytes: int = Field(
        default=20 * 1024**3,
        gt=0,
        description="The most bytes a model archive may have, uploaded and once extracted (counted as written).",
    )
    model_max_files: int = Field(
        default=256, ge=1, description="The most entries (files and folders) an archive may hold."
    )
    archive_max_ratio: float = Field(
        default=100.0,
        gt=1,
        description="The most bytes decompression may produce per uploaded byte, for model archives and for gzip, "
        "zip and tar corpora (a decompression bomb stops there, while streaming).",
    )
    # Corpus uploads that decompress (`.txt.gz`, `.jsonl.gz`) or hold many files (`.zip`, `.tar`, `.tar.gz`).
    max_decompressed_bytes: int = Field(
        default=50 * 1024**3,
        gt=0,
        description="The most bytes a compressed corpus upload may decompress to, counted while streaming.",
    )
    archive_max_files: int = Field(
        default=100_000, ge=1, description="The most entries (files and folders) a corpus archive may hold."
    )
    archive_max_file_bytes: int = Field(
        default=10 * 1024**2,
        gt=0,
        description="The largest file of a corpus archive that becomes a document; larger ones are skipped and "
        "counted.",
    )
    validation_fraction: float = Field(default=0.1, gt=0.0, lt=0.5)

    torch_threads: int | None = Field(default=None, ge=1, description="torch threads in a training worker.")
    worker_devices: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Devices a gpu worker trains on; it claims only jobs with that many resources.devices or fewer. "
        "Default: the CUDA devices it sees, or 1 on the CPU.",
    )
    device_peak_flops: float | None = Field(
        default=None,
        gt=0,
        description="Peak FLOP/s the `mfu` metric is measured against, overriding selfsup/hardware.py's table "
        "(a CPU has no entry: set this to record `mfu` there).",
    )
    compile_auto_min_seconds: float = Field(
        default=300.0,
        gt=0,
        description="training.compile: auto compiles when the rest of a run, at its measured eager speed, would "
        "take at least this long.",
    )
    compile_backend: str = Field(
        default="inductor",
        min_length=1,
        description="The torch.compile backend of jobs that compile (training.compile); `aot_eager` traces and "
        "checks without generating code (for debugging, and for tests on slow machines).",
    )
    cpu_bf16_matmuls: bool | Literal["auto"] = Field(
        default="auto",
        description="`precision: auto` jobs on a CPU multiply fp32 tensors from bf16-rounded operands with fp32 "
        "accumulation (oneDNN's bf16 math mode, the CPU's TF32): true, false, or auto (where the CPU has AMX).",
    )
    trainer_keep_freed_memory: bool = Field(
        default=True, description="A training worker's malloc keeps freed memory (fewer page faults per step)."
    )
    lease_seconds: float = Field(default=30.0, gt=0, description="How long a trainer owns a job unheard.")
    control_interval_seconds: float = Field(
        default=1.0, gt=0, description="How often a trainer flushes metrics, renews its lease, reads cancel."
    )
    reconcile_interval_seconds: float = Field(default=10.0, gt=0)
    broker_visibility_timeout: int = Field(default=3600, gt=0)
    worker_cpu_concurrency: int = Field(default=1, ge=1)
    cpu_worker_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="CPU niceness of a worker that serves only the cpu queue (ingest, tokenization, curation): "
        "training on the same machine keeps its speed; 0 = the niceness it was started with.",
    )
    cpu_worker_threads: int | None = Field(
        default=None,
        ge=1,
        description="Cores a worker's corpus work runs on (the tokenizers' thread pool, curation's processes); "
        "default: every core, and under `selfsup up` the cores its trainer leaves (at least one).",
    )
    estimate_history_days: float = Field(
        default=30.0, gt=0, description="`POST /v1/jobs:estimate` bases its ETA on throughput recorded this recently."
    )
    curation_processes: int | None = Field(
        default=None, ge=1, description="Processes a dataset's curation runs its per-document rules in; all cores."
    )
    orphan_seconds: float = Field(
        default=3600.0, gt=0, description="Temporary blobs untouched this long (broken uploads) are removed."
    )
    webhook_allow_private_targets: bool = Field(
        default=False,
        description="Let webhooks target loopback, link-local and private addresses (tests, private networks); "
        "off, such URLs are refused when created and when sent (server-side request forgery).",
    )
    webhook_retry_base_seconds: float = Field(
        default=5.0, gt=0, description="The first retry's delay; each next one is 6 times longer, up to 4 hours."
    )
    webhook_retry_window_seconds: float = Field(
        default=86400.0, gt=0, description="A delivery not answered 2xx this long after its event is failed."
    )
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, description="How long one delivery attempt may take.")
    webhook_sweep_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often the workers look for webhook deliveries that are due."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines as readable text or as JSON objects, one a line (for log collectors)."
    )
    metrics_token: SecretStr | None = Field(
        default=None, description="When set, `GET /metrics` wants `Authorization: Bearer <this token>`."
    )
    # Hostile clients (issue 14): per-key rate limits, body limits, response headers, CORS, the API's docs.
    rate_limit_per_second: float = Field(
        default=50.0,
        ge=0,
        allow_inf_nan=False,
        description="Requests per second each API key may make on /v1, on average (the token bucket's refill); "
        "0 turns rate limiting off.",
    )
    rate_limit_burst: int = Field(
        default=200,
        ge=0,
        description="Requests an API key may make at once before the rate applies (the bucket's capacity); 0 turns "
        "rate limiting off.",
    )
    max_json_bytes: int = Field(
        default=1024 * 1024, gt=0, description="The largest JSON request body accepted (a job spec, a dataset)."
    )
    hsts_seconds: int = Field(
        default=0,
        ge=0,
        description="When above 0, every response carries `Strict-Transport-Security: max-age=<this>`. Off by "
        "default: the embedded default serves plain http; set it when a TLS proxy fronts the API.",
    )
    cors_origins: str = Field(
        default="",
        description="Comma-separated origins whose pages may call the API from a browser (`*` for any); empty "
        "(the default): no CORS headers, so only the API's own dashboard can.",
    )
    api_docs: bool = Field(
        default=True, description="Serve the OpenAPI document (`/openapi.json`) and its pages (`/docs`, `/redoc`)."
    )
    operator_tenant: str = Field(
        default="operator",
        min_length=1,
        max_length=200,
        description="The tenant whose `admin` keys operate the service (set other tenants' quotas).",
    )
    bootstrap_admin_key: SecretStr | None = Field(
        default=None,
        description="An API key the operator chose (at least 32 characters): on start the API stores it, hashed, as "
        "an `admin` key of SELFSUP_OPERATOR_TENANT unless it is stored already (a revoked one stays revoked).",
    )
    key_last_used_flush_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How often the API writes keys' `last_used_at` (one statement for all keys used meanwhile), "
        "instead of a database write per request.",
    )
    # Quotas (docs: README "Security"): each tenant's own limits are set with `selfsup quotas set` or
    # `PUT /v1/tenants/{name}/quotas`; these are the defaults for a tenant (or a limit) that has none. None: unlimited.
    quota_max_running_jobs: int | None = Field(default=None, ge=0, description="Default: a tenant's running jobs.")
    quota_max_queued_jobs: int | None = Field(default=None, ge=0, description="Default: a tenant's queued jobs.")
    quota_max_storage_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Default: bytes a tenant's corpora, datasets, checkpoints, models and labelled sets may hold.",
    )
    quota_max_upload_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Default: one upload's bytes for a tenant (never above SELFSUP_MAX_UPLOAD_BYTES).",
    )
    quota_max_job_tokens: int | None = Field(
        default=None, ge=1, description="Default: a job's max_steps × tokens_per_step."
    )
    fair_share_window_seconds: float = Field(
        default=86400.0, gt=0, description="How far back a tenant's device-seconds count when picking the next job."
    )
    fault_injection: str | None = Field(default=None, description="Tests only: see workers/faults.py.")

    @model_validator(mode="after")
    def _refuse_unsafe_production_defaults(self) -> Settings:
        bootstrap = self.bootstrap_admin_key.get_secret_value() if self.bootstrap_admin_key else None
        if bootstrap is not None and (len(bootstrap) < 32 or bootstrap != bootstrap.strip()):
            raise ValueError(
                "SELFSUP_BOOTSTRAP_ADMIN_KEY must be at least 32 characters without surrounding spaces "
                "(e.g. the output of `python -c 'import secrets; print(\"ss_\" + secrets.token_urlsafe(32))'`)"
            )
        if self.environment == "production":
            missing = [n for n in ("database_url", "redis_url") if getattr(self, n) is None]
            if missing:
                names = ", ".join(f"SELFSUP_{n.upper()}" for n in missing)
                raise ValueError(f"production needs {names}: the embedded SQLite and broker are for one machine")
            if self.fault_injection:
                raise ValueError("SELFSUP_FAULT_INJECTION crashes workers on purpose; it is for tests only")
        return self

    @property
    def rate_limited(self) -> bool:
        """Whether /v1 requests are rate limited per key (both rate settings above 0)."""
        return self.rate_limit_per_second > 0 and self.rate_limit_burst > 0

    @property
    def cors_origin_list(self) -> list[str]:
        """`SELFSUP_CORS_ORIGINS` as a list (empty: CORS off)."""
        return [origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def resolved_home(self) -> Path:
        """The data directory as an absolute path."""
        return self.home.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        """The database URL, SQLite in the data directory unless configured."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_home / 'selfsup.db'}"

    @property
    def resolved_curation_processes(self) -> int:
        """How many processes curation uses: the setting, else the worker's corpus cores, else every core."""
        return self.curation_processes or self.cpu_worker_threads or os.cpu_count() or 1

    @property
    def resolved_worker_devices(self) -> int:
        """How many devices this worker trains on: the setting, else the CUDA devices it sees, else 1 (the CPU)."""
        if self.worker_devices is not None:
            return self.worker_devices
        import torch  # only a training worker asks; the API never pays for torch

        return max(1, torch.cuda.device_count())

    @property
    def resolved_blob_dir(self) -> Path:
        """The blob store folder."""
        if self.blob_url is not None and self.blob_url.startswith("file://"):
            return Path(self.blob_url.removeprefix("file://")).expanduser().resolve()
        return (self.blob_dir or self.resolved_home / "blobs").expanduser().resolve()

    @property
    def s3_location(self) -> tuple[str, str] | None:
        """(bucket, key prefix) when blobs live in an object store (`SELFSUP_BLOB_URL=s3://…`), else None."""
        if self.blob_url is None or not self.blob_url.startswith("s3://"):
            return None
        bucket, _, prefix = self.blob_url.removeprefix("s3://").partition("/")
        return bucket, prefix.strip("/")

    @property
    def resolved_cache_dir(self) -> Path:
        """The folder of local copies of object-store blobs."""
        return (self.cache_dir or self.resolved_home / "cache").expanduser().resolve()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
