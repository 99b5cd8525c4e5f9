"""Receive an upload (a corpus, a model archive) as a stream: constant memory, sha256 while streaming, size
limit enforced.

The body is either the file itself or `multipart/form-data` with a field `file`. Bytes go to a
temporary blob that appears under its final key only when the upload completed within the limit,
so an interrupted or refused upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from api.errors import ApiError
from api.quotas import UploadQuota
from selfsup.settings import get_settings
from selfsup.spec_types import NAME_MAX_LENGTH, forbidden_name_character
from storage.blobs import BlobStore

_JSONL_TYPES = {
    "application/jsonl",
    "application/x-ndjson",
    "application/x-jsonlines",
    "application/jsonlines",
    "application/json-lines",
}
_TEXT_TYPES = {"text/plain"}
_ARCHIVE_TYPES = {
    "application/zip",
    "application/x-zip-compressed",
    "application/x-tar",
    "application/x-gtar",
    "application/x-compressed-tar",
    "application/x-bzip-compressed-tar",
    "application/x-xz-compressed-tar",
}
_EXTENSIONS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_ARCHIVE_EXTENSIONS = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
CORPUS_FORMATS = ("txt", "jsonl", "archive")


@dataclass
class ReceivedUpload:
    """What arrived: its declared name and format, and the measured size and digest."""

    filename: str | None
    fmt: str
    compression: str | None
    size_bytes: int
    sha256: str


def detect_format(content_type: str | None, name: str | None) -> str | None:
    """`txt`, `jsonl` or `archive` from the Content-Type, else from the name's extension (ignoring `.gz`)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media in _TEXT_TYPES:
        return "txt"
    if media in _JSONL_TYPES:
        return "jsonl"
    if media in _ARCHIVE_TYPES:
        return "archive"
    stem = (name or "").lower()
    if stem.endswith(_ARCHIVE_EXTENSIONS):
        return "archive"
    if stem.endswith(".gz"):
        stem = stem[:-3]
    for ext, fmt in _EXTENSIONS.items():
        if stem.endswith(ext):
            return fmt
    return None


# Enough of the first bytes to tell gzip (2 bytes) and a tar header (`ustar` at offset 257) apart.
_HEAD_BYTES = 512


@dataclass
class _Sink:
    """Counts and collects bytes, refusing to go past the limit; a worker thread hashes and writes them.

    `take` (sync, also called from the multipart parser's callbacks) checks the size, the limit and the quota at
    once and appends to a batch; `pass_on` hands a full batch (`SELFSUP_UPLOAD_CHUNK_BYTES`) to a worker thread and
    returns, so the event loop receives the next batch while the previous one is hashed and written. At most one
    batch is in the thread while the next fills: memory stays at about two batches.

    Why: hashing and writing on the loop (as before) made receiving, sha256 and the write take turns on one core,
    and stalled every other request of the API for each of them. sha256 (about 0.7 s per GiB here) and a write
    into the page cache both release the GIL, so the thread runs them beside the loop's receiving. Batching keeps
    the hand-offs to one per MiB (the server hands the body over in pieces of up to 256 KiB).
    """

    out: BinaryIO
    limit: int
    batch_bytes: int
    limit_setting: str = "SELFSUP_MAX_UPLOAD_BYTES"
    quota: UploadQuota | None = None  # the tenant's, where tighter than `limit`: passing it is a 403 naming it
    size: int = 0
    head: bytes = b""
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    batch: list[bytes] = field(default_factory=list)
    batched: int = 0
    writing: asyncio.Future[None] | None = None

    def take(self, data: bytes) -> None:
        """Count, check and collect `data`; raises ApiError past the limit or the quota."""
        self.size += len(data)
        if self.quota is not None and self.size > self.quota.remaining:
            raise self.quota.exceeded(self.size)
        if self.size > self.limit:
            raise ApiError(413, f"the upload exceeds the limit of {self.limit:,} bytes ({self.limit_setting})")
        if len(self.head) < _HEAD_BYTES:
            self.head += data[: _HEAD_BYTES - len(self.head)]
        self.batch.append(data)
        self.batched += len(data)

    async def pass_on(self, *, final: bool = False) -> None:
        """Hand the batch to the writer thread once it is full (or `final`), after the previous one is written."""
        if self.batched < self.batch_bytes and not (final and self.batch):
            return
        batch, self.batch, self.batched = self.batch, [], 0
        await self.settle()
        self.writing = asyncio.get_running_loop().run_in_executor(None, self._write, batch)

    async def settle(self) -> None:
        """Wait for the batch being written (raising its error); shielded, so that a cancelled request still waits
        for the thread before its writer is closed and removed."""
        if self.writing is None:
            return
        writing, self.writing = self.writing, None
        with anyio.CancelScope(shield=True):
            await writing

    def _write(self, batch: list[bytes]) -> None:
        for data in batch:  # hashlib and the write both release the GIL on large buffers
            self.digest.update(data)
            self.out.write(data)


