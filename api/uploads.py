"""Receive a corpus upload as a stream: constant memory, sha256 while streaming, size limit enforced.

The body is either the file itself or `multipart/form-data` with a field `file`. Bytes go to a
temporary blob that appears under its final key only when the upload completed within the limit,
so an interrupted or refused upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from api.errors import ApiError
from storage.blobs import LocalBlobStore

_JSONL_TYPES = {
    "application/jsonl",
    "application/x-ndjson",
    "application/x-jsonlines",
    "application/jsonlines",
    "application/json-lines",
}
_TEXT_TYPES = {"text/plain"}
_EXTENSIONS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass
class ReceivedUpload:
    """What arrived: its declared name and format, and the measured size and digest."""

    filename: str | None
    fmt: str
    compression: str | None
    size_bytes: int
    sha256: str


def detect_format(content_type: str | None, name: str | None) -> str | None:
    """`txt` or `jsonl` from the Content-Type, else from the name's extension (ignoring `.gz`)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media in _TEXT_TYPES:
        return "txt"
    if media in _JSONL_TYPES:
        return "jsonl"
    stem = (name or "").lower()
    if stem.endswith(".gz"):
        stem = stem[:-3]
    for ext, fmt in _EXTENSIONS.items():
        if stem.endswith(ext):
            return fmt
    return None


@dataclass
class _Sink:
    """Counts, hashes and writes bytes, refusing to go past the limit."""

    out: BinaryIO
    limit: int
    size: int = 0
    head: bytes = b""
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise ApiError(413, f"the upload exceeds the limit of {self.limit:,} bytes (SELFSUP_MAX_UPLOAD_BYTES)")
        if len(self.head) < 2:
            self.head += data[: 2 - len(self.head)]
        self.digest.update(data)
        self.out.write(data)


async def _body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect as exc:
        raise ApiError(400, "the client disconnected before the upload finished; nothing was kept") from exc


async def receive_upload(
    request: Request, *, store: LocalBlobStore, key: str, name: str | None, limit: int
) -> ReceivedUpload:
    """Stream the request body into `key`; raises ApiError (413, 415, 422) without keeping anything."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise ApiError(413, f"the upload ({int(declared):,} bytes) exceeds the limit of {limit:,} bytes")
    content_type = request.headers.get("content-type", "")
    media, options = parse_options_header(content_type)
    with store.writer(key) as out:
        sink = _Sink(out=out, limit=limit)
        if media == b"multipart/form-data":
            filename, part_type = await _receive_multipart(request, options.get(b"boundary"), sink)
        else:
            filename, part_type = None, content_type
            async for chunk in _body(request):
                sink.write(chunk)
        if sink.size == 0:
            raise ApiError(422, "the upload is empty: send the corpus file as the request body")
        fmt = detect_format(part_type, name or filename)
        if fmt is None:
            raise ApiError(
                415,
                f"cannot tell the corpus format from Content-Type {part_type or '(none)'!r} and name "
                f"{name or filename!r}: send Content-Type text/plain or application/jsonl, "
                "or give a name ending in .txt or .jsonl (optionally .gz)",
            )
    return ReceivedUpload(
        filename=filename,
        fmt=fmt,
        compression="gzip" if sink.head == b"\x1f\x8b" else None,
        size_bytes=sink.size,
        sha256=sink.digest.hexdigest(),
    )


async def _receive_multipart(request: Request, boundary: bytes | None, sink: _Sink) -> tuple[str | None, str]:
    if not boundary:
        raise ApiError(400, "multipart/form-data without a boundary parameter")
    state: dict[str, object] = {"headers": {}, "field": b"", "value": b"", "in_file": False, "seen": False}
    result: dict[str, str | None] = {"filename": None, "type": ""}

    def on_part_begin() -> None:
        state["headers"] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] = bytes(state["field"]) + data[start:end]  # type: ignore[arg-type]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] = bytes(state["value"]) + data[start:end]  # type: ignore[arg-type]

    def on_header_end() -> None:
        headers = state["headers"]
        assert isinstance(headers, dict)
        headers[bytes(state["field"]).lower()] = bytes(state["value"])  # type: ignore[arg-type]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        headers = state["headers"]
        assert isinstance(headers, dict)
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        is_file = disposition.get(b"name") == b"file" and not state["seen"]
        state["in_file"] = is_file
        if is_file:
            state["seen"] = True
            filename = disposition.get(b"filename")
            result["filename"] = filename.decode("utf-8", "replace") if filename else None
            result["type"] = headers.get(b"content-type", b"").decode("latin-1")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["in_file"]:
            sink.write(data[start:end])

    def on_part_end() -> None:
        state["in_file"] = False

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in _body(request):
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, f"malformed multipart/form-data body: {exc}") from exc
    if not state["seen"]:
        raise ApiError(422, "multipart upload without a field named `file`: send the corpus as the `file` field")
    return result["filename"], result["type"] or ""
