"""Tenants and their API keys."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.tables import (
    ApiKey,
    Tenant,
)


def hash_api_key(key: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


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
