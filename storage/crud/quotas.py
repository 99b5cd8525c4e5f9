"""Tenant quotas: the limits an operator sets, what a tenant uses against them, and the lock that makes a
check-then-insert safe.

Race safety: a request that would add to a counted use (a job, an upload's row) first takes `lock_tenant`,
an UPDATE of the tenant's row. On PostgreSQL that is a row lock held to the end of the transaction, so two
requests of one tenant count and insert one after the other (other tenants do not wait). On SQLite the
UPDATE takes the database's one write lock (pysqlite opens the transaction at the first write, so nothing
was read from an older snapshot before it): writers are serialized, and the count the request makes after
it is the latest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from selfsup.settings import Settings
from storage.status import JobStatus
from storage.tables import Checkpoint, Corpus, Job, LabelledSet, Model, Tenant, TenantQuota

# The numeric quotas, in the order `GET /v1/usage` and `selfsup quotas show` list them.
QUOTA_LIMITS = ("max_running_jobs", "max_queued_jobs", "max_storage_bytes", "max_upload_bytes", "max_job_tokens")


@dataclass(frozen=True)
class TenantLimits:
    """A tenant's effective limits: its own where set, else the service-wide default; None means unlimited."""

    max_running_jobs: int | None
    max_queued_jobs: int | None
    max_storage_bytes: int | None
    max_upload_bytes: int | None
    max_job_tokens: int | None
    allow_high_priority: bool


def get_quota(*, session: Session, tenant_id: str) -> TenantQuota | None:
    """The tenant's own quota row, if an operator set one."""
    return session.get(TenantQuota, tenant_id)


def tenant_limits(*, session: Session, tenant_id: str, settings: Settings) -> TenantLimits:
    """The limits that apply to the tenant now."""
    row = get_quota(session=session, tenant_id=tenant_id)
    values: dict[str, Any] = {}
    for name in QUOTA_LIMITS:
        own = getattr(row, name) if row is not None else None
        values[name] = own if own is not None else getattr(settings, f"quota_{name}")
    return TenantLimits(**values, allow_high_priority=bool(row and row.allow_high_priority))


def set_quota(*, session: Session, tenant: Tenant, values: dict[str, Any]) -> TenantQuota:
    """Set some of a tenant's quotas (a None limit: back to the service default); the others are kept."""
    row = get_quota(session=session, tenant_id=tenant.id)
    if row is None:
        row = TenantQuota(tenant_id=tenant.id, allow_high_priority=False)
        session.add(row)
    for name, value in values.items():
        if name not in (*QUOTA_LIMITS, "allow_high_priority"):
            raise ValueError(f"no quota {name!r}")
        setattr(row, name, value)
    session.flush()
    return row


def lock_tenant(*, session: Session, tenant_id: str) -> None:
    """Hold the tenant's row (PostgreSQL) or the write lock (SQLite) to the end of the transaction."""
    session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(name=Tenant.name)
        .execution_options(synchronize_session=False)
    )


def count_jobs(*, session: Session, tenant_id: str, status: JobStatus) -> int:
    """How many of the tenant's jobs have `status`."""
    counted = select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id, Job.status == status)
    return int(session.scalar(counted) or 0)


def storage_bytes(*, session: Session, tenant_id: str) -> int:
    """Bytes the tenant's rows record: corpora as uploaded, labelled sets, models (extracted files, or the
    archive until extracted) and checkpoints (downloadable and resume files).

    Tokenized and curated datasets are not counted: they are stored once per content and shared by
    every tenant whose corpora have that content, so no one tenant owns their bytes."""
    total = 0
    for column, table in ((Corpus.size_bytes, Corpus), (LabelledSet.size_bytes, LabelledSet)):
        total += int(
            session.scalar(select(func.coalesce(func.sum(column), 0)).where(table.tenant_id == tenant_id)) or 0
        )
    for archive_bytes, files in session.execute(
        select(Model.archive_bytes, Model.files).where(Model.tenant_id == tenant_id)
    ):
        extracted = sum(int(f.get("bytes", 0)) for f in files or [])
        total += extracted or int(archive_bytes)
    for files, resume_files in session.execute(
        select(Checkpoint.files, Checkpoint.resume_files)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Job.tenant_id == tenant_id)
    ):
        total += sum(int(f.get("size_bytes", 0)) for f in [*(files or []), *(resume_files or [])])
    return total


def usage(*, session: Session, tenant_id: str) -> dict[str, int]:
    """What the tenant uses against each quota (`max_upload_bytes` and `max_job_tokens` are per request: 0)."""
    return {
        "max_running_jobs": count_jobs(session=session, tenant_id=tenant_id, status=JobStatus.RUNNING),
        "max_queued_jobs": count_jobs(session=session, tenant_id=tenant_id, status=JobStatus.QUEUED),
        "max_storage_bytes": storage_bytes(session=session, tenant_id=tenant_id),
        "max_upload_bytes": 0,
        "max_job_tokens": 0,
    }
