"""Python SDK of the selfsup pretraining service: `Client` (sync) and `AsyncClient` (asyncio).

from selfsup_client import Client

with Client() as client:  # SELFSUP_URL and SELFSUP_API_KEY, or Client(url, api_key)
    corpus = client.corpora.upload("tinyshakespeare.txt", wait=True)
    job = client.jobs.create({"corpus_ids": [corpus.id], "objective": {"type": "causal_lm"}})
    job = client.jobs.wait(job.id, progress=True)
"""

from selfsup_client._async import AsyncCheckpoints, AsyncClient, AsyncCorpora, AsyncJobs
from selfsup_client._base import __version__
from selfsup_client._sync import Checkpoints, Client, Corpora, Jobs
from selfsup_client.errors import (
    APIError,
    AuthenticationError,
    BadRequest,
    ChecksumMismatch,
    Conflict,
    ConnectionFailed,
    DownloadError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    SelfsupError,
    ServerError,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from selfsup_client.models import (
    Checkpoint,
    CheckpointFile,
    Corpus,
    EstimateBasis,
    Event,
    Job,
    JobEstimate,
    MetricPoint,
    StreamMessage,
)

__all__ = [
    "APIError",
    "AsyncCheckpoints",
    "AsyncClient",
    "AsyncCorpora",
    "AsyncJobs",
    "AuthenticationError",
    "BadRequest",
    "Checkpoint",
    "CheckpointFile",
    "Checkpoints",
    "ChecksumMismatch",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Corpora",
    "Corpus",
    "DownloadError",
    "EstimateBasis",
    "Event",
    "InvalidRequest",
    "Job",
    "JobEstimate",
    "Jobs",
    "MetricPoint",
    "NotFound",
    "PermissionDenied",
    "PayloadTooLarge",
    "RateLimited",
    "SelfsupError",
    "ServerError",
    "ServiceUnavailable",
    "StreamMessage",
    "UnsupportedMediaType",
    "__version__",
]
