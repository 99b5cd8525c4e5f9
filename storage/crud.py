"""Database access for the API and the workers: keyword-only functions that take the session.

Routes and tasks call these; nothing else writes SQL. Tenant scoping happens here, so a query
can never forget it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import Update, and_, delete, func, insert, or_, select, tuple_, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from selfsup.spec import TrainingSpec
from storage.status import (
    ACTIVE_JOB_STATUSES,
    FINISHED_JOB_STATUSES,
    CorpusStatus,
    JobStatus,
    corpus_statuses_leading_to,
    job_statuses_leading_to,
)
from storage.tables import (
    ApiKey,
    Checkpoint,
    Corpus,
    Event,
    Job,
    JobCorpus,
    Metric,
    Tenant,
    TokenizedDataset,
    utcnow,
)

Row = TypeVar("Row", Corpus, Job)

# The event that records a job's final status.
_FINISH_EVENTS = {JobStatus.SUCCEEDED: "finished", JobStatus.FAILED: "failed", JobStatus.CANCELLED: "cancelled"}


class RequeueOutcome(StrEnum):
    """What `requeue_after_crash` did with a job whose trainer died or raised."""

    REQUEUED = "requeued"
    FAILED = "failed"
    SKIPPED = "skipped"  # the job was not running under the expected lease: someone else acted first


def hash_api_key(key: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# --- tenants and keys -------------------------------------------------------------------------


def get_or_create_tenant(*, session: Session, name: str) -> Tenant:
    """The tenant called `name`, created if it does not exist."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_api_key(*, session: Session, tenant: Tenant) -> str:
    """A new API key for `tenant`; only its hash is stored, so this is the one time it is seen."""
    key = "ss_" + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_api_key(key), prefix=key[:10]))
    session.flush()
    return key


def tenant_for_key(*, session: Session, key: str) -> Tenant | None:
    """The tenant owning an unrevoked key, or None."""
    return session.scalar(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None))
    )


# --- paging -----------------------------------------------------------------------------------


def encode_cursor(row: Corpus | Job) -> str:
    """An opaque cursor pointing just after `row` in newest-first order."""
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor names; ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = json.loads(raw)
        return datetime.fromisoformat(created), str(row_id)
    except (ValueError, TypeError) as exc:
        raise ValueError("cursor is not valid: pass the next_cursor value of a previous page") from exc


def _page(
    session: Session, model: type[Row], filters: Sequence[Any], *, limit: int, cursor: str | None
) -> tuple[list[Row], str | None]:
    query = select(model).where(*filters)
    if cursor:
        created, row_id = decode_cursor(cursor)
        query = query.where(or_(model.created_at < created, and_(model.created_at == created, model.id < row_id)))
    rows = list(session.scalars(query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


# --- corpora ----------------------------------------------------------------------------------


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
    return _page(session, Corpus, [Corpus.tenant_id == tenant.id], limit=limit, cursor=cursor)


def corpus_in_use(*, session: Session, corpus_id: str) -> list[str]:
    """Ids of queued or running jobs that read the corpus."""
    return list(
        session.scalars(
            select(Job.id)
            .join(JobCorpus, JobCorpus.job_id == Job.id)
            .where(JobCorpus.corpus_id == corpus_id, Job.status.in_(ACTIVE_JOB_STATUSES))
        )
    )


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
    """Record a finished ingest; False if the corpus is gone or no longer processing."""
    return bool(
        _rowcount(
            session,
            _move_corpus(corpus_id, CorpusStatus.READY).values(
                documents=documents,
                characters=characters,
                train_documents=train_documents,
                validation_documents=validation_documents,
                ingest_report=ingest_report,
            ),
        )
    )


def fail_corpus(*, session: Session, corpus_id: str, reason: str) -> Corpus | None:
    """Mark a corpus's ingest failed and fail the queued jobs waiting on it; None if the corpus is gone."""
    corpus = get_corpus_by_id(session=session, corpus_id=corpus_id)
    if corpus is None:
        return None
    if _rowcount(session, _move_corpus(corpus_id, CorpusStatus.FAILED).values(error=reason)):
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


# --- jobs -------------------------------------------------------------------------------------


def request_fingerprint(body: Any) -> str:
    """A stable hash of a request body, to tell a repeated request from a different one."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def find_job_by_idempotency_key(*, session: Session, tenant: Tenant, key: str) -> Job | None:
    """The job an earlier request with this Idempotency-Key created, if any."""
    return session.scalar(select(Job).where(Job.tenant_id == tenant.id, Job.idempotency_key == key))


def create_job(
    *,
    session: Session,
    tenant: Tenant,
    spec: dict[str, Any],
    name: str,
    corpus_ids: Sequence[str],
    max_steps: int,
    idempotency_key: str | None,
    request_sha256: str | None,
) -> Job:
    """Record a queued job and the corpora it reads. Raises IntegrityError on an idempotency race."""
    job = Job(
        tenant_id=tenant.id,
        name=name,
        spec=spec,
        max_steps=max_steps,
        idempotency_key=idempotency_key,
        request_sha256=request_sha256,
        status=JobStatus.QUEUED,
    )
    session.add(job)
    session.flush()
    for position, corpus_id in enumerate(corpus_ids):
        session.add(JobCorpus(job_id=job.id, corpus_id=corpus_id, position=position))
    add_event(session=session, job_id=job.id, type="queued", message="job queued")
    session.flush()
    return job


def get_job(*, session: Session, tenant: Tenant, job_id: str) -> Job | None:
    """One of the tenant's jobs, or None."""
    return session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant.id))