@asynccontextmanager
async def _receiving(
    store: BlobStore,
    key: str,
    *,
    limit: int,
    limit_setting: str = "SELFSUP_MAX_UPLOAD_BYTES",
    quota: UploadQuota | None = None,
) -> AsyncIterator[_Sink]:
    """A sink into `store.writer(key)`: the blob appears when the block exits without error, else nothing is kept.

    The writer is entered and left on a worker thread: leaving it fsyncs and renames a file (or completes a
    multipart upload), seconds for a large upload that would otherwise stall every request on the event loop.
    """
    writer = store.writer(key)
    with anyio.CancelScope(shield=True):  # a cancelled request must not leave an entered writer nobody exits
        out = await run_in_threadpool(writer.__enter__)
    sink = _Sink(
        out=out, limit=limit, batch_bytes=get_settings().upload_chunk_bytes, limit_setting=limit_setting, quota=quota
    )
    try:
        yield sink
        await sink.pass_on(final=True)
        await sink.settle()
    except BaseException as exc:
        suppressed = False
        try:
            await sink.settle()  # the thread is done with `out` before the writer discards it
        finally:
            with anyio.CancelScope(shield=True):
                suppressed = bool(await run_in_threadpool(writer.__exit__, type(exc), exc, exc.__traceback__))
        if not suppressed:
            raise
    else:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(writer.__exit__, None, None, None)


async def _body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect as exc:
        raise ApiError(400, "the client disconnected before the upload finished; nothing was kept") from exc


def _compression(head: bytes) -> str | None:
    """The compression a stream's first bytes name (`gzip`, `bzip2`, `xz`), or None."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    return None


def _is_tar_or_zip(head: bytes) -> bool:
    """Whether the first bytes are a zip, a tar, or a gzip stream that starts with a tar header."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06") or head[257:262] == b"ustar":
        return True
    if head[:2] == b"\x1f\x8b":  # peek inside: a .tar.gz shows `ustar` in its first decompressed block
        try:
            inner = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(head, _HEAD_BYTES)
        except zlib.error:
            return False
        return inner[257:262] == b"ustar"
    return False


def corpus_format(requested: str | None, content_type: str | None, name: str | None, head: bytes) -> str | None:
    """The corpus format: as requested (`?format=`), else `archive` when the bytes are a zip or tar, else from
    the Content-Type or the name; None when nothing tells."""
    if requested is not None:
        if requested == "archive" and not (_is_tar_or_zip(head) or _compression(head)):
            raise ApiError(
                415,
                "format=archive, but the upload is neither a zip nor a tar archive (plain, .tar.gz, .tar.bz2 or "
                ".tar.xz): send e.g. `tar -czf docs.tar.gz docs/` or `zip -r docs.zip docs/`",
            )
        return requested
    if _is_tar_or_zip(head):
        return "archive"
    return detect_format(content_type, name)


async def receive_upload(
    request: Request,
    *,
    store: BlobStore,
    key: str,
    name: str | None,
    limit: int,
    fmt: str | None = None,
    quota: UploadQuota | None = None,
) -> ReceivedUpload:
    """Stream the request body into `key`; raises ApiError (403 over `quota`, 413, 415, 422) without keeping
    anything.

    `fmt` is the format the client asked for (`?format=`); without it, the bytes, Content-Type and name tell.
    """
    _refuse_declared_oversize(request, limit, quota)
    async with _receiving(store, key, limit=limit, quota=quota) as sink:
        filename, part_type = await _stream_into(request, sink, what="the corpus")
        if sink.size == 0:
            raise ApiError(422, "the upload is empty: send the corpus file as the request body")
        detected = corpus_format(fmt, part_type, name or filename, sink.head)
        if detected is None:
            raise ApiError(
                415,
                f"cannot tell the corpus format from Content-Type {part_type or '(none)'!r} and name "
                f"{name or filename!r}: send Content-Type text/plain or application/jsonl, "
                "or give a name ending in .txt or .jsonl (optionally .gz), or send a .zip, .tar or .tar.gz "
                "archive of text files, or say `?format=txt|jsonl|archive`",
            )
    compression = _compression(sink.head)
    return ReceivedUpload(
        filename=filename,
        fmt=detected,
        # A text corpus may be gzip-compressed; an archive names its tar's compression (a zip has its own).
        compression=compression if detected == "archive" or compression == "gzip" else None,
        size_bytes=sink.size,
        sha256=sink.digest.hexdigest(),
    )


