"""What `POST /v1/jobs:estimate` reads: the vocabulary a spec's data got, and the throughput recent jobs reached."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.status import JobStatus
from storage.tables import Job, Metric, Tenant, TokenizedDataset

# How many of the tenant's recent tokenized jobs to look through for one with the same data and tokenizer.
_VOCABULARY_LOOKBACK = 200


def tokenized_vocab_size(
    *,
    session: Session,
    tenant: Tenant,
    corpus_ids: list[str] | None,
    dataset_id: str | None,
    tokenizer: dict[str, Any],
) -> int | None:
    """The vocabulary size of a dataset already tokenized for the same corpora (or curated dataset) and
    tokenizer by one of the tenant's jobs, or None when none has been."""
    rows = session.execute(
        select(Job.spec, TokenizedDataset.vocab_size)
        .join(TokenizedDataset, TokenizedDataset.key == Job.dataset_key)
        .where(Job.tenant_id == tenant.id)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(_VOCABULARY_LOOKBACK)
    )
    for spec, vocab_size in rows:
        # Corpora are immutable, so the same ids and the same tokenizer spec mean the same tokens.
        same_data = spec.get("corpus_ids") == corpus_ids and spec.get("dataset_id") == dataset_id
        if same_data and spec.get("tokenizer") == tokenizer:
            return int(vocab_size)
    return None


@dataclass(frozen=True)
class RecordedThroughput:
    """One of the tenant's jobs that recorded training throughput: its spec, vocabulary and tokens/s windows."""

    job_id: str
    spec: dict[str, Any]
    vocab_size: int | None  # None when its tokenized dataset is no longer recorded
    tokens_per_second: list[float]


def recent_throughput(*, session: Session, tenant: Tenant, since: datetime, limit: int) -> list[RecordedThroughput]:
    """The tenant's running or succeeded jobs with `tokens_per_second` recorded since `since`, newest first."""
    recent = (
        select(Job.id, Job.spec, TokenizedDataset.vocab_size)
        .outerjoin(TokenizedDataset, TokenizedDataset.key == Job.dataset_key)
        .where(
            Job.tenant_id == tenant.id,
            Job.status.in_((JobStatus.RUNNING, JobStatus.SUCCEEDED)),
            Job.id.in_(
                select(Metric.job_id).where(Metric.name == "tokens_per_second", Metric.time >= since, Metric.value > 0)
            ),
        )
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit)
    )
    jobs = {job_id: (spec, vocab_size) for job_id, spec, vocab_size in session.execute(recent)}
    if not jobs:
        return []
    windows: dict[str, list[float]] = defaultdict(list)
    for job_id, value in session.execute(
        select(Metric.job_id, Metric.value)
        .where(
            Metric.job_id.in_(list(jobs)),
            Metric.name == "tokens_per_second",
            Metric.time >= since,
            Metric.value > 0,
        )
        .order_by(Metric.job_id, Metric.step)
    ):
        windows[job_id].append(float(value))
    return [
        RecordedThroughput(job_id=job_id, spec=spec, vocab_size=vocab_size, tokens_per_second=windows[job_id])
        for job_id, (spec, vocab_size) in jobs.items()
    ]