def get_job_by_id(*, session: Session, job_id: str) -> Job | None:
    """A job whoever owns it (for workers, which act on ids the database gave them)."""
    return session.get(Job, job_id)


def stale_queued_jobs(*, session: Session, untouched_since: datetime) -> list[Job]:
    """Jobs still queued since `untouched_since`; each is touched, so it waits again before the next look."""
    jobs = list(session.scalars(select(Job).where(Job.status == JobStatus.QUEUED, Job.updated_at < untouched_since)))
    for job in jobs:
        job.updated_at = utcnow()
    return jobs


def record_job_dataset(*, session: Session, job_id: str, dataset_key: str) -> bool:
    """Name a queued job's tokenized data; False if it was named already (or the job moved on)."""
    recorded = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.dataset_key.is_(None))
        .values(dataset_key=dataset_key)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(session, recorded) == 1


def list_jobs(
    *, session: Session, tenant: Tenant, status: str | None, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """A page of the tenant's jobs, newest first, optionally of one status."""
    filters: list[Any] = [Job.tenant_id == tenant.id]
    if status:
        filters.append(Job.status == status)
    return _page(session, Job, filters, limit=limit, cursor=cursor)


def job_corpora(*, session: Session, job_id: str) -> list[Corpus]:
    """The corpora a job reads, in the order its spec lists them."""
    return list(
        session.scalars(
            select(Corpus)
            .join(JobCorpus, JobCorpus.corpus_id == Corpus.id)
            .where(JobCorpus.job_id == job_id)
            .order_by(JobCorpus.position)
        )
    )


def queued_jobs_reading(*, session: Session, corpus_id: str) -> list[Job]:
    """Queued jobs that wait on a corpus."""
    return list(
        session.scalars(
            select(Job)
            .join(JobCorpus, JobCorpus.job_id == Job.id)
            .where(JobCorpus.corpus_id == corpus_id, Job.status == JobStatus.QUEUED)
        )
    )


def finish_job(
    *,
    session: Session,
    job_id: str,
    status: JobStatus,
    message: str,
    error: str | None = None,
    owner: str | None = None,
) -> bool:
    """Move an active job to a final status (once; only by `owner` if given); False if that did not happen."""
    if status not in FINISHED_JOB_STATUSES:
        raise ValueError(f"{status} is not a final job status")
    conditions = [Job.lease_owner == owner] if owner is not None else []
    if status == JobStatus.SUCCEEDED:  # a job whose cancel was accepted never ends as succeeded
        conditions.append(Job.cancel_requested.is_(False))
    moved = _rowcount(
        session,
        _move_job(job_id, status)
        .where(*conditions)
        .values(error=error, finished_at=utcnow(), lease_owner=None, lease_expires_at=None),
    )
    if moved != 1:
        return False
    add_event(session=session, job_id=job_id, type=_FINISH_EVENTS[status], message=message)
    session.flush()
    return True


def fail_job(*, session: Session, job_id: str, reason: str, owner: str | None = None) -> bool:
    """Fail an active job with `reason` (only by `owner` if given); False if it had already ended or moved on."""
    return finish_job(
        session=session, job_id=job_id, status=JobStatus.FAILED, message=f"failed: {reason}", error=reason, owner=owner
    )


def _move_job(job_id: str, to: JobStatus, *, among: frozenset[JobStatus] | None = None) -> Update:
    """An UPDATE moving a job to `to`, only from a status its lifecycle allows (and, if given, in `among`)."""
    return (
        update(Job)
        .where(Job.id == job_id, Job.status.in_(job_statuses_leading_to(to, among=among)))
        .values(status=to)
        .execution_options(synchronize_session=False)
    )


def _rowcount(session: Session, statement: Any) -> int:
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    return result.rowcount


def request_cancel(*, session: Session, job: Job) -> str:
    """Cancel a queued or paused job now, or ask its trainer to stop; returns the status after the request."""
    now = utcnow()
    idle = _move_job(job.id, JobStatus.CANCELLED, among=frozenset({JobStatus.QUEUED, JobStatus.PAUSED}))
    if _rowcount(session, idle.where(Job.lease_owner.is_(None)).values(finished_at=now, cancel_requested=True)):
        add_event(session=session, job_id=job.id, type="cancelled", message=f"cancelled while {job.status}")
    else:
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status.in_(ACTIVE_JOB_STATUSES))
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
        add_event(session=session, job_id=job.id, type="cancel_requested", message="cancel requested")
    session.flush()
    session.refresh(job)
    return job.status


