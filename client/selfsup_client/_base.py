"""Settings and request pieces shared by `Client` and `AsyncClient`."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent
from pydantic import BaseModel

from selfsup_client.errors import ConnectionFailed
from selfsup_client.models import Event, Job, MetricPoint, StreamMessage

__version__ = "0.1.0"

DEFAULT_URL = "http://127.0.0.1:8000"
M = TypeVar("M", bound=BaseModel)


def resolve_settings(url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """The server's URL and the API key: explicit arguments, else `SELFSUP_URL` and `SELFSUP_API_KEY`."""
    resolved_url = url or os.environ.get("SELFSUP_URL") or DEFAULT_URL
    resolved_key = api_key or os.environ.get("SELFSUP_API_KEY") or None
    return resolved_url.rstrip("/"), resolved_key


def default_headers(api_key: str | None) -> dict[str, str]:
    """Headers sent with every request."""
    headers = {"User-Agent": f"selfsup-client/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def new_idempotency_key() -> str:
    """A fresh key, so that retrying a job's creation never creates two jobs."""
    return f"sdk-{uuid.uuid4().hex}"


def path_segment(value: str) -> str:
    """An id as one URL path segment."""
    return quote(value, safe="")


def connection_failed(base_url: str, exc: Exception) -> ConnectionFailed:
    """The error for a server that could not be reached or dropped the connection."""
    return ConnectionFailed(
        f"could not talk to the selfsup server at {base_url} ({type(exc).__name__}: {exc}); "
        "is it running, and is SELFSUP_URL (or --url) right?"
    )


def parse_page(response: httpx.Response, model: type[M]) -> tuple[list[M], str | None]:
    """The items and `next_cursor` of a list page."""
    body = response.json()
    return [model.model_validate(item) for item in body["data"]], body.get("next_cursor")


def parse_message(sse: ServerSentEvent) -> StreamMessage | None:
    """A typed stream message, or None for an event type this SDK does not know."""
    payload: Any
    if sse.event in ("status", "end"):
        payload = Job.model_validate(json.loads(sse.data))
    elif sse.event == "event":
        payload = Event.model_validate(json.loads(sse.data))
    elif sse.event == "metric":
        payload = MetricPoint.model_validate(json.loads(sse.data))
    else:
        return None
    return StreamMessage(id=sse.id, event=sse.event, data=payload)  # type: ignore[arg-type]


def stream_headers(last_event_id: str | None) -> dict[str, str]:
    """Headers of a (re)connection to a job's stream."""
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    return headers


def range_headers(have: int, sha256: str) -> dict[str, str]:
    """Ask for the rest of a file, but only if it is still the same file (its ETag is its sha256)."""
    return {"Range": f"bytes={have}-", "If-Range": f'"{sha256}"'} if have else {}


def resumed_from(response: httpx.Response) -> int:
    """The first byte of a 206 answer (from `Content-Range: bytes START-END/SIZE`); 0 for a whole file."""
    if response.status_code != 206:
        return 0
    value = response.headers.get("content-range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return -1
