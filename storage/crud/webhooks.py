"""Webhooks: tenants' subscriptions, and the outbox of deliveries written with the change that raised them.

`record_*` are called by the crud functions that move a job, corpus or checkpoint into a state a webhook can
subscribe to, inside the same transaction: the delivery exists if and only if the change was committed.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Update, func, or_, select, update
from sqlalchemy.orm import Session

from storage.crud._sql import rowcount
from storage.crud.paging import page
from storage.status import DeliveryStatus, JobStatus, WebhookEventType, delivery_statuses_leading_to
from storage.tables import (
    Checkpoint,
    Corpus,
    Job,
    Tenant,
    Webhook,
    WebhookDelivery,
    utcnow,
)


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def create_webhook(*, session: Session, tenant: Tenant, url: str, event_types: list[str]) -> Webhook:
    """Subscribe `url` to the tenant's events of `event_types`, with a new signing secret."""
    webhook = Webhook(tenant_id=tenant.id, url=url, event_types=event_types, secret=new_webhook_secret())
    session.add(webhook)
    session.flush()
    return webhook


def count_webhooks(*, session: Session, tenant: Tenant) -> int:
    """How many webhooks the tenant has."""
    return int(session.scalar(select(func.count()).select_from(Webhook).where(Webhook.tenant_id == tenant.id)) or 0)


def list_webhooks(*, session: Session, tenant: Tenant) -> list[Webhook]:
    """The tenant's webhooks, newest first."""
    query = select(Webhook).where(Webhook.tenant_id == tenant.id)
    return list(session.scalars(query.order_by(Webhook.created_at.desc(), Webhook.id.desc())))


def get_webhook(*, session: Session, tenant: Tenant, webhook_id: str) -> Webhook | None:
    """One of the tenant's webhooks, or None."""
    return session.scalar(select(Webhook).where(Webhook.id == webhook_id, Webhook.tenant_id == tenant.id))


def delete_webhook(*, session: Session, webhook: Webhook) -> None:
    """Remove a webhook and its deliveries: nothing more is sent to it, not even pending retries."""
    session.delete(webhook)
    session.flush()


def list_deliveries(
    *, session: Session, webhook_id: str, limit: int, cursor: str | None
) -> tuple[list[WebhookDelivery], str | None]:
    """A page of a webhook's deliveries, newest first."""
    return page(session, WebhookDelivery, [WebhookDelivery.webhook_id == webhook_id], limit=limit, cursor=cursor)


def record_event(
    *, session: Session, tenant_id: str, event_type: WebhookEventType, data: dict[str, Any]
) -> list[WebhookDelivery]:
    """Queue one delivery of the event to each of the tenant's webhooks that subscribe to its type."""
    now = utcnow()
    payload = {"type": str(event_type), "timestamp": now.isoformat(), "data": data}
    deliveries = [
        WebhookDelivery(webhook_id=webhook.id, event_type=event_type, payload=payload, next_attempt_at=now)
        for webhook in session.scalars(select(Webhook).where(Webhook.tenant_id == tenant_id))
        if event_type in webhook.event_types
    ]
    session.add_all(deliveries)
    return deliveries