def request_pause(*, session: Session, job: Job) -> str:
    """Pause a queued job now, or ask its trainer to checkpoint and stop at the next step boundary."""
    idle = _move_job(job.id, JobStatus.PAUSED, among=frozenset({JobStatus.QUEUED}))
    if _rowcount(session, idle.where(Job.lease_owner.is_(None))):
        add_event(session=session, job_id=job.id, type="paused", message="paused before it started")
    else:
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.RUNNING)
            .values(pause_requested=True)
            .execution_options(synchronize_session=False)
        )
        add_event(session=session, job_id=job.id, type="pause_requested", message="pause requested")
    session.flush()
    session.refresh(job)
    return job.status


def resume_paused(*, session: Session, job: Job) -> bool:
    """Queue a paused job again; False if it was not paused."""
    resume = _move_job(job.id, JobStatus.QUEUED, among=frozenset({JobStatus.PAUSED}))
    if not _rowcount(session, resume.where(Job.lease_owner.is_(None)).values(pause_requested=False)):
        return False
    add_event(session=session, job_id=job.id, type="resume_requested", message="queued again after a pause")
    session.flush()
    session.refresh(job)
    return True


def mark_paused(*, session: Session, job_id: str, owner: str, step: int) -> bool:
    """The trainer saved a checkpoint and lets go of a job whose pause was requested."""
    done = _rowcount(
        session,
        _move_job(job_id, JobStatus.PAUSED, among=frozenset({JobStatus.RUNNING}))
        .where(Job.lease_owner == owner)
        .values(pause_requested=False, lease_owner=None, lease_expires_at=None),
    )
    if done:
        add_event(session=session, job_id=job_id, type="paused", message=f"paused at step {step}; checkpoint saved")
    return bool(done)


# --- leases -----------------------------------------------------------------------------------


def claim_job(*, session: Session, job_id: str, owner: str, lease_seconds: float) -> bool:
    """Take a queued job's lease; exactly one caller can win, whatever the broker delivers."""
    now = utcnow()
    return bool(
        _rowcount(
            session,
            _move_job(job_id, JobStatus.RUNNING, among=frozenset({JobStatus.QUEUED}))
            .where(Job.lease_owner.is_(None), Job.cancel_requested.is_(False))
            .values(
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, now),
            ),
        )
    )


