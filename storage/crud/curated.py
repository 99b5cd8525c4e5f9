"""Curated datasets (`/v1/datasets`): requests, curation outcomes, and the jobs that wait on them.

Not to be confused with `storage.crud.datasets`, which records tokenized arrays (one per corpora or
curation, and tokenizer).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Update, func, select, update
from sqlalchemy.orm import Session

from selfsup.curation_spec import DatasetCreate
from storage.crud._sql import rowcount
from storage.crud.jobs import fail_job
from storage.crud.paging import page
from storage.status import ACTIVE_JOB_STATUSES, DatasetStatus, JobStatus, dataset_statuses_leading_to
from storage.tables import Corpus, Dataset, Job, Tenant, utcnow


def curation_key(
    *,
    source_sha256s: Sequence[str],
    weights: Sequence[float],
    curation: dict[str, Any] | None,
    evaluation_sha256s: Sequence[str],
) -> str:
    """What a curation's kept text depends on: the sources' contents in order, their weights, the rules and
    the evaluation corpora's contents (sorted: their order does not matter)."""
    payload = {
        "sources": list(source_sha256s),
        "weights": [round(w, 12) for w in weights],
        "curation": curation,
        "decontaminate_against": sorted(evaluation_sha256s),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def create_curated_dataset(
    *,
    session: Session,
    tenant: Tenant,
    request: DatasetCreate,
    sources: Sequence[Corpus],
    evaluation: Sequence[Corpus],
) -> Dataset:
    """Record a dataset to curate from the tenant's `sources` (in request order) and `evaluation` corpora."""
    shares = request.mixture_weights()
    source_corpora = [
        {"corpus_id": c.id, "name": c.name, "sha256": c.sha256, "weight": s.weight, "share": shares[c.id]}
        for c, s in zip(sources, request.sources, strict=True)
    ]
    evaluation_corpora = [{"corpus_id": c.id, "name": c.name, "sha256": c.sha256} for c in evaluation]
    canonical = request.canonical()
    dataset = Dataset(
        tenant_id=tenant.id,
        name=request.name or "+".join(c.name for c in sources)[:200],
        status=DatasetStatus.PROCESSING,
        request=canonical,
        source_corpora=source_corpora,
        evaluation_corpora=evaluation_corpora,
        curation_key=curation_key(
            source_sha256s=[c.sha256 for c in sources],
            weights=[shares[c.id] for c in sources],
            curation=canonical["curation"],
            evaluation_sha256s=[c.sha256 for c in evaluation],
        ),
    )
    session.add(dataset)
    session.flush()
    return dataset


def get_curated_dataset(*, session: Session, tenant: Tenant, dataset_id: str) -> Dataset | None:
    """One of the tenant's curated datasets, or None (another tenant's id looks the same as a missing one)."""
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant.id))


def get_curated_dataset_by_id(*, session: Session, dataset_id: str) -> Dataset | None:
    """A curated dataset whoever owns it (for workers, which act on ids the database gave them)."""
    return session.get(Dataset, dataset_id)


def list_curated_datasets(
    *, session: Session, tenant: Tenant, limit: int, cursor: str | None
) -> tuple[list[Dataset], str | None]:
    """A page of the tenant's curated datasets, newest first."""
    return page(session, Dataset, [Dataset.tenant_id == tenant.id], limit=limit, cursor=cursor)


def corpora_by_ids(*, session: Session, corpus_ids: Sequence[str]) -> dict[str, Corpus]:
    """The corpora of these ids that still exist, by id (for workers)."""
    if not corpus_ids:
        return {}
    return {c.id: c for c in session.scalars(select(Corpus).where(Corpus.id.in_(list(corpus_ids))))}


def curated_dataset_in_use(*, session: Session, dataset_id: str) -> list[str]:
    """Ids of queued, running or paused jobs that train on the dataset."""
    return list(
        session.scalars(select(Job.id).where(Job.dataset_id == dataset_id, Job.status.in_(ACTIVE_JOB_STATUSES)))
    )


