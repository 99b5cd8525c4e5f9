"""Uploaded base models: upload records, validation outcomes, and what reads them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String, Update, cast, select, update
from sqlalchemy.orm import Session

from storage.crud._sql import rowcount
from storage.crud.paging import page
from storage.status import ACTIVE_JOB_STATUSES, ModelStatus, model_statuses_leading_to
from storage.tables import Job, Model, Tenant, utcnow


def create_model(
    *,
    session: Session,
    tenant: Tenant,
    model_id: str,
    name: str,
    archive_format: str,
    archive_bytes: int,
    archive_sha256: str,
    blob_prefix: str,
) -> Model:
    """Record an upload whose archive is already stored; validation fills in the rest."""
    model = Model(
        id=model_id,
        tenant_id=tenant.id,
        name=name,
        status=ModelStatus.PROCESSING,
        archive_format=archive_format,
        archive_bytes=archive_bytes,
        archive_sha256=archive_sha256,
        files=[],
        blob_prefix=blob_prefix,
    )
    session.add(model)
    session.flush()
    return model


def get_model(*, session: Session, tenant: Tenant, model_id: str) -> Model | None:
    """One of the tenant's models, or None (another tenant's id looks the same as a missing one)."""
    return session.scalar(select(Model).where(Model.id == model_id, Model.tenant_id == tenant.id))


def get_model_by_id(*, session: Session, model_id: str) -> Model | None:
    """A model whoever owns it (for workers, which act on ids the database gave them)."""
    return session.get(Model, model_id)


def list_models(*, session: Session, tenant: Tenant, limit: int, cursor: str | None) -> tuple[list[Model], str | None]:
    """A page of the tenant's models, newest first."""
    return page(session, Model, [Model.tenant_id == tenant.id], limit=limit, cursor=cursor)


def model_in_use(*, session: Session, model: Model) -> list[str]:
    """Ids of the tenant's queued, running or paused jobs whose spec starts from the model (`init_from.model_id`).

    The spec is JSON; its text is matched in SQL (the same on SQLite and PostgreSQL), then each match is
    confirmed on the parsed spec, so an id that only appears elsewhere (a name) does not count.
    """
    candidates = session.scalars(
        select(Job).where(
            Job.tenant_id == model.tenant_id,
            Job.status.in_(ACTIVE_JOB_STATUSES),
            cast(Job.spec, String).contains(model.id),
        )
    )
    return [job.id for job in candidates if _init_model_id(job.spec) == model.id]


def _init_model_id(spec: dict[str, Any]) -> str | None:
    init_from = spec.get("init_from")
    return init_from.get("model_id") if isinstance(init_from, dict) else None


def mark_model_ready(
    *, session: Session, model_id: str, family: str, parameters: int, files: list[dict[str, Any]]
) -> bool:
    """Record a validated model; False if it is gone or no longer processing."""
    moved = rowcount(
        session, _move_model(model_id, ModelStatus.READY).values(family=family, parameters=parameters, files=files)
    )
    return bool(moved)


def fail_model(*, session: Session, model_id: str, reason: str) -> bool:
    """Mark a model's validation failed with a reason that says what to fix; False if it is gone or already done."""
    return bool(rowcount(session, _move_model(model_id, ModelStatus.FAILED).values(error=reason, files=[])))


def stale_processing_models(*, session: Session, untouched_since: datetime) -> list[str]:
    """Ids of models still processing since `untouched_since`; each is touched, so it waits again."""
    stale = select(Model).where(Model.status == ModelStatus.PROCESSING, Model.updated_at < untouched_since)
    models = list(session.scalars(stale))
    for model in models:
        model.updated_at = utcnow()
    return [model.id for model in models]


def _move_model(model_id: str, to: ModelStatus) -> Update:
    """An UPDATE moving a model to `to`, only from a status its lifecycle allows."""
    return (
        update(Model)
        .where(Model.id == model_id, Model.status.in_(model_statuses_leading_to(to)))
        .values(status=to, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def delete_model(*, session: Session, model: Model) -> None:
    """Remove a model row (its blobs are removed by the caller)."""
    session.delete(model)
    session.flush()
