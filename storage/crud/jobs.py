"""Jobs: creation, every change of status (checked against `storage.status`), and the trainer's lease."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Update, func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from selfsup.spec import TrainingSpec
from storage.crud._sql import rowcount
from storage.crud.events import add_event
from storage.crud.paging import page
from storage.crud.quotas import count_jobs, lock_tenant
from storage.crud.webhooks import record_job_ending
from storage.status import (
    ACTIVE_JOB_STATUSES,
    FINISHED_JOB_STATUSES,
    JOB_ENDING_EVENTS,
    JobStatus,
    job_statuses_leading_to,
)
from storage.tables import (
    Corpus,
    Job,
    JobCorpus,
    Tenant,
    TenantQuota,
    utcnow,
)

# The event that records a job's final status.
_FINISH_EVENTS = {JobStatus.SUCCEEDED: "finished", JobStatus.FAILED: "failed", JobStatus.CANCELLED: "cancelled"}


class RequeueOutcome(StrEnum):
    """What `requeue_after_crash` did with a job whose trainer died or raised."""

    REQUEUED = "requeued"
    FAILED = "failed"
    SKIPPED = "skipped"  # the job was not running under the expected lease: someone else acted first


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
    dataset_id: str | None = None,
    base: dict[str, Any] | None = None,
    priority: str = "normal",
    devices: int = 1,
) -> Job:
    """Record a queued job, the corpora or dataset it reads and the base it starts from (`storage.bases`).

    Raises IntegrityError on an idempotency race."""
    job = Job(
        tenant_id=tenant.id,
        dataset_id=dataset_id,
        base=base,
        name=name,
        spec=spec,
        max_steps=max_steps,
        idempotency_key=idempotency_key,
        request_sha256=request_sha256,
        status=JobStatus.QUEUED,
        priority=priority,
        devices=devices,
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
    return rowcount(session, recorded) == 1


def list_jobs(
    *, session: Session, tenant: Tenant, status: str | None, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """A page of the tenant's jobs, newest first, optionally of one status."""
    filters: list[Any] = [Job.tenant_id == tenant.id]
    if status:
        filters.append(Job.status == status)
    return page(session, Job, filters, limit=limit, cursor=cursor)


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
    moved = rowcount(
        session,
        _move_job(job_id, status)
        .where(*conditions)
        .values(error=error, finished_at=utcnow(), lease_owner=None, lease_expires_at=None),
    )
    if moved != 1:
        return False
    _record_ending(session, job_id, status, message)
    session.flush()
    return True


def _record_ending(session: Session, job_id: str, status: JobStatus, message: str) -> None:
    """What every move to a final status writes with it: the job's event and its webhook deliveries."""
    add_event(session=session, job_id=job_id, type=_FINISH_EVENTS[status], message=message)
    record_job_ending(session=session, job_id=job_id, event_type=JOB_ENDING_EVENTS[status])


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


def request_cancel(*, session: Session, job: Job) -> str:
    """Cancel a queued or paused job now, or ask its trainer to stop; returns the status after the request."""
    now = utcnow()
    idle = _move_job(job.id, JobStatus.CANCELLED, among=frozenset({JobStatus.QUEUED, JobStatus.PAUSED}))
    if rowcount(session, idle.where(Job.lease_owner.is_(None)).values(finished_at=now, cancel_requested=True)):
        _record_ending(session, job.id, JobStatus.CANCELLED, f"cancelled while {job.status}")
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
    if rowcount(session, idle.where(Job.lease_owner.is_(None))):
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


def resume_paused(*, session: Session, job: Job, resources: dict[str, Any] | None = None) -> bool:
    """Queue a paused job again, on other `resources` (the spec's section) if given; False if it was not paused."""
    resume = _move_job(job.id, JobStatus.QUEUED, among=frozenset({JobStatus.PAUSED}))
    changes: dict[str, Any] = {"pause_requested": False}
    message = "queued again after a pause"
    if resources is not None:
        changes.update(spec={**job.spec, "resources": resources}, devices=int(resources["devices"]))
        if changes["devices"] != job.devices:
            message += f", on {changes['devices']} device(s) instead of {job.devices}"
    if not rowcount(session, resume.where(Job.lease_owner.is_(None)).values(**changes)):
        return False
    add_event(session=session, job_id=job.id, type="resume_requested", message=message)
    session.flush()
    session.refresh(job)
    return True


def mark_paused(*, session: Session, job_id: str, owner: str, step: int) -> bool:
    """The trainer saved a checkpoint and lets go of a job whose pause was requested."""
    done = rowcount(
        session,
        _move_job(job_id, JobStatus.PAUSED, among=frozenset({JobStatus.RUNNING}))
        .where(Job.lease_owner == owner)
        .values(pause_requested=False, lease_owner=None, lease_expires_at=None),
    )
    if done:
        add_event(session=session, job_id=job_id, type="paused", message=f"paused at step {step}; checkpoint saved")
    return bool(done)


