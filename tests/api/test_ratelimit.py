"""The token bucket of `api/ratelimit.py` on a real Redis, and failing open when there is none."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
import redis

from api.ratelimit import BUCKET_PREFIX, Decision, RateLimiter
from selfsup.settings import Settings
from tests.conftest import IN_CI, REDIS_URL
from tests.service import free_port


@pytest.fixture(scope="module")
def redis_url() -> str:
    """This machine's Redis (database 7, as the PostgreSQL-backed service uses), not emptied: buckets are unique."""
    url = f"{REDIS_URL.rstrip('/')}/7"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"Redis is not reachable ({exc}); CI requires it", pytrace=False)
        pytest.skip(f"Redis is not reachable ({exc})")
    return url


def _limiter(redis_url: str, *, rate: float, burst: int) -> RateLimiter:
    return RateLimiter(Settings(redis_url=redis_url, rate_limit_per_second=rate, rate_limit_burst=burst))


def test_the_bucket_allows_its_burst_then_says_how_long_to_wait(redis_url: str) -> None:
    limiter = _limiter(redis_url, rate=0.01, burst=2)
    bucket = f"{BUCKET_PREFIX}test:{uuid.uuid4().hex}"

    async def three() -> list[Decision | None]:
        return [await limiter.check(bucket) for _ in range(3)]

    first, second, third = asyncio.run(three())
    assert first is not None and first.allowed and first.remaining == pytest.approx(1, abs=0.01)
    assert second is not None and second.allowed and second.remaining == pytest.approx(0, abs=0.01)
    # Empty: the next token comes after 1 / rate = 100 s (less the trickle since the first request).
    assert third is not None and not third.allowed and 99 < third.retry_after <= 100, third


def test_an_unreachable_broker_lets_requests_through_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    limiter = _limiter(f"redis://127.0.0.1:{free_port()}/0", rate=1, burst=1)

    async def twice() -> list[Decision | None]:
        return [await limiter.check(f"{BUCKET_PREFIX}test:x") for _ in range(2)]

    with caplog.at_level(logging.WARNING, logger="selfsup.api"):
        assert asyncio.run(twice()) == [None, None]
    warnings = [r.getMessage() for r in caplog.records if "rate limits are not enforced" in r.getMessage()]
    # Said once, with the reason; the second request did not wait for the broker again.
    assert len(warnings) == 1 and "ConnectionError" in warnings[0], warnings