def queued_jobs_on_dataset(*, session: Session, dataset_id: str) -> list[Job]:
    """Queued jobs that wait on a curated dataset."""
    return list(session.scalars(select(Job).where(Job.dataset_id == dataset_id, Job.status == JobStatus.QUEUED)))


def processing_curated_datasets(
    *, session: Session, tenant_id: str | None = None, curation_key: str | None = None
) -> list[str]:
    """Ids of datasets still processing, of one tenant and/or one curation key (those a change may unblock)."""
    query = select(Dataset.id).where(Dataset.status == DatasetStatus.PROCESSING)
    if tenant_id is not None:
        query = query.where(Dataset.tenant_id == tenant_id)
    if curation_key is not None:
        query = query.where(Dataset.curation_key == curation_key)
    return list(session.scalars(query.order_by(Dataset.created_at, Dataset.id)))


def earlier_processing_dataset(*, session: Session, dataset: Dataset) -> str | None:
    """The id of an older dataset still processing with the same curation key (it curates for both), if any."""
    return session.scalar(
        select(Dataset.id)
        .where(
            Dataset.curation_key == dataset.curation_key,
            Dataset.status == DatasetStatus.PROCESSING,
            Dataset.id != dataset.id,
            (Dataset.created_at < dataset.created_at)
            | ((Dataset.created_at == dataset.created_at) & (Dataset.id < dataset.id)),
        )
        .order_by(Dataset.created_at, Dataset.id)
        .limit(1)
    )


def datasets_sharing_curation(*, session: Session, curation_key: str) -> int:
    """How many datasets use the kept text of this curation key."""
    sharing = select(func.count()).select_from(Dataset).where(Dataset.curation_key == curation_key)
    return int(session.scalar(sharing) or 0)


def touch_curated_dataset(*, session: Session, dataset_id: str) -> None:
    """Say that a curation is alive, so the reconciler does not wake a second one."""
    session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.status == DatasetStatus.PROCESSING)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def stale_processing_curated_datasets(*, session: Session, untouched_since: datetime) -> list[str]:
    """Ids of datasets still processing since `untouched_since`; each is touched, so it waits again."""
    stale = select(Dataset).where(Dataset.status == DatasetStatus.PROCESSING, Dataset.updated_at < untouched_since)
    datasets = list(session.scalars(stale))
    for dataset in datasets:
        dataset.updated_at = utcnow()
    return [dataset.id for dataset in datasets]


def mark_curated_dataset_ready(*, session: Session, dataset_id: str, totals: dict[str, Any]) -> bool:
    """Record a finished (or reused) curation and its report's totals; False if not processing any more."""
    moved = _move_dataset(dataset_id, DatasetStatus.READY).values(totals=totals, finished_at=utcnow())
    return bool(rowcount(session, moved))


def fail_curated_dataset(*, session: Session, dataset_id: str, reason: str) -> Dataset | None:
    """Mark a curation failed and fail the queued jobs waiting on it; None if the dataset is gone."""
    dataset = get_curated_dataset_by_id(session=session, dataset_id=dataset_id)
    if dataset is None:
        return None
    if rowcount(session, _move_dataset(dataset_id, DatasetStatus.FAILED).values(error=reason, finished_at=utcnow())):
        for job in queued_jobs_on_dataset(session=session, dataset_id=dataset_id):
            fail_job(session=session, job_id=job.id, reason=f"dataset {dataset.name} ({dataset_id}) failed: {reason}")
    return dataset


def _move_dataset(dataset_id: str, to: DatasetStatus) -> Update:
    """An UPDATE moving a dataset to `to`, only from a status its lifecycle allows."""
    return (
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.status.in_(dataset_statuses_leading_to(to)))
        .values(status=to)
        .execution_options(synchronize_session=False)
    )


def delete_curated_dataset(*, session: Session, dataset: Dataset) -> bool:
    """Remove a dataset row; True when no other dataset shares its curation (the caller removes the blobs)."""
    session.delete(dataset)
    session.flush()
    return datasets_sharing_curation(session=session, curation_key=dataset.curation_key) == 0