def record_job_ending(*, session: Session, job_id: str, event_type: WebhookEventType) -> None:
    """Queue `job.succeeded`, `job.failed` or `job.cancelled` for a job whose final status was just written."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is not None:
        record_event(session=session, tenant_id=job.tenant_id, event_type=event_type, data=_job_data(job))


def record_checkpoint_created(*, session: Session, checkpoint: Checkpoint) -> None:
    """Queue `checkpoint.created` for a checkpoint just recorded."""
    tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == checkpoint.job_id))
    if tenant_id is not None:
        record_event(
            session=session,
            tenant_id=tenant_id,
            event_type=WebhookEventType.CHECKPOINT_CREATED,
            data={
                "object": "checkpoint",
                "id": checkpoint.id,
                "job_id": checkpoint.job_id,
                "step": checkpoint.step,
                "version": checkpoint.version,
                "is_final": checkpoint.is_final,
                "val_loss": checkpoint.val_loss,
                "metrics": checkpoint.metrics,
                "files": [{"name": f["name"], "size_bytes": f["size_bytes"]} for f in checkpoint.files],
                "created_at": checkpoint.created_at.isoformat(),
            },
        )


def record_corpus_outcome(*, session: Session, corpus_id: str, event_type: WebhookEventType) -> None:
    """Queue `corpus.ready` or `corpus.failed` for a corpus whose ingest outcome was just written."""
    corpus = session.get(Corpus, corpus_id, populate_existing=True)
    if corpus is not None:
        data = {
            "object": "corpus",
            "id": corpus.id,
            "name": corpus.name,
            "status": corpus.status,
            "error": corpus.error,
            "format": corpus.format,
            "size_bytes": corpus.size_bytes,
            "sha256": corpus.sha256,
            "documents": corpus.documents,
            "characters": corpus.characters,
            "created_at": corpus.created_at.isoformat(),
        }
        record_event(session=session, tenant_id=corpus.tenant_id, event_type=event_type, data=data)


def _job_data(job: Job) -> dict[str, Any]:
    """A job as a webhook's `data` (what `GET /v1/jobs/{id}` shows, less the spec and live fields)."""
    return {
        "object": "job",
        "id": job.id,
        "name": job.name,
        "status": JobStatus(job.status).value,
        "step": job.step,
        "max_steps": job.max_steps,
        "tokens_seen": job.tokens_seen,
        "metrics": job.latest_metrics,
        "error": job.error,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def due_deliveries(*, session: Session, limit: int) -> list[str]:
    """Ids of pending deliveries whose next attempt is due (or whose last attempt was lost), oldest first."""
    query = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= utcnow())
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def claim_delivery(
    *, session: Session, delivery_id: str, hold_seconds: float
) -> tuple[WebhookDelivery, Webhook] | None:
    """Take a due delivery for one attempt, and its webhook; None if it is not due (another worker has it,
    it was delivered, failed, or deleted). Unrecorded for `hold_seconds`, the attempt counts as lost and is due."""
    now = utcnow()
    claimed = rowcount(
        session,
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
            or_(WebhookDelivery.next_attempt_at.is_(None), WebhookDelivery.next_attempt_at <= now),
        )
        .values(next_attempt_at=now + timedelta(seconds=hold_seconds))
        .execution_options(synchronize_session=False),
    )
    if claimed != 1:
        return None
    row = session.execute(
        select(WebhookDelivery, Webhook)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.id == delivery_id)
        .execution_options(populate_existing=True)
    ).one_or_none()
    return (row[0], row[1]) if row is not None else None


def record_delivery_attempt(
    *,
    session: Session,
    delivery_id: str,
    response_code: int | None,
    error: str | None,
    outcome: DeliveryStatus,
    retry_at: datetime | None = None,
) -> bool:
    """Count one attempt and its answer: delivered, failed for good, or pending until `retry_at`.

    False if the delivery is no longer pending (deleted, or another attempt ended it first).
    """
    values: dict[str, Any] = {
        "attempts": WebhookDelivery.attempts + 1,
        "last_response_code": response_code,
        "last_error": error,
        "next_attempt_at": retry_at if outcome == DeliveryStatus.PENDING else None,
    }
    if outcome == DeliveryStatus.DELIVERED:
        values["delivered_at"] = utcnow()
    return rowcount(session, _move_delivery(delivery_id, outcome).values(**values)) == 1


def _move_delivery(delivery_id: str, to: DeliveryStatus) -> Update:
    """An UPDATE moving a pending delivery to `to` (pending to pending: one more attempt to come)."""
    sources = {DeliveryStatus.PENDING} if to == DeliveryStatus.PENDING else delivery_statuses_leading_to(to)
    return (
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status.in_(sources))
        .values(status=to)
        .execution_options(synchronize_session=False)
    )