def claim_job(*, session: Session, job_id: str, owner: str, lease_seconds: float) -> bool:
    """Take a queued job's lease; exactly one caller can win, whatever the broker delivers."""
    now = utcnow()
    return bool(
        rowcount(
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


# The first key of the claim order: a smaller rank is taken first.
PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}


def _waiting_to_train() -> Any:
    """Queued jobs whose data is prepared and that nobody holds or has cancelled: what a trainer may claim."""
    return (
        Job.status == JobStatus.QUEUED,
        Job.dataset_key.is_not(None),
        Job.lease_owner.is_(None),
        Job.cancel_requested.is_(False),
    )


def jobs_waiting_to_train_by_devices(*, session: Session) -> dict[int, str]:
    """For each `devices` count some queued job of that many devices waits with: the id of one a free trainer could
    claim now (to wake, after a run ends, a trainer of each size the waiting jobs need)."""
    rows = session.execute(select(Job.devices, func.min(Job.id)).where(*_waiting_to_train()).group_by(Job.devices))
    return {int(devices): str(job_id) for devices, job_id in rows}


def jobs_waiting_for_more_devices(*, session: Session, than: int) -> list[tuple[str, int]]:
    """The jobs waiting to train on more than `than` devices, and the devices each needs."""
    rows = session.execute(select(Job.id, Job.devices).where(*_waiting_to_train(), Job.devices > than))
    return [(str(job_id), int(devices)) for job_id, devices in rows]


def devices_if_waiting_to_train(*, session: Session, job_id: str) -> int | None:
    """The devices of the job if it still waits for a trainer to claim it, else None."""
    devices = session.scalar(select(Job.devices).where(Job.id == job_id, *_waiting_to_train()))
    return None if devices is None else int(devices)


def device_seconds_by_tenant(
    *, session: Session, tenant_ids: set[str], since: datetime, now: datetime
) -> dict[str, float]:
    """Seconds each tenant's jobs held a trainer's devices since `since`, times the devices each held: from a job's
    first start to its end (now while it runs; its last change while it waits to resume). A paused or crashed job's
    gap counts as used: an upper bound, and only for jobs that were started."""
    used = dict.fromkeys(tenant_ids, 0.0)
    rows = session.execute(
        select(Job.tenant_id, Job.status, Job.started_at, Job.finished_at, Job.updated_at, Job.devices).where(
            Job.tenant_id.in_(tenant_ids),
            Job.started_at.is_not(None),
            (Job.finished_at.is_(None)) | (Job.finished_at >= since),
        )
    )
    for tenant_id, status, started_at, finished_at, updated_at, devices in rows:
        if started_at is None:  # (filtered out above; for the type checker)
            continue
        end = now if status == JobStatus.RUNNING else (finished_at or updated_at)
        used[tenant_id] += max(0.0, (end - max(started_at, since)).total_seconds()) * devices
    return used


def claim_next_job(
    *,
    session: Session,
    owner: str,
    lease_seconds: float,
    fair_share_window_seconds: float,
    default_max_running_jobs: int | None,
    devices: int = 1,
) -> str | None:
    """Claim the job a free trainer should take next, whichever job woke it; its id, or None if none may run.

    Only jobs that fit the trainer's `devices` (`resources.devices`, the `devices` column) are candidates.

    The order: priority (high, normal, low), then the tenant's fair share (the fewest device-seconds in the
    last `fair_share_window_seconds` first), then age. A job whose tenant is at its `max_running_jobs` stays
    queued. Exactly one caller wins each job (`claim_job`'s conditional UPDATE); one that loses a race tries
    the next. The running limit is counted again under the tenant's lock (`lock_tenant`), so two trainers
    cannot both take a tenant's last running slot.
    """
    now = utcnow()
    waiting = session.execute(
        select(Job.id, Job.tenant_id, Job.priority, Job.created_at, TenantQuota.max_running_jobs)
        .outerjoin(TenantQuota, TenantQuota.tenant_id == Job.tenant_id)
        .where(*_waiting_to_train(), Job.devices <= devices)
    ).all()
    if not waiting:
        return None
    tenant_ids = {row.tenant_id for row in waiting}
    since = now - timedelta(seconds=fair_share_window_seconds)
    used = device_seconds_by_tenant(session=session, tenant_ids=tenant_ids, since=since, now=now)
    running = dict(
        session.execute(  # type: ignore[arg-type]
            select(Job.tenant_id, func.count())
            .where(Job.tenant_id.in_(tenant_ids), Job.status == JobStatus.RUNNING)
            .group_by(Job.tenant_id)
        ).all()
    )
    ordered = sorted(waiting, key=lambda r: (PRIORITY_RANK.get(r.priority, 1), used[r.tenant_id], r.created_at, r.id))
    for row in ordered:
        limit = row.max_running_jobs if row.max_running_jobs is not None else default_max_running_jobs
        if limit is not None:
            if running.get(row.tenant_id, 0) >= limit:
                continue
            lock_tenant(session=session, tenant_id=row.tenant_id)
            running[row.tenant_id] = count_jobs(session=session, tenant_id=row.tenant_id, status=JobStatus.RUNNING)
            if running[row.tenant_id] >= limit:
                continue
        if claim_job(session=session, job_id=row.id, owner=owner, lease_seconds=lease_seconds):
            return str(row.id)
    return None


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
        if not rowcount(session, requeue.values(**released, restarts=Job.restarts + 1)):
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
    if not rowcount(session, fail.values(**released, error=reason, finished_at=utcnow())):
        return RequeueOutcome.SKIPPED
    _record_ending(session, job.id, JobStatus.FAILED, f"failed: {reason}")
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


def extend_lease(*, session: Session, job_id: str, owner: str, lease_seconds: float) -> bool:
    """Extend the lease only (while a trainer downloads or uploads, between steps); False when it was lost."""
    extend = (
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.RUNNING)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return rowcount(session, extend) == 1


def requeue_job(*, session: Session, job_id: str, owner: str, message: str) -> bool:
    """Hand a running job back to the queue (its lease released) for another worker to resume."""
    release = _move_job(job_id, JobStatus.QUEUED, among=frozenset({JobStatus.RUNNING})).where(Job.lease_owner == owner)
    if rowcount(session, release.values(lease_owner=None, lease_expires_at=None)) != 1:
        return False
    add_event(session=session, job_id=job_id, type="released", message=message)
    return True
