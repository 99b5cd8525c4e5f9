"""Serve one stored blob over HTTP, honouring a single `Range` (what resumable downloaders send).

The bytes are streamed from the blob store, so this works the same whether blobs are local files or
objects in a bucket. Several ranges in one request are answered with the whole file, as RFC 9110 allows.
"""

from __future__ import annotations

import mimetypes
import re
from datetime import datetime
from email.utils import format_datetime
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from storage.blobs import BlobStore

_SINGLE_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def blob_download(
    request: Request,
    *,
    store: BlobStore,
    key: str,
    filename: str,
    size: int,
    sha256: str,
    last_modified: datetime,
) -> Response:
    """A 200 with the whole blob, a 206 with the requested range, or a 416 when the range is outside it."""
    etag = f'"{sha256}"'
    headers = {
        "accept-ranges": "bytes",
        "content-disposition": content_disposition(filename),
        "etag": etag,
        "last-modified": format_datetime(last_modified, usegmt=True),
        "x-checksum-sha256": sha256,
    }
    media_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if wanted is not None and (if_range is None or if_range in (etag, headers["last-modified"])):
        span = _parse_range(wanted, size)
        if span == "unsatisfiable":
            return PlainTextResponse("", status_code=416, headers={"content-range": f"bytes */{size}"})
        if isinstance(span, tuple):
            start, end = span
            headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
            headers["content-length"] = str(end - start)
            return StreamingResponse(
                store.open_range(key, start, end), status_code=206, media_type=media_type, headers=headers
            )
    headers["content-length"] = str(size)
    return StreamingResponse(store.open_range(key), media_type=media_type, headers=headers)


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """[start, end) of a single `bytes=` range, "unsatisfiable", or None to send the whole file."""
    match = _SINGLE_RANGE.match(header)
    if match is None:
        return None  # several ranges, another unit, or malformed: the whole file is a valid answer
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # `bytes=-N`: the last N bytes
        suffix = int(last)
        return (max(size - suffix, 0), size) if suffix > 0 and size > 0 else "unsatisfiable"
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size:
        return "unsatisfiable"
    if start >= end:
        return None
    return start, end


def content_disposition(filename: str) -> str:
    """`attachment` with the file's name, RFC 6266 style for names that are not plain ASCII."""
    quoted = quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'
