"""Webhook delivery: sign a message as Standard Webhooks says, POST it, and record the answer or schedule a retry.

Deliveries are rows written with the change that raised them (`storage/crud/webhooks.py`); the periodic sweep
sends a wake-up per due delivery, and the delivery task claims it, so a lost message or a dead worker only
delays an attempt. Every attempt of a message carries the same `webhook-id`: receivers deduplicate on it.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

import httpx
from standardwebhooks import Webhook as Signer

from selfsup.settings import Settings
from selfsup.webhook_targets import UnsafeTarget, check_target
from storage import crud
from storage.db import session_scope
from storage.status import DeliveryStatus
from storage.tables import utcnow
from workers.celery_app import DELIVER_WEBHOOK, enqueue, waiting_ids

log = logging.getLogger(__name__)

# Each retry waits this many times longer than the one before, up to the cap; with the default 5 s base:
# 5 s, 30 s, 3 min, 18 min, 1.8 h, then every 4 h until the retry window (a day) is spent.
RETRY_FACTOR = 6
RETRY_CAP_SECONDS = 4 * 3600
SWEEP_BATCH = 500


def retry_delay(attempts: int, *, base_seconds: float) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1, 2, …) before the next one."""
    return float(min(base_seconds * RETRY_FACTOR ** (attempts - 1), RETRY_CAP_SECONDS))


def claim_hold_seconds(settings: Settings) -> float:
    """How long a claimed attempt may go unrecorded before it counts as lost and is due again."""
    return settings.webhook_timeout_seconds * 3 + 30


def sweep(settings: Settings) -> str:
    """Wake a delivery task for each due delivery that is not already waiting in the broker."""
    with session_scope() as session:
        due = crud.due_deliveries(session=session, limit=SWEEP_BATCH)
    if not due:
        return "nothing due"
    waiting = waiting_ids(DELIVER_WEBHOOK)
    sent = [delivery_id for delivery_id in due if delivery_id not in waiting]
    for delivery_id in sent:
        enqueue(DELIVER_WEBHOOK, delivery_id)
    return f"woke {len(sent)} deliveries"


def deliver(delivery_id: str, *, settings: Settings) -> str:
    """Make one attempt at a due delivery and record its outcome."""
    with session_scope() as session:
        claimed = crud.claim_delivery(
            session=session, delivery_id=delivery_id, hold_seconds=claim_hold_seconds(settings)
        )
        if claimed is None:
            return "not due: delivered, failed, deleted, or being attempted elsewhere"
        delivery, webhook = claimed
        url, secret, payload = webhook.url, webhook.secret, delivery.payload
        attempts, created_at = delivery.attempts, delivery.created_at

    code, error = _send(delivery_id, url=url, secret=secret, body=_body(payload), settings=settings)
    now = utcnow()
    if code is not None and 200 <= code < 300:
        outcome, retry_at = DeliveryStatus.DELIVERED, None
    else:
        outcome, retry_at = _next_attempt(attempts + 1, created_at=created_at, now=now, settings=settings)
    with session_scope() as session:
        crud.record_delivery_attempt(
            session=session,
            delivery_id=delivery_id,
            response_code=code,
            error=error,
            outcome=outcome,
            retry_at=retry_at,
        )
    answer = f"HTTP {code}" if code is not None else error
    return f"attempt {attempts + 1}: {answer}; {outcome}" + (f" until {retry_at.isoformat()}" if retry_at else "")


def _body(payload: dict[str, object]) -> str:
    """The message body: the stored payload as compact JSON (the exact text that is signed)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _next_attempt(
    attempts: int, *, created_at: datetime, now: datetime, settings: Settings
) -> tuple[DeliveryStatus, datetime | None]:
    """Pending until the next retry, or failed once the retry would fall outside the window."""
    retry_at = now + timedelta(seconds=retry_delay(attempts, base_seconds=settings.webhook_retry_base_seconds))
    if retry_at > created_at + timedelta(seconds=settings.webhook_retry_window_seconds):
        return DeliveryStatus.FAILED, None
    return DeliveryStatus.PENDING, retry_at


def _send(delivery_id: str, *, url: str, secret: str, body: str, settings: Settings) -> tuple[int | None, str | None]:
    """POST the signed body to the webhook's checked address; (status code or None, error or None)."""
    try:
        target = check_target(url, allow_private=settings.webhook_allow_private_targets)
    except UnsafeTarget as exc:  # DNS changed since the webhook was created, or the operator setting did
        return None, f"refused: {exc}"
    timestamp = utcnow()
    headers = {
        "content-type": "application/json",
        "user-agent": "selfsup-webhooks/1",
        "host": target.host_header,
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Signer(secret).sign(delivery_id, timestamp, body),
    }
    timeout = httpx.Timeout(settings.webhook_timeout_seconds, connect=min(5.0, settings.webhook_timeout_seconds))
    try:
        # The checked address, not a second DNS lookup; redirects are not followed (a 3xx is a failed attempt).
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            request = client.build_request(
                "POST",
                target.pinned_url,
                content=body.encode("utf-8"),
                headers=headers,
                extensions={"sni_hostname": target.sni_hostname},
            )
            response = client.send(request)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:1000]
    error = None if response.is_success else f"HTTP {response.status_code}: {response.text[:200]}"
    return response.status_code, error
