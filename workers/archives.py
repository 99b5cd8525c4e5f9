"""Read an uploaded tar or zip archive safely: names, entry types, counts and decompressed bytes checked as it goes.

One reader, `iter_members`, serves both uses: a model upload is extracted to a folder (`extract_archive`), a
corpus archive is read member by member into documents (`workers/data/documents.py`), nothing written to disk.
The standard library reads the formats (`tarfile`, streaming; `zipfile`; `gzip`, `bz2`, `lzma`); the checks are
ours, applied to every entry before its bytes are read (ASVS V5 file handling):

- names: no absolute path (`/x`, `C:\\x`), no `..` component, no backslash or NUL;
- types: regular files and folders only, no symbolic or hard links, devices, FIFOs (tar), no symlink
  mode bits (zip), no encrypted zip entries, zip entries stored or deflated only (Python's bzip2 and lzma
  zip readers inflate a whole compressed block at once, so their memory could not be bounded);
- counts: at most `max_files` entries (files and folders) in all; a zip's count is read from its end record
  before its central directory is loaded;
- sizes: decompressed bytes are counted as they are read (headers' declared sizes are not trusted), and reading
  stops past `max_bytes` in total, or past `max_ratio` bytes per archive byte (a decompression bomb). For a
  compressed tar the whole decompressed stream counts (headers and skipped members too), since it is inflated
  whatever the reader keeps. `DecompressionBudget` and `CountingReader` apply the same limits to a gzip corpus.

For tar, Python's own `tarfile.data_filter` (PEP 706) vets each member too, as a second line of defence; its
refusal is reported like ours. Extraction writes with `open(..., "xb")` under a folder the caller discards on
refusal (the blob store's staging folder), so a refused archive leaves nothing.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

_CHUNK = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
# Folders and files that archivers add on their own; skipped (they still count as entries).
_JUNK = {"__MACOSX", ".DS_Store"}
# `tarfile.data_filter` resolves a member's name against a destination; reading without extracting, names are
# resolved against this folder, which is never created.
_NO_DESTINATION = "/nonexistent/selfsup-archive"
# Errors the readers raise on damaged, truncated or unsupported input.
_DAMAGED = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, zlib.error, lzma.LZMAError)

GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


class Readable(Protocol):
    """A stream of bytes to read and close: a file, a decompressor, an archive member."""

    def read(self, size: int = ..., /) -> bytes: ...

    def close(self) -> None: ...


class ArchiveRefused(ValueError):
    """The archive is unsafe or unreadable; the message says why."""


@dataclass(frozen=True)
class ArchiveLimits:
    """How much one archive (or compressed upload) may hold, and the settings that say so (named in refusals)."""

    max_files: int
    max_bytes: int
    max_ratio: float
    files_setting: str = "SELFSUP_MODEL_MAX_FILES"
    bytes_setting: str = "SELFSUP_MODEL_MAX_BYTES"
    # The ratio applies past this many bytes only: a tiny archive inflates far beyond 100x (a tar pads to
    # 10 KiB, which gzip turns into a few bytes) without being a bomb.
    ratio_floor_bytes: int = 0


class DecompressionBudget:
    """Counts decompressed bytes against the ratio and the absolute limit; raises ArchiveRefused past either."""

    def __init__(self, limits: ArchiveLimits, compressed_bytes: int, *, what: str = "the archive extracts") -> None:
        self.limits = limits
        self.compressed_bytes = max(1, compressed_bytes)
        self.what = what
        self.allowed_by_ratio = max(limits.max_ratio * self.compressed_bytes, limits.ratio_floor_bytes)
        self.inflated = 0

    def count(self, n: int) -> None:
        """Count `n` more decompressed bytes, before they are used."""
        self.inflated += n
        if self.inflated > self.allowed_by_ratio:
            raise ArchiveRefused(
                f"{self.what} to more than {self.limits.max_ratio:g} times its own size of "
                f"{self.compressed_bytes:,} bytes (SELFSUP_ARCHIVE_MAX_RATIO): refused as a decompression bomb"
            )
        if self.inflated > self.limits.max_bytes:
            raise ArchiveRefused(
                f"{self.what} to more than {self.limits.max_bytes:,} bytes ({self.limits.bytes_setting})"
            )


class CountingReader:
    """A read-only stream whose every byte is counted against a budget before the caller sees it."""

    def __init__(self, stream: Readable, budget: DecompressionBudget) -> None:
        self.stream = stream
        self.budget = budget

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (a bounded chunk at a time when `size` is negative)."""
        if size is None or size < 0:
            parts = []
            while block := self.read(_CHUNK):
                parts.append(block)
            return b"".join(parts)
        data = self.stream.read(size)
        self.budget.count(len(data))
        return data

    def close(self) -> None:
        """Close the wrapped stream."""
        self.stream.close()

    def __enter__(self) -> CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decompressing_reader(raw: BinaryIO) -> tuple[Readable, str | None]:
    """`raw` read through the decompressor its first bytes name (gzip, bzip2, xz), and that name; else itself."""
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb"), "gzip"
    if head.startswith(BZIP2_MAGIC):
        return bz2.BZ2File(raw, mode="rb"), "bzip2"
    if head.startswith(XZ_MAGIC):
        return lzma.LZMAFile(raw, mode="rb"), "xz"
    return raw, None


