"""Corpus ingest: decode an upload, split it into documents, and split those into train and validation.

The rules, as the README documents them:
- Newlines are normalised (`\\r\\n` and `\\r` become `\\n`).
- `.txt`: documents are separated by one or more blank lines (lines holding only whitespace);
  a document longer than `MAX_DOCUMENT_CHARS` is cut at its last newline before that length.
- `.jsonl`: one JSON object per non-blank line, with a string field `text`; each is one document.
- An archive (`.zip`, `.tar`, `.tar.gz`, `.tar.bz2`, `.tar.xz`) of text files: each UTF-8 text file is one
  document (cut like a `.txt` document only past `MAX_DOCUMENT_CHARS`, at a line end). Files with a NUL byte or
  invalid UTF-8 (binary), files larger than `SELFSUP_ARCHIVE_MAX_FILE_BYTES` and empty files are skipped and
  counted; unsafe entries (absolute paths, `..`, links, devices) refuse the whole archive (workers/archives.py).
- A compressed upload is decompressed while it is read, every byte counted against SELFSUP_ARCHIVE_MAX_RATIO
  and SELFSUP_MAX_DECOMPRESSED_BYTES, so a decompression bomb stops early with nothing kept.
- A line longer than `MAX_LINE_CHARS` fails the upload (memory stays bounded whatever arrives).
- Empty documents are dropped and counted.
- A document goes to validation when the first 8 bytes of its sha256, read as a fraction of 2**64,
  fall below the validation fraction; identical documents therefore always land on the same side,
  so the two splits never overlap. If that leaves a side empty (a tiny corpus), the last documents
  go to validation instead; a corpus of one document is cut at the newline nearest to 90% of it.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from workers.archives import ArchiveLimits, CountingReader, DecompressionBudget, Readable, iter_members

MAX_DOCUMENT_CHARS = 1_000_000
MAX_LINE_CHARS = 16 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK = 1024 * 1024

# Magic numbers of formats people upload by mistake, named so the error can say what arrived.
_KNOWN_BINARY = {
    b"PK\x03\x04": "a zip archive",
    b"%PDF": "a PDF document",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"\x7fELF": "an executable",
    b"BZh": "a bzip2 stream",
    b"\xfd7zXZ": "an xz stream",
    b"(\xb5/\xfd": "a zstd stream",
}


class IngestError(ValueError):
    """The upload cannot become a corpus; the message says why and what to upload instead."""


@dataclass
class IngestStats:
    """What ingest kept and dropped, and why."""

    documents: int = 0
    characters: int = 0
    train_documents: int = 0
    validation_documents: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    archive: ArchiveStats | None = None

    def drop(self, reason: str) -> None:
        """Count one dropped document under `reason`."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def report(self) -> dict[str, Any]:
        """The corpus's ingest report (stored as JSON): what was dropped, and an archive's file counts."""
        report: dict[str, Any] = {"dropped": self.dropped}
        if self.archive is not None:
            report["archive"] = self.archive.as_dict()
        return report


@dataclass
class ArchiveStats:
    """What became of an archive's files: each regular file is a text file (a document) or skipped, with why."""

    type: str  # zip | tar
    files: int = 0
    text_files: int = 0
    skipped_binary: int = 0
    skipped_too_large: int = 0
    skipped_empty: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The counts as stored in the ingest report."""
        return dict(self.__dict__)


def is_validation(document: str, fraction: float) -> bool:
    """Whether `document` belongs to the validation split (a pure function of its text)."""
    digest = hashlib.sha256(document.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def open_decompressed(raw: BinaryIO, limits: ArchiveLimits | None = None) -> Readable:
    """The upload's bytes, gunzipped when it starts with gzip's magic bytes.

    With `limits`, every decompressed byte is counted as it is read: past the ratio or the absolute limit the
    read raises ArchiveRefused, so a gzip bomb stops after a bounded amount of work.
    """
    head = raw.read(2)
    raw.seek(0)
    if head != GZIP_MAGIC:
        return raw
    stream = gzip.GzipFile(fileobj=raw, mode="rb")
    if limits is None:
        return stream
    compressed = raw.seek(0, io.SEEK_END)
    raw.seek(0)
    budget = DecompressionBudget(limits, compressed, what="the gzip upload decompresses")
    return CountingReader(stream, budget)


def iter_text(stream: Readable) -> Iterator[str]:
    """Decode a byte stream as strict UTF-8 in chunks, refusing binary data with a precise reason."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0
    first = True
    while True:
        try:
            chunk = stream.read(_READ_CHUNK)
        except (OSError, EOFError, zlib.error) as exc:
            raise IngestError(f"the gzip stream is corrupt or truncated ({exc}); upload a complete file") from exc
        if first:
            first = False
            for magic, what in _KNOWN_BINARY.items():
                if chunk.startswith(magic):
                    raise IngestError(
                        f"the upload is {what}, not text; upload UTF-8 .txt or .jsonl (optionally gzip-compressed)"
                    )
        if not chunk:
            break
        nul = chunk.find(b"\x00")
        if nul >= 0:
            raise IngestError(
                f"the upload looks binary (a NUL byte at offset {offset + nul}); "
                "upload UTF-8 .txt or .jsonl (optionally gzip-compressed)"
            )
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise IngestError(
                f"the upload is not valid UTF-8 (byte offset {offset + exc.start}: {exc.reason}); re-encode it as UTF-8"
            ) from exc
        offset += len(chunk)
        if text:
            yield text
    try:
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise IngestError("the upload ends in the middle of a UTF-8 character; re-encode it as UTF-8") from exc
    if tail:
        yield tail