def requeue_after_crash(*, session: Session, job: Job, owner: str | None, error: str) -> RequeueOutcome:
    """A trainer died or raised: queue the job to resume, or fail it once `max_restarts` is spent.

    `owner` guards against acting on a job someone else holds now (None: the lease is known to be dead).
    """
    max_restarts = _max_restarts(job)
    held = Job.lease_owner == owner if owner is not None else Job.lease_owner == job.lease_owner
    running = frozenset({JobStatus.RUNNING})
    released = {"lease_owner": None, "lease_expires_at": None, "last_error": error}
    if job.restarts < max_restarts:
        requeue = _move_job(job.id, JobStatus.QUEUED, among=running).where(held)
        if not _rowcount(session, requeue.values(**released, restarts=Job.restarts + 1)):
            return RequeueOutcome.SKIPPED
        add_event(
            session=session,
            job_id=job.id,
            type="crashed",
            message=f"{error}; resuming (restart {job.restarts + 1} of {max_restarts})",
        )
        return RequeueOutcome.REQUEUED
    reason = f"gave up after {max_restarts} restarts; last error: {error}"
    fail = _move_job(job.id, JobStatus.FAILED, among=running).where(held)
    if not _rowcount(session, fail.values(**released, error=reason, finished_at=utcnow())):
        return RequeueOutcome.SKIPPED
    add_event(session=session, job_id=job.id, type=_FINISH_EVENTS[JobStatus.FAILED], message=f"failed: {reason}")
    return RequeueOutcome.FAILED


def _max_restarts(job: Job) -> int:
    """The job's `training.max_restarts`; a spec stored before that field existed gets the spec's default."""
    default = TrainingSpec.model_fields["max_restarts"].default
    return int(job.spec.get("training", {}).get("max_restarts", default))


def lock_job_lease(*, session: Session, job_id: str, owner: str) -> bool:
    """Lock the job row for this transaction and tell whether `owner` still holds its lease."""
    holder = session.scalar(select(Job.lease_owner).where(Job.id == job_id).with_for_update())
    return holder == owner


def expired_leases(*, session: Session) -> list[Job]:
    """Running jobs whose trainer stopped renewing its lease."""
    return list(session.scalars(select(Job).where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < utcnow())))


def running_jobs_of(*, session: Session, owner_prefix: str) -> list[Job]:
    """Running jobs whose lease owner starts with `owner_prefix` (one host's workers)."""
    running = select(Job).where(Job.status == JobStatus.RUNNING, Job.lease_owner.startswith(owner_prefix))
    return list(session.scalars(running))


