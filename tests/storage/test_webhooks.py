"""The webhook outbox: a delivery per subscribed webhook is written with the change that raised it, once, and
an attempt is claimed by one worker at a time (crud on a real SQLite database)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage import crud
from storage.status import DeliveryStatus, JobStatus
from storage.tables import Checkpoint, Job, Tenant, WebhookDelivery, utcnow


def _tenant(session: Session, name: str = "alice") -> Tenant:
    return crud.get_or_create_tenant(session=session, name=name)


def _job(session: Session, tenant: Tenant) -> Job:
    return crud.create_job(
        session=session,
        tenant=tenant,
        spec={"training": {"max_restarts": 0}},
        name="j",
        corpus_ids=[],
        max_steps=10,
        idempotency_key=None,
        request_sha256=None,
    )


def _sent(session: Session) -> list[tuple[str, str, Any]]:
    """(webhook id, event type, data id) of every delivery in the outbox, oldest first."""
    session.flush()
    rows = session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.created_at, WebhookDelivery.id))
    return [(d.webhook_id, d.event_type, d.payload["data"]["id"]) for d in rows]


def test_each_ending_writes_one_delivery_per_subscribed_webhook(session: Session) -> None:
    alice, bob = _tenant(session), _tenant(session, "bob")
    jobs_hook = crud.create_webhook(session=session, tenant=alice, url="http://h/1", event_types=["job.failed"])
    all_hook = crud.create_webhook(
        session=session, tenant=alice, url="http://h/2", event_types=["job.cancelled", "job.failed", "corpus.ready"]
    )
    crud.create_webhook(session=session, tenant=bob, url="http://h/3", event_types=["job.failed", "job.cancelled"])

    crashed, cancelled = _job(session, alice), _job(session, alice)
    assert crud.claim_job(session=session, job_id=crashed.id, owner="w:1", lease_seconds=60)
    session.refresh(crashed)
    assert crud.requeue_after_crash(session=session, job=crashed, owner="w:1", error="boom") == "failed"
    assert crud.request_cancel(session=session, job=cancelled) == JobStatus.CANCELLED
    assert not crud.fail_job(session=session, job_id=cancelled.id, reason="already ended")  # no second event
    assert sorted(_sent(session)) == sorted(
        [
            (jobs_hook.id, "job.failed", crashed.id),
            (all_hook.id, "job.failed", crashed.id),
            (all_hook.id, "job.cancelled", cancelled.id),
        ]
    )
    payload = session.scalars(select(WebhookDelivery)).first()
    assert payload is not None and payload.payload["type"] == payload.event_type and payload.payload["timestamp"]


def test_corpus_and_checkpoint_events(session: Session) -> None:
    alice = _tenant(session)
    hook = crud.create_webhook(
        session=session, tenant=alice, url="http://h/", event_types=["corpus.ready", "checkpoint.created"]
    )
    corpus = crud.create_corpus(
        session=session,
        tenant=alice,
        corpus_id="cor_1",
        name="c",
        fmt="txt",
        compression=None,
        size_bytes=1,
        sha256="0",
    )
    counts: dict[str, Any] = {"documents": 2, "characters": 9, "train_documents": 1, "validation_documents": 1}
    assert crud.mark_corpus_ready(session=session, corpus_id=corpus.id, ingest_report={}, **counts)
    assert not crud.mark_corpus_ready(session=session, corpus_id=corpus.id, ingest_report={}, **counts)
    job = _job(session, alice)
    checkpoint = crud.add_checkpoint(
        session=session, checkpoint=Checkpoint(job_id=job.id, step=5, version=1, blob_prefix="x", files=[])
    )
    assert _sent(session) == [(hook.id, "corpus.ready", corpus.id), (hook.id, "checkpoint.created", checkpoint.id)]


def test_an_attempt_is_claimed_once_and_retried_when_due(session: Session) -> None:
    alice = _tenant(session)
    hook = crud.create_webhook(session=session, tenant=alice, url="http://h/", event_types=["job.cancelled"])
    crud.request_cancel(session=session, job=_job(session, alice))
    session.commit()
    (delivery_id,) = crud.due_deliveries(session=session, limit=10)
    assert crud.claim_delivery(session=session, delivery_id=delivery_id, hold_seconds=60) is not None
    assert crud.claim_delivery(session=session, delivery_id=delivery_id, hold_seconds=60) is None  # being attempted
    assert crud.due_deliveries(session=session, limit=10) == []
    assert crud.record_delivery_attempt(
        session=session,
        delivery_id=delivery_id,
        response_code=500,
        error="HTTP 500",
        outcome=DeliveryStatus.PENDING,
        retry_at=utcnow(),
    )
    assert crud.due_deliveries(session=session, limit=10) == [delivery_id]
    claimed = crud.claim_delivery(session=session, delivery_id=delivery_id, hold_seconds=60)
    assert claimed is not None and claimed[1].id == hook.id and claimed[0].attempts == 1
    done = crud.record_delivery_attempt(
        session=session, delivery_id=delivery_id, response_code=200, error=None, outcome=DeliveryStatus.DELIVERED
    )
    assert done
    rows, _ = crud.list_deliveries(session=session, webhook_id=hook.id, limit=10, cursor=None)
    session.refresh(rows[0])
    assert (rows[0].status, rows[0].attempts, rows[0].last_response_code) == ("delivered", 2, 200)
    assert rows[0].next_attempt_at is None and rows[0].delivered_at is not None
    assert crud.claim_delivery(session=session, delivery_id=delivery_id, hold_seconds=0) is None

    crud.delete_webhook(session=session, webhook=hook)
    # Deleted with its webhook (by the database's cascade): nothing more is sent.
    assert session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.id == delivery_id)) is None
