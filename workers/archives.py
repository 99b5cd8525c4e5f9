"""Extract an uploaded tar or zip archive safely: names, entry types, counts and sizes checked as it goes.

The standard library reads the formats (`tarfile`, streaming; `zipfile`); the checks are ours, applied to
every entry before anything is written (ASVS V5 file handling):

- names: no absolute path (`/x`, `C:\\x`), no `..` component, no backslash or NUL; an entry may not
  repeat or overwrite another;
- types: regular files and folders only, no symbolic or hard links, devices, FIFOs (tar), no symlink
  mode bits (zip), no encrypted zip entries;
- counts: at most `max_files` entries (files and folders) in all;
- sizes: bytes are counted as they are written (headers' declared sizes are not trusted), and extraction
  stops past `max_bytes` in total, or past `max_ratio` bytes written per archive byte (a decompression bomb).

For tar, Python's own `tarfile.data_filter` (PEP 706) vets each member too, as a second line of defence; its
refusal is reported like ours. Extraction writes with `open(..., "xb")` under a folder the caller discards on
refusal (the blob store's staging folder), so a refused archive leaves nothing.
"""

from __future__ import annotations

import hashlib
import re
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_CHUNK = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
# Folders and files that archivers add on their own; skipped (they still count as entries).
_JUNK = {"__MACOSX", ".DS_Store"}


class ArchiveRefused(ValueError):
    """The archive is unsafe or unreadable; the message says why."""


@dataclass(frozen=True)
class ArchiveLimits:
    """How much one archive may hold."""

    max_files: int
    max_bytes: int
    max_ratio: float


@dataclass(frozen=True)
class ExtractedFile:
    """One written file: its path inside the folder, its size and sha256."""

    name: str
    bytes: int
    sha256: str


@dataclass
class _Budget:
    """Counts entries and written bytes against the limits."""

    limits: ArchiveLimits
    archive_bytes: int
    entries: int = 0
    written: int = 0
    names: set[str] = field(default_factory=set)

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_files:
            raise ArchiveRefused(
                f"the archive holds more than the {self.limits.max_files} entries allowed (SELFSUP_MODEL_MAX_FILES)"
            )

    def write(self, n: int) -> None:
        self.written += n
        if self.written > self.limits.max_ratio * self.archive_bytes:
            raise ArchiveRefused(
                f"the archive extracts to more than {self.limits.max_ratio:g} times its own size of "
                f"{self.archive_bytes:,} bytes (SELFSUP_ARCHIVE_MAX_RATIO): refused as a decompression bomb"
            )
        if self.written > self.limits.max_bytes:
            raise ArchiveRefused(
                f"the archive extracts to more than {self.limits.max_bytes:,} bytes (SELFSUP_MODEL_MAX_BYTES)"
            )


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


def extract_archive(archive: Path, fmt: str, dest: Path, *, limits: ArchiveLimits) -> list[ExtractedFile]:
    """Extract `archive` (`tar` or `zip`) into the empty folder `dest`; a single top-level folder is unwrapped.

    Raises ArchiveRefused (leaving partial output in `dest`, for the caller to discard).
    """
    budget = _Budget(limits=limits, archive_bytes=max(1, archive.stat().st_size))
    if fmt == "tar":
        _extract_tar(archive, dest, budget)
    elif fmt == "zip":
        _extract_zip(archive, dest, budget)
    else:
        raise ArchiveRefused(f"unknown archive format {fmt!r}")
    _unwrap_single_folder(dest)
    return _describe(dest)


def _extract_tar(archive: Path, dest: Path, budget: _Budget) -> None:
    try:
        # "r|*": a forward-only stream (plain, gzip, bz2 or xz), so no member is read twice or out of order.
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                budget.entry()
                name = safe_member_name(member.name)
                if member.issym() or member.islnk():
                    raise ArchiveRefused(
                        f"entry {member.name!r}: links are not allowed (it points to {member.linkname!r})"
                    )
                if not (member.isfile() or member.isdir()):
                    raise ArchiveRefused(
                        f"entry {member.name!r}: only regular files and folders are allowed, not devices, FIFOs "
                        "or other special entries"
                    )
                try:
                    tarfile.data_filter(member, str(dest))
                except tarfile.FilterError as exc:
                    raise ArchiveRefused(f"entry {member.name!r}: {exc}") from exc
                if member.isdir():
                    _make_folder(dest, name, budget)
                    continue
                source = tar.extractfile(member)
                if source is None:
                    raise ArchiveRefused(f"entry {member.name!r} cannot be read")
                with source:
                    _write_file(dest, name, source, budget)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveRefused(f"the tar archive is damaged or truncated: {exc}") from exc


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            if len(infos) > budget.limits.max_files:
                raise ArchiveRefused(
                    f"the archive holds {len(infos)} entries, more than the {budget.limits.max_files} entries "
                    "allowed (SELFSUP_MODEL_MAX_FILES)"
                )
            for info in infos:
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
                if info.is_dir():
                    _make_folder(dest, name, budget)
                    continue
                with zf.open(info) as source:
                    _write_file(dest, name, source, budget)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as exc:
        raise ArchiveRefused(f"the zip archive is damaged or uses an unsupported feature: {exc}") from exc


def _target(dest: Path, name: str, budget: _Budget) -> Path | None:
    """Where an entry goes (None for the root or archivers' junk); refuses a repeated name."""
    if not name or name.split("/")[0] in _JUNK or name.rsplit("/", 1)[-1] in _JUNK:
        return None
    if name in budget.names:
        raise ArchiveRefused(f"entry {name!r} appears twice in the archive")
    budget.names.add(name)
    target = dest.joinpath(*name.split("/"))
    # Defence in depth: the checked name cannot leave `dest`, and no link exists inside it to follow.
    if not target.resolve().is_relative_to(dest.resolve()):
        raise ArchiveRefused(f"entry {name!r} would be written outside the folder")
    return target


def _make_folder(dest: Path, name: str, budget: _Budget) -> None:
    target = _target(dest, name, budget)
    if target is not None:
        _mkdirs(dest, target, name)


def _mkdirs(dest: Path, target: Path, name: str) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ArchiveRefused(f"entry {name!r} is both a file and a folder in the archive") from exc


def _write_file(dest: Path, name: str, source: IO[bytes], budget: _Budget) -> None:
    target = _target(dest, name, budget)
    if target is None:
        return
    _mkdirs(dest, target.parent, name)
    try:
        out = open(target, "xb")  # noqa: SIM115 - closed below; "x" never overwrites an earlier entry
    except (FileExistsError, IsADirectoryError) as exc:
        raise ArchiveRefused(f"entry {name!r} is both a file and a folder in the archive") from exc
    with out:
        while block := source.read(_CHUNK):
            budget.write(len(block))  # counted before it is written: the limit is never passed on disk
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