def iter_lines(chunks: Iterator[str]) -> Iterator[str]:
    """Lines with normalised newlines (no trailing `\\n`), from text chunks."""
    pending = ""
    for chunk in chunks:
        buffer = (pending + chunk).replace("\r\n", "\n")
        # A chunk may end between `\r` and `\n`: keep a trailing `\r` for the next round.
        if buffer.endswith("\r"):
            buffer, pending_cr = buffer[:-1], "\r"
        else:
            pending_cr = ""
        buffer = buffer.replace("\r", "\n")
        parts = buffer.split("\n")
        pending = parts.pop() + pending_cr
        if len(pending) > MAX_LINE_CHARS:
            raise IngestError(
                f"a line is longer than {MAX_LINE_CHARS:,} characters; split the text into lines "
                "(or, for .jsonl, documents) of reasonable length"
            )
        yield from parts
    pending = pending.replace("\r", "\n")
    if pending:
        yield from pending.split("\n")


def iter_txt_documents(lines: Iterator[str], stats: IngestStats) -> Iterator[str]:
    """Documents of a text file: runs of lines separated by blank lines."""
    current: list[str] = []
    size = 0
    for line in lines:
        if line.strip():
            current.append(line)
            size += len(line) + 1
            if size > MAX_DOCUMENT_CHARS:
                yield "\n".join(current[:-1]) if len(current) > 1 else current[0]
                current = current[-1:] if len(current) > 1 else []
                size = sum(len(x) + 1 for x in current)
        elif current:
            yield "\n".join(current)
            current, size = [], 0
    if current:
        yield "\n".join(current)


