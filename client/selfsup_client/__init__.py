"""Python SDK of the selfsup pretraining service: `Client` (sync) and `AsyncClient` (asyncio).

from selfsup_client import Client

with Client() as client:  # SELFSUP_URL and SELFSUP_API_KEY, or Client(url, api_key)
    corpus = client.corpora.upload("tinyshakespeare.txt", wait=True)
    job = client.jobs.create({"corpus_ids": [corpus.id], "objective": {"type": "causal_lm"}})
    job = client.jobs.wait(job.id, progress=True)

Probes (a linear classifier on a checkpoint's frozen features): `client.labelled_sets.upload("plays.jsonl")`,
`probes` in the job spec or `client.checkpoints.probe(checkpoint_id, labelled_set_id, name=...)`, then
`client.jobs.probes(job_id)`.
"""

from selfsup_client._async import AsyncCheckpoints, AsyncClient, AsyncCorpora, AsyncJobs, AsyncLabelledSets
from selfsup_client._base import __version__
from selfsup_client._sync import Checkpoints, Client, Corpora, Jobs, LabelledSets
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
    LabelledSet,
    MetricPoint,
    ProbeRun,
    StreamMessage,
)

__all__ = [
    "APIError",
    "AsyncCheckpoints",
    "AsyncClient",
    "AsyncCorpora",
    "AsyncJobs",
    "AsyncLabelledSets",
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
    "LabelledSet",
    "LabelledSets",
    "MetricPoint",
    "NotFound",
    "PermissionDenied",
    "PayloadTooLarge",
    "ProbeRun",
    "RateLimited",
    "SelfsupError",
    "ServerError",
    "ServiceUnavailable",
    "StreamMessage",
    "UnsupportedMediaType",
    "__version__",
]