def renew_lease(
    *,
    session: Session,
    job_id: str,
    owner: str,
    lease_seconds: float,
    step: int,
    tokens_seen: int,
    latest_metrics: dict[str, float],
) -> Job | None:
    """Extend the lease and publish progress; None when the lease was lost to another worker."""
    now = utcnow()
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.RUNNING)
        .values(
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            step=step,
            tokens_seen=tokens_seen,
            latest_metrics=latest_metrics,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def requeue_job(*, session: Session, job_id: str, owner: str, message: str) -> bool:
    """Hand a running job back to the queue (its lease released) for another worker to resume."""
    release = _move_job(job_id, JobStatus.QUEUED, among=frozenset({JobStatus.RUNNING})).where(Job.lease_owner == owner)
    if _rowcount(session, release.values(lease_owner=None, lease_expires_at=None)) != 1:
        return False
    add_event(session=session, job_id=job_id, type="released", message=message)
    return True


# --- events and metrics -----------------------------------------------------------------------


def add_event(*, session: Session, job_id: str, type: str, message: str) -> None:
    """Append an event to a job's history."""
    session.add(Event(job_id=job_id, type=type, message=message))


def list_events(*, session: Session, job_id: str, after_id: int | None = None) -> list[Event]:
    """A job's events, oldest first."""
    query = select(Event).where(Event.job_id == job_id)
    if after_id is not None:
        query = query.where(Event.id > after_id)
    return list(session.scalars(query.order_by(Event.id)))


def write_metrics(*, session: Session, job_id: str, rows: Sequence[tuple[int, str, float, datetime]]) -> None:
    """Store a batch of (step, name, value, time); a value for an existing (step, name) replaces it."""
    if not rows:
        return
    latest: dict[tuple[int, str], tuple[float, datetime]] = {}
    for step, name, value, time in rows:
        latest[(step, name)] = (value, time)
    session.execute(delete(Metric).where(Metric.job_id == job_id, tuple_(Metric.step, Metric.name).in_(list(latest))))
    session.execute(
        insert(Metric),
        [
            {"job_id": job_id, "step": step, "name": name, "value": value, "time": time}
            for (step, name), (value, time) in latest.items()
        ],
    )


def delete_metrics_after(*, session: Session, job_id: str, step: int) -> None:
    """Forget metrics past `step` (a resumed job replays those steps)."""
    session.execute(delete(Metric).where(Metric.job_id == job_id, Metric.step > step))


def list_metrics(
    *, session: Session, job_id: str, name: str | None, after_step: int | None, limit: int
) -> list[Metric]:
    """A job's metrics in step order."""
    query = select(Metric).where(Metric.job_id == job_id)
    if name:
        query = query.where(Metric.name == name)
    if after_step is not None:
        query = query.where(Metric.step > after_step)
    return list(session.scalars(query.order_by(Metric.step, Metric.name).limit(limit)))


# --- checkpoints ------------------------------------------------------------------------------


def next_checkpoint_version(*, session: Session, job_id: str) -> int:
    """The version the job's next checkpoint gets."""
    current = session.scalar(select(func.max(Checkpoint.version)).where(Checkpoint.job_id == job_id))
    return (current or 0) + 1


def delete_checkpoint(*, session: Session, checkpoint_id: str) -> None:
    """Forget a checkpoint (its files are removed by the caller)."""
    session.execute(delete(Checkpoint).where(Checkpoint.id == checkpoint_id))


def add_checkpoint(*, session: Session, checkpoint: Checkpoint) -> Checkpoint:
    """Record a checkpoint whose files are complete."""
    session.add(checkpoint)
    session.flush()
    return checkpoint


def list_checkpoints(*, session: Session, job_id: str) -> list[Checkpoint]:
    """A job's checkpoints, oldest first."""
    return list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.version)))


def get_checkpoint(*, session: Session, tenant: Tenant, checkpoint_id: str) -> Checkpoint | None:
    """One of the tenant's checkpoints, or None."""
    return session.scalar(
        select(Checkpoint)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Checkpoint.id == checkpoint_id, Job.tenant_id == tenant.id)
    )


def checkpoint_aliases(checkpoints: Sequence[Checkpoint]) -> dict[str, list[str]]:
    """`latest`, `final` and `best` (lowest val_loss) for a job's checkpoints, by checkpoint id."""
    aliases: dict[str, list[str]] = {c.id: [] for c in checkpoints}
    if not checkpoints:
        return aliases
    aliases[max(checkpoints, key=lambda c: c.version).id].append("latest")
    for c in checkpoints:
        if c.is_final:
            aliases[c.id].append("final")
    scored = [c for c in checkpoints if c.val_loss is not None]
    if scored:
        aliases[min(scored, key=lambda c: (c.val_loss, -c.version)).id].append("best")
    return aliases


def prunable_checkpoints(*, checkpoints: Sequence[Checkpoint], keep_last: int) -> list[Checkpoint]:
    """Checkpoints beyond the newest `keep_last`, never `best` or `final`."""
    aliases = checkpoint_aliases(checkpoints)
    ordered = sorted(checkpoints, key=lambda c: c.version)
    old = ordered[:-keep_last] if len(ordered) > keep_last else []
    return [c for c in old if not ({"best", "final"} & set(aliases[c.id]))]


# --- tokenized datasets -----------------------------------------------------------------------


def get_dataset(*, session: Session, key: str) -> TokenizedDataset | None:
    """A stored tokenization, if this (corpora, tokenizer) pair was tokenized before."""
    return session.get(TokenizedDataset, key)


def add_dataset(*, session: Session, dataset: TokenizedDataset) -> TokenizedDataset:
    """Record a tokenization; if another worker recorded the same key first, return theirs."""
    try:
        with session.begin_nested():
            session.add(dataset)
        return dataset
    except IntegrityError:
        existing = session.get(TokenizedDataset, dataset.key)
        assert existing is not None
        return existing
