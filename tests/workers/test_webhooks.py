"""The webhook retry schedule: exponential, capped, and spanning a day before a delivery fails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from selfsup.settings import Settings
from storage.status import DeliveryStatus
from workers.webhooks import RETRY_CAP_SECONDS, _next_attempt, retry_delay


def test_retry_delays_grow_then_cap() -> None:
    delays = [retry_delay(n, base_seconds=5) for n in range(1, 9)]
    assert delays[:5] == [5, 30, 180, 1080, 6480]
    assert delays[5:] == [RETRY_CAP_SECONDS] * 3


def test_a_delivery_is_retried_for_a_day_then_failed() -> None:
    settings = Settings()
    created = now = datetime(2026, 1, 1, tzinfo=UTC)
    attempts, outcome = 0, DeliveryStatus.PENDING
    while outcome == DeliveryStatus.PENDING:
        attempts += 1
        outcome, retry_at = _next_attempt(attempts, created_at=created, now=now, settings=settings)
        if retry_at is not None:
            now = retry_at
    assert outcome == DeliveryStatus.FAILED
    assert timedelta(hours=20) < now - created <= timedelta(days=1), now - created
    assert 8 <= attempts <= 12, attempts
