"""When and how long to retry a request.

Written here rather than taken from a retry library: the decision needs what only the SDK knows (whether
a request may be repeated without doing its work twice) and the server's `Retry-After`, and that is a
few lines on top of httpx's own exceptions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

# The request never reached the server: repeating it is always safe.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The server refused before doing anything (overload, admission); a proxy's 502/504 may hide work done.
_REFUSED = {429, 503}
_GATEWAY = {502, 504}


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, `max_retries` times, honouring `Retry-After` up to `max_delay`."""

    max_retries: int = 5
    backoff: float = 0.5
    max_delay: float = 30.0

    def retry_exception(self, attempt: int, exc: Exception, *, idempotent: bool) -> bool:
        """Whether to try again after a transport error on try number `attempt` (0-based)."""
        if attempt >= self.max_retries or not isinstance(exc, httpx.TransportError):
            return False
        return idempotent or isinstance(exc, _NOT_SENT)

    def retry_response(self, attempt: int, response: httpx.Response, *, idempotent: bool) -> bool:
        """Whether to try again after this status on try number `attempt`."""
        if attempt >= self.max_retries:
            return False
        return response.status_code in _REFUSED or (idempotent and response.status_code in _GATEWAY)

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds to wait before the next try: the server's `Retry-After` if it sent one, else backoff."""
        if response is not None:
            after = retry_after_seconds(response.headers.get("retry-after"))
            if after is not None:
                return min(after, self.max_delay)
        return min(self.backoff * 2**attempt, self.max_delay) * random.uniform(0.5, 1.0)


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