@dataclass
class _Budget:
    """Counts entries against the file limit, and decompressed bytes through its DecompressionBudget."""

    limits: ArchiveLimits
    bytes: DecompressionBudget
    entries: int = 0

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_files:
            raise ArchiveRefused(
                f"the archive holds more than the {self.limits.max_files} entries allowed ({self.limits.files_setting})"
            )


@dataclass(frozen=True)
class ArchiveMember:
    """One checked entry: its safe name, whether it is a folder, its declared size, and a way to read it.

    Read a member before asking for the next one (a tar is read as a forward-only stream).
    """

    name: str  # relative, `/`-separated, normalised; "" for the archive's root folder
    is_dir: bool
    declared_size: int  # what the header says: fine for skipping, never trusted as a bound
    _open: Callable[[], Readable] = field(repr=False)

    def open(self) -> _MemberReader:
        """The member's bytes; reading them counts against the limits, and damage raises ArchiveRefused."""
        return _MemberReader(self._open(), self.name)


class _MemberReader:
    """A member's stream whose read errors (a truncated or corrupt archive) become ArchiveRefused."""

    def __init__(self, stream: Readable, name: str) -> None:
        self.stream = stream
        self.name = name

    def read(self, size: int = -1) -> bytes:
        try:
            return self.stream.read(size)
        except _DAMAGED as exc:
            raise ArchiveRefused(
                f"entry {self.name!r} cannot be read, the archive is damaged or truncated: {exc}"
            ) from exc

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> _MemberReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def safe_member_name(name: str) -> str:
    """The relative, `/`-separated path of an archive entry ("" for the root); ArchiveRefused if it is unsafe."""
    if "\x00" in name or "\\" in name:
        raise ArchiveRefused(f"entry {name!r}: backslashes and NUL bytes are not allowed in names")
    if name.startswith("/") or _DRIVE.match(name):
        raise ArchiveRefused(f"entry {name!r}: absolute paths are not allowed")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveRefused(f"entry {name!r}: `..` in a path is not allowed (it could write outside the folder)")
    return "/".join(parts)


def archive_kind(path: Path) -> str:
    """`zip` when the file starts like one, else `tar` (plain or compressed; the tar reader says if it is not)."""
    with open(path, "rb") as fh:
        return "zip" if fh.read(4) in ZIP_MAGICS else "tar"


def iter_members(archive: Path, fmt: str, *, limits: ArchiveLimits) -> Iterator[ArchiveMember]:
    """The entries of `archive` (`tar` or `zip`), each checked before it is yielded; ArchiveRefused when unsafe."""
    budget = _Budget(limits=limits, bytes=DecompressionBudget(limits, archive.stat().st_size))
    if fmt == "tar":
        yield from _tar_members(archive, budget)
    elif fmt == "zip":
        yield from _zip_members(archive, budget)
    else:
        raise ArchiveRefused(f"unknown archive format {fmt!r}")


def _tar_members(archive: Path, budget: _Budget) -> Iterator[ArchiveMember]:
    try:
        with open(archive, "rb") as raw:
            stream, _ = decompressing_reader(raw)
            # "r|": a forward-only stream, so no member is read twice or out of order; every decompressed byte
            # (headers, padding, members nobody reads) passes the budget.
            with CountingReader(stream, budget.bytes) as counted, tarfile.open(fileobj=counted, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    yield _checked_tar_member(tar, member, budget)
    except _DAMAGED as exc:
        raise ArchiveRefused(f"the tar archive is damaged or truncated: {exc}") from exc


def _checked_tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo, budget: _Budget) -> ArchiveMember:
    budget.entry()
    name = safe_member_name(member.name)
    if member.issym() or member.islnk():
        raise ArchiveRefused(f"entry {member.name!r}: links are not allowed (it points to {member.linkname!r})")
    if not (member.isfile() or member.isdir()):
        raise ArchiveRefused(
            f"entry {member.name!r}: only regular files and folders are allowed, not devices, FIFOs "
            "or other special entries"
        )
    try:
        tarfile.data_filter(member, _NO_DESTINATION)
    except tarfile.FilterError as exc:
        raise ArchiveRefused(f"entry {member.name!r}: {exc}") from exc

    def open_member() -> Readable:
        source = tar.extractfile(member)
        if source is None:
            raise ArchiveRefused(f"entry {member.name!r} cannot be read")
        return source

    return ArchiveMember(name=name, is_dir=member.isdir(), declared_size=member.size, _open=open_member)


def _zip_entry_count(archive: Path) -> int | None:
    """The entry count a zip's end record declares, read before `zipfile` loads the whole central directory."""
    end_record = getattr(zipfile, "_EndRecData", None)  # private, but stable since Python 2; skip if ever gone
    if end_record is None:
        return None
    with open(archive, "rb") as fh:
        record: Any = end_record(fh)
    return int(record[zipfile._ECD_ENTRIES_TOTAL]) if record else None  # type: ignore[attr-defined]


