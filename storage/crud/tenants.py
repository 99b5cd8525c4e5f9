"""Tenants and their API keys.

A key is `ss_` and 43 random URL-safe characters (256 bits). Only its sha256 is stored: the key is shown once,
when created, and a lookup hashes what the client sent. Revocation keeps the row (with `revoked_at`), so a
revoked key is told it was revoked rather than that it never existed, and the list keeps its history.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import cast

from sqlalchemy import Table, and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from storage.tables import ApiKey, Job, Tenant, utcnow

KEY_PREFIX = "ss_"


def hash_api_key(key: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_api_key_secret() -> str:
    """A fresh API key (never stored: only its hash is)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def get_or_create_tenant(*, session: Session, name: str) -> Tenant:
    """The tenant called `name`, created if it does not exist."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def get_tenant_by_name(*, session: Session, name: str) -> Tenant | None:
    """The tenant called `name`, or None."""
    return session.scalar(select(Tenant).where(Tenant.name == name))


def create_api_key(
    *,
    session: Session,
    tenant: Tenant,
    scopes: Iterable[str] = ("read", "write"),
    name: str = "",
    expires_at: datetime | None = None,
    secret: str | None = None,
) -> tuple[ApiKey, str]:
    """A new API key for `tenant` and the key itself: only its hash is stored, so this is the one time it is
    seen. `secret` is for a key the operator chose (`SELFSUP_BOOTSTRAP_ADMIN_KEY`); otherwise a fresh one."""
    key = secret if secret is not None else new_api_key_secret()
    row = ApiKey(
        tenant_id=tenant.id,
        key_hash=hash_api_key(key),
        prefix=key[:10],
        name=name,
        scopes=[str(scope) for scope in scopes],
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, key


def api_key_and_tenant(*, session: Session, key: str) -> tuple[ApiKey, Tenant] | None:
    """The stored key matching `key` and its tenant, revoked or expired too (the caller says which), or None."""
    row = session.execute(
        select(ApiKey, Tenant).join(Tenant, ApiKey.tenant_id == Tenant.id).where(ApiKey.key_hash == hash_api_key(key))
    ).first()
    return (row[0], row[1]) if row is not None else None


# Built once: what clients poll runs it on every request, and building a statement costs more than running it.
_KEY_TENANT_AND_JOB = (
    select(ApiKey, Tenant, Job)
    .join(Tenant, ApiKey.tenant_id == Tenant.id)
    .outerjoin(Job, and_(Job.id == bindparam("job_id"), Job.tenant_id == Tenant.id))
    .where(ApiKey.key_hash == bindparam("key_hash"))
)


def api_key_tenant_and_job(*, session: Session, key: str, job_id: str) -> tuple[ApiKey, Tenant, Job | None] | None:
    """As `api_key_and_tenant`, with the tenant's job `job_id` (None when it has none) read in the same query:
    one round trip for a client polling its job."""
    row = session.execute(_KEY_TENANT_AND_JOB, {"job_id": job_id, "key_hash": hash_api_key(key)}).first()
    return (row[0], row[1], row[2]) if row is not None else None


def api_key_refusal(api_key: ApiKey, *, now: datetime | None = None) -> str | None:
    """Why `api_key` may not be used now (`revoked`, `expired`), or None when it may."""
    if api_key.revoked_at is not None:
        return "revoked"
    if api_key.expires_at is not None and api_key.expires_at <= (now or utcnow()):
        return "expired"
    return None


def tenant_for_key(*, session: Session, key: str) -> Tenant | None:
    """The tenant owning `key` if the key is usable now (neither revoked nor expired), or None."""
    found = api_key_and_tenant(session=session, key=key)
    if found is None or api_key_refusal(found[0]) is not None:
        return None
    return found[1]


def list_api_keys(*, session: Session, tenant: Tenant) -> list[ApiKey]:
    """All of `tenant`'s keys, revoked and expired ones included, oldest first."""
    return list(
        session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id).order_by(ApiKey.created_at, ApiKey.id))
    )


def count_usable_api_keys(*, session: Session, tenant: Tenant) -> int:
    """How many of `tenant`'s keys are neither revoked nor expired."""
    now = utcnow()
    return int(
        session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(
                ApiKey.tenant_id == tenant.id,
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            )
        )
        or 0
    )


def get_api_key(*, session: Session, key_id: str, tenant: Tenant | None = None) -> ApiKey | None:
    """The key with id `key_id` (of `tenant`, when given), or None."""
    query = select(ApiKey).where(ApiKey.id == key_id)
    if tenant is not None:
        query = query.where(ApiKey.tenant_id == tenant.id)
    return session.scalar(query)


def get_tenant(*, session: Session, tenant_id: str) -> Tenant | None:
    """The tenant with id `tenant_id`, or None."""
    return session.get(Tenant, tenant_id)


def revoke_api_key(*, session: Session, api_key: ApiKey) -> ApiKey:
    """Revoke `api_key` now (the row stays, for the list's history); revoking twice keeps the first time."""
    if api_key.revoked_at is None:
        api_key.revoked_at = utcnow()
        session.flush()
    return api_key


def record_api_key_uses(*, session: Session, uses: Mapping[str, datetime]) -> None:
    """Set each key's `last_used_at` to its time in `uses`, in one statement, never moving it back (several API
    processes flush their own uses)."""
    if not uses:
        return
    # Core, not the ORM: one executemany of the same statement, whatever the number of keys.
    table = cast(Table, ApiKey.__table__)
    used_at = bindparam("used_at", type_=table.c.last_used_at.type)
    statement = (
        update(table)
        .where(table.c.id == bindparam("key_id"), or_(table.c.last_used_at.is_(None), table.c.last_used_at < used_at))
        .values(last_used_at=used_at)
    )
    session.connection().execute(statement, [{"key_id": k, "used_at": t} for k, t in uses.items()])


def ensure_api_key(*, session: Session, tenant_name: str, key: str, scopes: Iterable[str], name: str) -> bool:
    """Store `key` for the tenant `tenant_name` unless a key with its hash exists (revoked included: a revoked
    bootstrap key stays revoked); True if it was created."""
    if session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_api_key(key))) is not None:
        return False
    tenant = get_or_create_tenant(session=session, name=tenant_name)
    create_api_key(session=session, tenant=tenant, scopes=scopes, name=name, secret=key)
    return True
