"""`/v1/usage` (a tenant's quotas and use) and `/v1/tenants/{name}/quotas` (an operator sets them)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import OperatorDep, SessionDep, TenantDep
from api.errors import ApiError
from api.schemas import QuotaUse, TenantQuotas, TenantQuotasPublic, UsagePublic
from selfsup.settings import get_settings
from storage import crud
from storage.tables import Tenant, utcnow

router = APIRouter(tags=["quotas"])

TenantName = Annotated[str, Path(min_length=1, max_length=200, description="The tenant's name.")]


@router.get("/v1/usage", response_model=UsagePublic, summary="Your tenant's quotas and what it uses")
def get_usage(tenant: TenantDep, session: SessionDep) -> UsagePublic:
    settings = get_settings()
    limits = crud.tenant_limits(session=session, tenant_id=tenant.id, settings=settings)
    used = crud.usage(session=session, tenant_id=tenant.id)
    now = utcnow()
    since = now - timedelta(seconds=settings.fair_share_window_seconds)
    seconds = crud.device_seconds_by_tenant(session=session, tenant_ids={tenant.id}, since=since, now=now)
    return UsagePublic(
        tenant=tenant.name,
        quotas={name: QuotaUse(limit=getattr(limits, name), used=used[name]) for name in crud.QUOTA_LIMITS},
        allow_high_priority=limits.allow_high_priority,
        device_seconds=round(seconds[tenant.id], 3),
    )


def _named_tenant(session: SessionDep, name: str) -> Tenant:
    tenant = crud.get_tenant_by_name(session=session, name=name)
    if tenant is None:
        raise ApiError(404, f"no tenant {name!r}")
    return tenant


def _quotas_public(session: SessionDep, tenant: Tenant) -> TenantQuotasPublic:
    row = crud.get_quota(session=session, tenant_id=tenant.id)
    own = {name: getattr(row, name) if row else None for name in crud.QUOTA_LIMITS}
    return TenantQuotasPublic(tenant=tenant.name, **own, allow_high_priority=bool(row and row.allow_high_priority))


@router.get(
    "/v1/tenants/{name}/quotas",
    response_model=TenantQuotasPublic,
    summary="A tenant's quotas (operator)",
    responses={403: {"description": "Not an operator key"}, 404: {"description": "No such tenant"}},
)
def get_tenant_quotas(name: TenantName, _: OperatorDep, session: SessionDep) -> TenantQuotasPublic:
    return _quotas_public(session, _named_tenant(session, name))


@router.put(
    "/v1/tenants/{name}/quotas",
    response_model=TenantQuotasPublic,
    summary="Set a tenant's quotas (operator)",
    description="Replaces all of the tenant's quotas: a limit left out or null falls back to the service default.",
    responses={403: {"description": "Not an operator key"}, 404: {"description": "No such tenant"}},
)
def put_tenant_quotas(name: TenantName, body: TenantQuotas, _: OperatorDep, session: SessionDep) -> TenantQuotasPublic:
    tenant = _named_tenant(session, name)
    crud.set_quota(session=session, tenant=tenant, values=body.model_dump())
    session.commit()
    return _quotas_public(session, tenant)
