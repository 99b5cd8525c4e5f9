"""Pure ASGI middleware: a request id on every request and response, the request metrics, security headers on
every response, and JSON bodies held to their type and size.

Pure ASGI (not `BaseHTTPMiddleware`): nothing is buffered or copied, streamed downloads stay
streamed, and the cost per request is a few dictionary operations and a clock read.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from fastapi import params
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import REQUEST_LATENCY, REQUESTS
from selfsup.logs import log_context

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()
# An incoming id is kept when it is short and plain (it goes into log lines and a response header).
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
UNMATCHED_ROUTE = "unmatched"


def request_id_of(scope: Scope) -> str:
    """The client's `X-Request-ID` if it is sane, else a new one."""
    for name, value in scope.get("headers") or ():
        if name == _REQUEST_ID_KEY:
            candidate = value.decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Gives each request an id: log lines written while serving it carry it, and the response says it.

    The id is also left in `request.state.request_id`, for the handler of unexpected errors, which
    answers from outside this middleware.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (_REQUEST_ID_KEY, request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        with log_context(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class RequestMetricsMiddleware:
    """Counts requests by method, route template (`/v1/jobs/{job_id}`, never the raw path) and status,
    and observes each one's latency: the time until its status and headers were handed to the server.

    Not until the last byte: a download or an event stream would then time its transfer or its
    lifetime (minutes), not how long the API took to answer; a JSON body follows its headers at once.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before it answers
        latency: float | None = None

        async def send_and_note(message: Message) -> None:
            nonlocal status, latency
            if message["type"] == "http.response.start":
                status, latency = message["status"], time.perf_counter() - started
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            method = scope["method"]
            REQUESTS.labels(method, template, str(status)).inc()
            REQUEST_LATENCY.labels(method, template).observe(
                latency if latency is not None else time.perf_counter() - started
            )


# --- issue 14, hostile input: security headers and JSON bodies ---

_API_PREFIX = "/v1"
# Every response: no MIME sniffing, no referrer leaks, never framed (clickjacking).
_EVERY_RESPONSE = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
# /v1 answers are a tenant's data: never cached, and never rendered as a page (OWASP REST Security Cheat Sheet).
_API_RESPONSE = (
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)


def is_api_path(path: str) -> bool:
    """Whether `path` is under `/v1` (the tenant API: keys, rate limits, no caching)."""
    return path == _API_PREFIX or path.startswith(_API_PREFIX + "/") or path.startswith(_API_PREFIX + ":")


def security_headers(path: str, hsts_seconds: int) -> list[tuple[bytes, bytes]]:
    """The security headers a response to `path` carries (each only where the response has not set its own)."""
    headers = list(_EVERY_RESPONSE)
    if is_api_path(path):
        headers += _API_RESPONSE
    if hsts_seconds > 0:
        headers.append((b"strict-transport-security", f"max-age={hsts_seconds}".encode()))
    return headers


class SecurityHeadersMiddleware:
    """Adds the security headers to every response: errors, static files and streams included.

    A header the response already has wins (the dashboard's page sends its own Content-Security-Policy and
    Cache-Control), so a route can always say something more specific.
    """

    def __init__(self, app: ASGIApp, *, hsts_seconds: int = 0) -> None:
        self.app = app
        self.hsts_seconds = hsts_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = security_headers(scope["path"], self.hsts_seconds)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                message["headers"] = headers + [(name, value) for name, value in extra if name not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _is_json_media_type(content_type: str) -> bool:
    """`application/json` or `application/<anything>+json`, parameters ignored (what FastAPI will parse)."""
    media = content_type.split(";", 1)[0].strip().lower()
    maintype, _, subtype = media.partition("/")
    return maintype == "application" and (subtype == "json" or subtype.endswith("+json"))


def takes_json_body(route: Any) -> bool:
    """Whether a matched route reads a JSON body (a job spec, a dataset, a webhook, probes).

    Uploads declare no body parameter (they stream theirs, with limits of their own), so they are not.
    """
    body_field = getattr(route, "body_field", None)
    return body_field is not None and not isinstance(body_field.field_info, params.Form)


class JsonBodyMiddleware:
    """A route that takes a JSON body gets one: `Content-Type: application/json` (else 415) of at most
    `SELFSUP_MAX_JSON_BYTES` (else 413, decided from `Content-Length` or while the body arrives).

    Why here: FastAPI reads a body whole, whatever its size, before it looks at its type, and answers a body
    of another type with a 422 about the body's shape; Starlette's own size limit answers in plain text. Which
    route takes a body is known only once the request is routed, so the check runs when the route first asks
    for the body (`scope["route"]` is set by then); the errors are HTTPExceptions, which FastAPI passes on to
    `api.errors` for the one error shape.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        received = 0
        started = False

        async def receive_json() -> Message:
            nonlocal received, started
            if not takes_json_body(scope.get("route")):
                return await receive()
            headers = Headers(scope=scope)
            if not started:
                started = True
                declared = headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise _too_large(limit, int(declared))
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise _too_large(limit, None)
                if chunk and not _is_json_media_type(headers.get("content-type", "")):
                    given = headers.get("content-type") or "none"
                    raise HTTPException(
                        415, f"send the body as JSON, with Content-Type: application/json (not {given})"
                    )
            return message

        await self.app(scope, receive_json, send)


def _too_large(limit: int, declared: int | None) -> HTTPException:
    size = f" ({declared:,} bytes)" if declared is not None else ""
    return HTTPException(413, f"the JSON body{size} exceeds the limit of {limit:,} bytes (SELFSUP_MAX_JSON_BYTES)")
