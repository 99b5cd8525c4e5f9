"""Pure ASGI middleware: a request id on every request and response, and the request metrics.

Pure ASGI (not `BaseHTTPMiddleware`): nothing is buffered or copied, streamed downloads stay
streamed, and the cost per request is a few dictionary operations and a clock read.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

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
