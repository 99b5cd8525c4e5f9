"""Exceptions: every failure the SDK raises is a `SelfsupError`.

An error answer of the API becomes an `APIError` subclass chosen by its HTTP status, carrying the
API's `code`, `message` and `details` (for a 422, a list of `{field, message}`).
"""

from __future__ import annotations

from typing import Any

import httpx


class SelfsupError(Exception):
    """Base of every error the SDK raises."""


class APIError(SelfsupError):
    """The API answered with an error: `{"error": {"code", "message", "details"}}`."""

    def __init__(
        self, status_code: int, code: str, message: str, details: Any = None, headers: httpx.Headers | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers if headers is not None else httpx.Headers()

    def __str__(self) -> str:
        return f"{self.message} ({self.code}, HTTP {self.status_code})"


class BadRequest(APIError):
    """400."""


class AuthenticationError(APIError):
    """401: no API key, or one the server does not know (set SELFSUP_API_KEY)."""


class PermissionDenied(APIError):
    """403: the key lacks the scope the request needs, or a quota of the tenant would be exceeded (`code`
    `forbidden` or `quota_exceeded`; `details` name the scope, or the quota, its limit and the use)."""


class NotFound(APIError):
    """404: no such resource, or it belongs to another tenant."""


class Conflict(APIError):
    """409: the resource's state forbids it (finished job, corpus in use, idempotency key reused)."""


class PayloadTooLarge(APIError):
    """413: an upload over the server's limit."""


class UnsupportedMediaType(APIError):
    """415: an upload in a format the server does not read."""


class InvalidRequest(APIError):
    """422: `details` names each bad field by its path (`model.heads`, `corpus_ids[0]`)."""


class RateLimited(APIError):
    """429, still there after the SDK's retries."""


class ServerError(APIError):
    """5xx, still there after the SDK's retries (502, 503, 504) or at once (500)."""


class ServiceUnavailable(ServerError):
    """503: the server is overloaded or not ready."""


class ConnectionFailed(SelfsupError):
    """The server could not be reached, or the connection broke, and retrying did not help."""


class ChecksumMismatch(SelfsupError):
    """A downloaded file's sha256 differs from the one the server recorded, even after fetching it again."""


class DownloadError(SelfsupError):
    """A download cannot go where it was asked to (the folder exists and is not empty)."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error response (its body must have been read)."""
    code, message, details = f"http_{response.status_code}", response.reason_phrase or "error", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = str(error.get("code") or code)
        message = str(error.get("message") or message)
        details = error.get("details")
    elif response.text:
        message = response.text[:500]
    cls = _BY_STATUS.get(response.status_code, ServerError if response.status_code >= 500 else APIError)
    return cls(response.status_code, code, message, details, response.headers)
