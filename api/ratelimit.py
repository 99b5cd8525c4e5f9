"""Per-key rate limits on `/v1`: a token bucket per API key, kept in the broker (Redis or Valkey).

Each key may make `SELFSUP_RATE_LIMIT_BURST` requests at once, refilled at `SELFSUP_RATE_LIMIT_PER_SECOND`; a
request that finds the bucket empty is answered 429 with `Retry-After` (whole seconds until a token is back),
before any database work. The bucket lives in Redis so every API process shares it, and is read, refilled and
spent by one Lua script: one round trip, atomic however many processes serve the key, timed by the Redis
server's clock (API machines' clocks may differ).

A bucket is named by the key's stored form (its sha256, as in `api_keys.key_hash`), never the key itself; a
request without a key is counted by its client address. `/healthz`, `/readyz`, `/metrics`, the dashboard and the
docs are not limited. When Redis does not answer, requests go through (fail open, with a logged warning): the
broker being down must not take the API down with it; the check is retried a few seconds later.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body
from api.middleware import is_api_path
from selfsup.broker import broker_url
from selfsup.settings import Settings
from storage.crud.tenants import hash_api_key

log = logging.getLogger("selfsup.api")

BUCKET_PREFIX = "selfsup:ratelimit:"
# After a failed check, requests go through unchecked this long before Redis is tried again.
RETRY_REDIS_SECONDS = 5.0
REDIS_TIMEOUT_SECONDS = 0.5

# KEYS[1]: the bucket. ARGV: refill per second, capacity. Returns {allowed (1|0), tokens left, seconds to wait}
# (numbers as strings: Redis turns a Lua number into an integer). The bucket expires once it would be full again.
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = capacity
  at = now
end
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.ceil((capacity - tokens) / rate * 1000) + 1000))
return {allowed, tostring(tokens), tostring(wait)}
"""


@dataclass(frozen=True)
class Decision:
    """What the bucket said: whether the request may go on, the tokens left, and how long until the next one."""

    allowed: bool
    remaining: float
    retry_after: float


def bucket_of(scope: Scope) -> str:
    """The bucket a request draws from: its bearer key's sha256, else its client address."""
    scheme, _, credentials = Headers(scope=scope).get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return BUCKET_PREFIX + "key:" + hash_api_key(credentials.strip())
    client = scope.get("client")
    return BUCKET_PREFIX + "client:" + (client[0] if client else "unknown")


class RateLimiter:
    """The token buckets in Redis, checked with one script call per request; fails open when Redis is away."""

    def __init__(self, settings: Settings) -> None:
        self.rate = settings.rate_limit_per_second
        self.capacity = settings.rate_limit_burst
        self.settings = settings
        self._script: AsyncScript | None = None
        self._unchecked_until = 0.0
        self._failing = False

    def _token_bucket(self) -> AsyncScript:
        if self._script is None:
            # Made on first use, inside the server's event loop; the embedded broker has written its address by
            # then (`selfsup up` starts the broker before the API). Script calls are EVALSHA, EVAL the first time.
            client = Redis.from_url(
                broker_url(self.settings),
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
            self._script = client.register_script(TOKEN_BUCKET)
        return self._script

    async def check(self, bucket: str) -> Decision | None:
        """Spend a token from `bucket`; None when Redis could not be asked (the request goes through)."""
        if time.monotonic() < self._unchecked_until:
            return None
        try:
            allowed, remaining, wait = await self._token_bucket()(keys=[bucket], args=[self.rate, self.capacity])
        except (RedisError, OSError, RuntimeError) as exc:
            # RuntimeError: no broker URL yet (the embedded broker has not written it).
            self._unchecked_until = time.monotonic() + RETRY_REDIS_SECONDS
            if not self._failing:
                self._failing = True
                log.warning(
                    "rate limits are not enforced: the broker did not answer (%s: %s); requests go through "
                    "unlimited (failing open, so a broker outage does not stop the API) until it answers again",
                    type(exc).__name__,
                    exc,
                )
            return None
        if self._failing:
            self._failing = False
            log.info("rate limits are enforced again: the broker answers")
        return Decision(allowed=bool(int(allowed)), remaining=float(remaining), retry_after=float(wait))


class RateLimitMiddleware:
    """Answers 429 + `Retry-After` to a `/v1` request whose key has used up its bucket; every other `/v1`
    response says the limit and what is left of it (`X-RateLimit-Limit`, `X-RateLimit-Remaining`)."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.limiter = RateLimiter(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_api_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        bucket = bucket_of(scope)
        decision = await self.limiter.check(bucket)
        if decision is None:
            await self.app(scope, receive, send)
            return
        limit_headers = {
            "X-RateLimit-Limit": str(self.limiter.capacity),
            "X-RateLimit-Remaining": str(math.floor(decision.remaining)),
        }
        if not decision.allowed:
            retry_after = max(1, math.ceil(decision.retry_after))
            message = (
                f"rate limit exceeded: {'an API key' if ':key:' in bucket else 'a client without a key'} may make "
                f"{self.limiter.capacity} requests at once and "
                f"{self.limiter.rate:g} per second after that; retry after {retry_after} s"
            )
            body = error_body(
                "rate_limited",
                message,
                {
                    "limit_per_second": self.limiter.rate,
                    "burst": self.limiter.capacity,
                    "retry_after_seconds": retry_after,
                },
            )
            response = JSONResponse(body, status_code=429, headers={**limit_headers, "Retry-After": str(retry_after)})
            await response(scope, receive, send)
            return
        extra = [(name.lower().encode(), value.encode()) for name, value in limit_headers.items()]

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_limits)