@dataclass
class ReceivedArchive:
    """An uploaded archive: its declared name, the format its first bytes show, and the measured size and digest."""

    filename: str | None
    fmt: str  # tar (plain or gzip/bz2/xz-compressed) | zip
    size_bytes: int
    sha256: str


def archive_format(head: bytes) -> str | None:
    """`zip` or `tar` from an archive's first bytes (a compressed tar counts as `tar`), else None."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[257:262] == b"ustar" or head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return "tar"
    return None


async def receive_archive(
    request: Request,
    *,
    store: BlobStore,
    key: str,
    limit: int,
    limit_setting: str,
    quota: UploadQuota | None = None,
) -> ReceivedArchive:
    """Stream a tar or zip archive into `key`; raises ApiError (403 over `quota`, 413, 415, 422) without keeping
    anything."""
    _refuse_declared_oversize(request, limit, quota)
    async with _receiving(store, key, limit=limit, limit_setting=limit_setting, quota=quota) as sink:
        filename, _ = await _stream_into(request, sink, what="the model archive")
        if sink.size == 0:
            raise ApiError(
                422, "the upload is empty: send the model folder as a tar or zip archive in the request body"
            )
        fmt = archive_format(sink.head)
        if fmt is None:
            raise ApiError(
                415,
                "the upload is neither a tar archive (plain, .tar.gz, .tar.bz2 or .tar.xz) nor a zip archive: "
                "archive the Hugging Face model folder (config.json, model.safetensors, tokenizer files), e.g. "
                "`tar -czf model.tar.gz -C my-model .`",
            )
    return ReceivedArchive(filename=filename, fmt=fmt, size_bytes=sink.size, sha256=sink.digest.hexdigest())


def name_of_upload(name: str | None, filename: str | None, default: str) -> str:
    """The name a corpus or model gets: `?name=` (already validated), else the multipart file name when it would
    pass as a name (no control characters, at most 200 characters), else `default` (the new resource's id).

    A file name that would not pass falls back rather than failing the upload that has already been received.
    """
    if name:
        return name
    if filename and len(filename) <= NAME_MAX_LENGTH and forbidden_name_character(filename) is None:
        return filename
    return default


def _refuse_declared_oversize(request: Request, limit: int, quota: UploadQuota | None = None) -> None:
    declared = request.headers.get("content-length")
    # A multipart body's framing adds a little to the file's bytes: allow for it (the stream is counted exactly).
    if quota is not None and declared and declared.isdigit() and int(declared) > quota.remaining + 64 * 1024:
        raise quota.exceeded(int(declared))
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise ApiError(413, f"the upload ({int(declared):,} bytes) exceeds the limit of {limit:,} bytes")


async def _stream_into(request: Request, sink: _Sink, *, what: str) -> tuple[str | None, str]:
    """Send the body (or its multipart `file` field) into `sink`; the file name and content type it declared."""
    content_type = request.headers.get("content-type", "")
    media, options = parse_options_header(content_type)
    if media == b"multipart/form-data":
        return await _receive_multipart(request, options.get(b"boundary"), sink, what=what)
    async for chunk in _body(request):
        sink.take(chunk)
        await sink.pass_on()
    return None, content_type


class _MultipartFile:
    """Callbacks for python-multipart's streaming parser that send the `file` field into a sink."""

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink
        self.headers: dict[bytes, bytes] = {}
        self.header_field = b""
        self.header_value = b""
        self.in_file = False
        self.seen = False
        self.filename: str | None = None
        self.content_type = ""

    def on_part_begin(self) -> None:
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, disposition = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.in_file = disposition.get(b"name") == b"file" and not self.seen
        if self.in_file:
            self.seen = True
            filename = disposition.get(b"filename")
            self.filename = filename.decode("utf-8", "replace") if filename else None
            self.content_type = self.headers.get(b"content-type", b"").decode("latin-1")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.sink.take(data[start:end])

    def on_part_end(self) -> None:
        self.in_file = False


async def _receive_multipart(
    request: Request, boundary: bytes | None, sink: _Sink, *, what: str
) -> tuple[str | None, str]:
    if not boundary:
        raise ApiError(400, "multipart/form-data without a boundary parameter")
    part = _MultipartFile(sink)
    names = (
        "on_part_begin",
        "on_header_field",
        "on_header_value",
        "on_header_end",
        "on_headers_finished",
        "on_part_data",
        "on_part_end",
    )
    parser = MultipartParser(boundary, callbacks={name: getattr(part, name) for name in names})  # type: ignore[arg-type]
    try:
        async for chunk in _body(request):
            parser.write(chunk)
            await sink.pass_on()
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, f"malformed multipart/form-data body: {exc}") from exc
    if not part.seen:
        raise ApiError(422, f"multipart upload without a field named `file`: send {what} as the `file` field")
    return part.filename, part.content_type