def iter_jsonl_documents(lines: Iterator[str], stats: IngestStats) -> Iterator[str]:
    """Documents of a JSONL file: the `text` field of each line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IngestError(
                f"line {number} is not valid JSON ({exc.msg}); each line must be one JSON object"
            ) from exc
        if not isinstance(record, dict) or "text" not in record:
            raise IngestError(f'line {number} has no "text" field; each line must be an object like {{"text": "..."}}')
        text = record["text"]
        if not isinstance(text, str):
            raise IngestError(f'line {number}: "text" must be a string, got {type(text).__name__}')
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if not text.strip():
            stats.drop("empty text")
            continue
        yield text


def split_corpus(
    raw: BinaryIO,
    *,
    fmt: str,
    validation_fraction: float,
    train_out: BinaryIO,
    validation_out: BinaryIO,
    limits: ArchiveLimits | None = None,
) -> IngestStats:
    """Decode `raw` (gunzipped within `limits`), split it into documents and write them as JSONL to the two splits."""
    stats = IngestStats()
    lines = iter_lines(iter_text(open_decompressed(raw, limits)))
    documents = iter_jsonl_documents(lines, stats) if fmt == "jsonl" else iter_txt_documents(lines, stats)
    _write_splits(documents, stats, validation_fraction, train_out, validation_out)
    if stats.documents == 0:
        raise IngestError("the upload holds no text (every document was empty)")
    return stats


def split_archive(
    archive: Path,
    kind: str,
    *,
    limits: ArchiveLimits,
    max_file_bytes: int,
    validation_fraction: float,
    train_out: BinaryIO,
    validation_out: BinaryIO,
) -> IngestStats:
    """Read an archive of text files (`zip` or `tar`), one document per file, into the two splits.

    Raises ArchiveRefused for an unsafe or damaged archive, IngestError when no file holds text.
    """
    counts = ArchiveStats(type=kind)
    stats = IngestStats(archive=counts)
    documents = iter_archive_documents(archive, kind, limits=limits, max_file_bytes=max_file_bytes, counts=counts)
    _write_splits(documents, stats, validation_fraction, train_out, validation_out)
    if stats.documents == 0:
        raise IngestError(
            f"the archive holds no text file: of its {counts.files} files, {counts.skipped_binary} are binary, "
            f"{counts.skipped_too_large} larger than {max_file_bytes:,} bytes (SELFSUP_ARCHIVE_MAX_FILE_BYTES) and "
            f"{counts.skipped_empty} empty; upload UTF-8 text files"
        )
    return stats


def iter_archive_documents(
    archive: Path, kind: str, *, limits: ArchiveLimits, max_file_bytes: int, counts: ArchiveStats
) -> Iterator[str]:
    """One document per UTF-8 text file of the archive; binary, too large and empty files are skipped and counted."""
    for member in iter_members(archive, kind, limits=limits):
        if member.is_dir:
            continue
        counts.files += 1
        if member.declared_size > max_file_bytes:  # skipped unread (a tar stream still counts its bytes)
            counts.skipped_too_large += 1
            continue
        with member.open() as source:
            data = _read_at_most(source, max_file_bytes + 1)
        if len(data) > max_file_bytes:
            counts.skipped_too_large += 1
            continue
        text = _decode_text(data)
        if text is None:
            counts.skipped_binary += 1
            continue
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if not text.strip():
            counts.skipped_empty += 1
            continue
        counts.text_files += 1
        yield from _cut_long_document(text)


def _read_at_most(source: Readable, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size < limit and (block := source.read(min(_READ_CHUNK, limit - size))):
        parts.append(block)
        size += len(block)
    return b"".join(parts)


def _decode_text(data: bytes) -> str | None:
    """The file's text, or None when it is binary: a NUL byte, or not valid UTF-8."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _cut_long_document(text: str) -> Iterator[str]:
    """The text as one document, or cut at line ends into pieces of at most `MAX_DOCUMENT_CHARS`."""
    while len(text) > MAX_DOCUMENT_CHARS:
        cut = text.rfind("\n", 0, MAX_DOCUMENT_CHARS)
        cut = cut if cut > 0 else MAX_DOCUMENT_CHARS
        head, text = text[:cut], text[cut:].lstrip("\n")
        if head.strip():
            yield head
    if text.strip():
        yield text


def _write_splits(
    documents: Iterable[str],
    stats: IngestStats,
    validation_fraction: float,
    train_out: BinaryIO,
    validation_out: BinaryIO,
) -> None:
    for doc in documents:
        stats.documents += 1
        stats.characters += len(doc)
        record = (json.dumps({"text": doc}, ensure_ascii=False) + "\n").encode("utf-8")
        if is_validation(doc, validation_fraction):
            validation_out.write(record)
            stats.validation_documents += 1
        else:
            train_out.write(record)
            stats.train_documents += 1


def rebalance_tiny_split(
    train_docs: list[str], validation_docs: list[str], *, validation_fraction: float
) -> tuple[list[str], list[str]]:
    """When hashing left one side empty, move the last documents (or the end of the only one) to validation."""
    docs = train_docs + validation_docs
    if len(docs) >= 2:
        k = max(1, round(len(docs) * validation_fraction))
        validation = docs[-k:]
        held_out = set(validation)
        train = [d for d in docs[:-k] if d not in held_out]
        if train:
            return train, validation
    text = docs[0] if len(docs) == 1 else "\n".join(docs)
    cut = int(len(text) * (1 - validation_fraction))
    newline = text.rfind("\n", 0, cut)
    if newline > 0 and len(text) - newline > 1:
        cut = newline
    cut = min(max(cut, 1), len(text) - 1) if len(text) > 1 else 1
    return [text[:cut]], [text[cut:].lstrip("\n") or text[cut:]]


def read_jsonl_texts(stream: BinaryIO) -> Iterator[str]:
    """The `text` of each line of a split written by `split_corpus`."""
    for line in io.TextIOWrapper(stream, encoding="utf-8"):
        if line.strip():
            yield json.loads(line)["text"]