def _zip_members(archive: Path, budget: _Budget) -> Iterator[ArchiveMember]:
    try:
        declared = _zip_entry_count(archive)
        if declared is not None and declared > budget.limits.max_files:
            raise ArchiveRefused(
                f"the archive holds {declared} entries, more than the {budget.limits.max_files} entries "
                f"allowed ({budget.limits.files_setting})"
            )
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            if len(infos) > budget.limits.max_files:
                raise ArchiveRefused(
                    f"the archive holds {len(infos)} entries, more than the {budget.limits.max_files} entries "
                    f"allowed ({budget.limits.files_setting})"
                )
            for info in infos:
                yield _checked_zip_member(zf, info, budget)
    except _DAMAGED + (NotImplementedError,) as exc:
        raise ArchiveRefused(f"the zip archive is damaged or uses an unsupported feature: {exc}") from exc


def _checked_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget) -> ArchiveMember:
    budget.entry()
    name = safe_member_name(info.filename)
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode) if info.create_system == 3 else 0  # made on Unix: the mode says what it is
    if kind:  # (0: no type recorded, as Python's `writestr` leaves it: a file or, ending in /, a folder)
        if stat.S_ISLNK(mode):
            raise ArchiveRefused(f"entry {info.filename!r}: links are not allowed")
        if kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveRefused(
                f"entry {info.filename!r}: only regular files and folders are allowed, not devices, "
                "FIFOs or other special entries"
            )
    if info.flag_bits & 0x1:
        raise ArchiveRefused(f"entry {info.filename!r} is encrypted")
    if not info.is_dir() and info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ArchiveRefused(
            f"entry {info.filename!r} uses compression method {info.compress_type}: only stored and deflated "
            "entries are read (re-create the zip with the default deflate compression)"
        )
    return ArchiveMember(
        name=name,
        is_dir=info.is_dir(),
        declared_size=info.file_size,
        _open=lambda: CountingReader(zf.open(info), budget.bytes),
    )


def extract_archive(archive: Path, fmt: str, dest: Path, *, limits: ArchiveLimits) -> list[ExtractedFile]:
    """Extract `archive` (`tar` or `zip`) into the empty folder `dest`; a single top-level folder is unwrapped.

    An entry may not repeat or overwrite another. Raises ArchiveRefused (leaving partial output in `dest`,
    for the caller to discard).
    """
    names: set[str] = set()
    for member in iter_members(archive, fmt, limits=limits):
        target = _target(dest, member.name, names)
        if target is None:
            continue
        if member.is_dir:
            _mkdirs(target, member.name)
            continue
        with member.open() as source:
            _write_file(target, member.name, source)
    _unwrap_single_folder(dest)
    return _describe(dest)


@dataclass(frozen=True)
class ExtractedFile:
    """One written file: its path inside the folder, its size and sha256."""

    name: str
    bytes: int
    sha256: str


def _target(dest: Path, name: str, names: set[str]) -> Path | None:
    """Where an entry goes (None for the root or archivers' junk); refuses a repeated name."""
    if not name or name.split("/")[0] in _JUNK or name.rsplit("/", 1)[-1] in _JUNK:
        return None
    if name in names:
        raise ArchiveRefused(f"entry {name!r} appears twice in the archive")
    names.add(name)
    target = dest.joinpath(*name.split("/"))
    # Defence in depth: the checked name cannot leave `dest`, and no link exists inside it to follow.
    if not target.resolve().is_relative_to(dest.resolve()):
        raise ArchiveRefused(f"entry {name!r} would be written outside the folder")
    return target


def _mkdirs(target: Path, name: str) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ArchiveRefused(f"entry {name!r} is both a file and a folder in the archive") from exc


def _write_file(target: Path, name: str, source: Readable) -> None:
    _mkdirs(target.parent, name)
    try:
        out = open(target, "xb")  # noqa: SIM115 - closed below; "x" never overwrites an earlier entry
    except (FileExistsError, IsADirectoryError) as exc:
        raise ArchiveRefused(f"entry {name!r} is both a file and a folder in the archive") from exc
    with out:
        while block := source.read(_CHUNK):  # counted as read, before it is written: the limit holds on disk
            out.write(block)


def _unwrap_single_folder(dest: Path) -> None:
    """`tar -czf m.tgz my-model` puts everything under `my-model/`: lift it to the top."""
    children = list(dest.iterdir())
    if len(children) != 1 or not children[0].is_dir():
        return
    inner = children[0]
    with _renamed_aside(inner) as aside:
        for child in list(aside.iterdir()):
            child.rename(dest / child.name)


@contextmanager
def _renamed_aside(folder: Path) -> Iterator[Path]:
    aside = folder.with_name(f".unwrap-{folder.name}")
    folder.rename(aside)
    yield aside
    aside.rmdir()


def _describe(dest: Path) -> list[ExtractedFile]:
    files = []
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(_CHUNK):
                digest.update(block)
        files.append(ExtractedFile(path.relative_to(dest).as_posix(), path.stat().st_size, digest.hexdigest()))
    return files
