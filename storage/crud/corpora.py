"""Corpora: upload records, ingest outcomes, and what reads them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Update, select, update
from sqlalchemy.orm import Session

from storage.crud._sql import rowcount
from storage.crud.jobs import fail_job, queued_jobs_reading
from storage.crud.paging import page
from storage.crud.webhooks import record_corpus_outcome
from storage.status import (
    ACTIVE_JOB_STATUSES,
    CorpusStatus,
    WebhookEventType,
    corpus_statuses_leading_to,
)
from storage.tables import (
    Corpus,
    Job,
    JobCorpus,
    Tenant,
    utcnow,
)


def create_corpus(
    *,
    session: Session,
    tenant: Tenant,
    corpus_id: str,
    name: str,
    fmt: str,
    compression: str | None,
    size_bytes: int,
    sha256: str,
) -> Corpus:
    """Record an upload whose bytes are already stored; ingest will fill in the rest."""
    corpus = Corpus(
        id=corpus_id,
        tenant_id=tenant.id,
        name=name,
        format=fmt,
        compression=compression,
        size_bytes=size_bytes,
        sha256=sha256,
        status=CorpusStatus.PROCESSING,
    )
    session.add(corpus)
    session.flush()
    return corpus


def get_corpus(*, session: Session, tenant: Tenant, corpus_id: str) -> Corpus | None:
    """One of the tenant's corpora, or None (another tenant's id looks the same as a missing one)."""
    return session.scalar(select(Corpus).where(Corpus.id == corpus_id, Corpus.tenant_id == tenant.id))


def get_corpus_by_id(*, session: Session, corpus_id: str) -> Corpus | None:
    """A corpus whoever owns it (for workers, which act on ids the database gave them)."""
    return session.get(Corpus, corpus_id)


def list_corpora(
    *, session: Session, tenant: Tenant, limit: int, cursor: str | None
) -> tuple[list[Corpus], str | None]:
    """A page of the tenant's corpora, newest first."""
    return page(session, Corpus, [Corpus.tenant_id == tenant.id], limit=limit, cursor=cursor)


def corpus_in_use(*, session: Session, corpus_id: str) -> list[str]:
    """Ids of queued or running jobs that read the corpus, to train on or as a held-out corpus."""
    training = list(
        session.scalars(
            select(Job.id)
            .join(JobCorpus, JobCorpus.job_id == Job.id)
            .where(JobCorpus.corpus_id == corpus_id, Job.status.in_(ACTIVE_JOB_STATUSES))
        )
    )
    # Held-out corpora live only in the spec; a tenant's active jobs are few, so they are read here rather
    # than with JSON operators that differ between SQLite and PostgreSQL.
    active = session.scalars(
        select(Job)
        .join(Corpus, Corpus.tenant_id == Job.tenant_id)
        .where(Corpus.id == corpus_id, Job.status.in_(ACTIVE_JOB_STATUSES))
    )
    heldout = [j.id for j in active if corpus_id in (j.spec.get("evaluation") or {}).get("corpus_ids", [])]
    return training + [job_id for job_id in heldout if job_id not in training]


def mark_corpus_ready(
    *,
    session: Session,
    corpus_id: str,
    documents: int,
    characters: int,
    train_documents: int,
    validation_documents: int,
    ingest_report: dict[str, Any],
) -> bool:
    """Record a finished ingest (and its `corpus.ready` webhooks); False if the corpus is gone or no longer
    processing."""
    moved = rowcount(
        session,
        _move_corpus(corpus_id, CorpusStatus.READY).values(
            documents=documents,
            characters=characters,
            train_documents=train_documents,
            validation_documents=validation_documents,
            ingest_report=ingest_report,
        ),
    )
    if moved:
        record_corpus_outcome(session=session, corpus_id=corpus_id, event_type=WebhookEventType.CORPUS_READY)
    return bool(moved)


def fail_corpus(*, session: Session, corpus_id: str, reason: str) -> Corpus | None:
    """Mark a corpus's ingest failed (with its `corpus.failed` webhooks) and fail the queued jobs waiting on it;
    None if the corpus is gone."""
    corpus = get_corpus_by_id(session=session, corpus_id=corpus_id)
    if corpus is None:
        return None
    if rowcount(session, _move_corpus(corpus_id, CorpusStatus.FAILED).values(error=reason)):
        record_corpus_outcome(session=session, corpus_id=corpus_id, event_type=WebhookEventType.CORPUS_FAILED)
        for job in queued_jobs_reading(session=session, corpus_id=corpus_id):
            fail_job(session=session, job_id=job.id, reason=f"corpus {corpus.name} ({corpus_id}) failed: {reason}")
    return corpus


def stale_processing_corpora(*, session: Session, untouched_since: datetime) -> list[str]:
    """Ids of corpora still processing since `untouched_since`; each is touched, so it waits again."""
    stale = select(Corpus).where(Corpus.status == CorpusStatus.PROCESSING, Corpus.updated_at < untouched_since)
    corpora = list(session.scalars(stale))
    for corpus in corpora:
        corpus.updated_at = utcnow()
    return [corpus.id for corpus in corpora]


def _move_corpus(corpus_id: str, to: CorpusStatus) -> Update:
    """An UPDATE moving a corpus to `to`, only from a status its lifecycle allows."""
    return (
        update(Corpus)
        .where(Corpus.id == corpus_id, Corpus.status.in_(corpus_statuses_leading_to(to)))
        .values(status=to)
        .execution_options(synchronize_session=False)
    )


def delete_corpus(*, session: Session, corpus: Corpus) -> None:
    """Remove a corpus row (its blobs are removed by the caller)."""
    session.delete(corpus)
    session.flush()
