"""Quota checks for the routes: each refusal is a 403 whose `details` name the quota, its limit and the use.

The limits are the tenant's own (`storage/crud/quotas.py`) or the service-wide `SELFSUP_QUOTA_*` defaults.
A check that guards an insert runs in the transaction that inserts, after `crud.lock_tenant`, so two
concurrent requests of one tenant cannot both take its last unit (see that module for why that holds).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.errors import ApiError
from selfsup.settings import get_settings
from selfsup.spec import JobSpec
from storage import crud
from storage.status import JobStatus
from storage.tables import Tenant

_WHAT = {
    "max_running_jobs": "running jobs",
    "max_queued_jobs": "queued jobs",
    "max_storage_bytes": "bytes of storage",
    "max_upload_bytes": "bytes in one upload",
    "max_job_tokens": "tokens in one job (max_steps × tokens_per_step)",
}


def quota_exceeded(quota: str, *, limit: int | bool, used: int | bool, message: str | None = None) -> ApiError:
    """The 403 for a request over `quota`."""
    text = message or f"over your quota of {limit:,} {_WHAT.get(quota, quota)} ({quota}): {used:,} used"
    return ApiError(
        403,
        f"{text}; ask an operator to raise it (`selfsup quotas set`)",
        code="quota_exceeded",
        details={"quota": quota, "limit": limit, "used": used},
    )


def check_job_quotas(session: Session, tenant: Tenant, spec: JobSpec) -> None:
    """Refuse a job over the tenant's priority allowance, token or queued-jobs quota, or with its storage full;
    call in the inserting transaction (it takes the tenant's lock)."""
    crud.lock_tenant(session=session, tenant_id=tenant.id)
    limits = crud.tenant_limits(session=session, tenant_id=tenant.id, settings=get_settings())
    if spec.priority == "high" and not limits.allow_high_priority:
        raise quota_exceeded(
            "allow_high_priority",
            limit=False,
            used=True,
            message="`priority: high` needs the allow_high_priority quota, which your tenant does not have",
        )
    tokens = spec.training.max_steps * spec.tokens_per_step
    if limits.max_job_tokens is not None and tokens > limits.max_job_tokens:
        raise quota_exceeded(
            "max_job_tokens",
            limit=limits.max_job_tokens,
            used=tokens,
            message=f"the job would read {tokens:,} tokens (max_steps × tokens_per_step), over your quota of "
            f"{limits.max_job_tokens:,} (max_job_tokens)",
        )
    check_queued_jobs(session, tenant.id, limit=limits.max_queued_jobs)
    if limits.max_storage_bytes is not None:  # a job writes checkpoints: none starts on a full quota
        used = crud.storage_bytes(session=session, tenant_id=tenant.id)
        if used >= limits.max_storage_bytes:
            raise quota_exceeded("max_storage_bytes", limit=limits.max_storage_bytes, used=used)


def check_queued_jobs(session: Session, tenant_id: str, *, limit: int | None) -> None:
    """Refuse one more queued job when the tenant has `limit` already (call under `crud.lock_tenant`)."""
    if limit is None:
        return
    queued = crud.count_jobs(session=session, tenant_id=tenant_id, status=JobStatus.QUEUED)
    if queued >= limit:
        raise quota_exceeded("max_queued_jobs", limit=limit, used=queued)


def check_resume(session: Session, tenant_id: str) -> None:
    """A resumed job is queued again: refuse it over the queued-jobs quota (takes the tenant's lock)."""
    crud.lock_tenant(session=session, tenant_id=tenant_id)
    limits = crud.tenant_limits(session=session, tenant_id=tenant_id, settings=get_settings())
    check_queued_jobs(session, tenant_id, limit=limits.max_queued_jobs)


@dataclass(frozen=True)
class UploadQuota:
    """The tightest quota an upload may not pass: `limit` minus `used` bytes remain."""

    quota: str
    limit: int
    used: int

    @property
    def remaining(self) -> int:
        """Bytes the upload may still have."""
        return max(0, self.limit - self.used)

    def exceeded(self, size: int) -> ApiError:
        """The 403 for an upload that reached `size` bytes."""
        if self.quota == "max_upload_bytes":
            return quota_exceeded(
                self.quota,
                limit=self.limit,
                used=size,
                message=f"the upload passes your quota of {self.limit:,} bytes in one upload (max_upload_bytes)",
            )
        return quota_exceeded(
            self.quota,
            limit=self.limit,
            used=self.used,
            message=f"the upload ({size:,} bytes or more) would take your storage over its quota of "
            f"{self.limit:,} bytes (max_storage_bytes): {self.used:,} used",
        )


def upload_quota(session: Session, tenant: Tenant) -> UploadQuota | None:
    """What may stop an upload of the tenant's: the upload-size quota or the storage left, whichever is tighter;
    403 at once if its storage is full already."""
    limits = crud.tenant_limits(session=session, tenant_id=tenant.id, settings=get_settings())
    quotas = []
    if limits.max_upload_bytes is not None:
        quotas.append(UploadQuota("max_upload_bytes", limits.max_upload_bytes, 0))
    if limits.max_storage_bytes is not None:
        used = crud.storage_bytes(session=session, tenant_id=tenant.id)
        if used >= limits.max_storage_bytes:
            raise quota_exceeded("max_storage_bytes", limit=limits.max_storage_bytes, used=used)
        quotas.append(UploadQuota("max_storage_bytes", limits.max_storage_bytes, used))
    return min(quotas, key=lambda q: q.remaining, default=None)


def check_stored_upload(session: Session, tenant: Tenant, size: int) -> None:
    """In the transaction that records an upload's row: refuse it if the tenant's storage would pass its quota
    (another upload may have finished meanwhile). Takes the tenant's lock."""
    crud.lock_tenant(session=session, tenant_id=tenant.id)
    limit = crud.tenant_limits(session=session, tenant_id=tenant.id, settings=get_settings()).max_storage_bytes
    if limit is None:
        return
    used = crud.storage_bytes(session=session, tenant_id=tenant.id)
    if used + size > limit:
        raise UploadQuota("max_storage_bytes", limit, used).exceeded(size)
