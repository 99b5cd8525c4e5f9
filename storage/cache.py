"""A worker's local copies of blobs: downloaded once per machine, verified, bounded, least recently used evicted.

An object store has no local files, yet a worker needs some (token arrays to memory-map, a checkpoint to load).
`BlobCache.get(prefix, download)` gives a local file or folder holding what is stored under `prefix`, which never
changes once written (datasets, checkpoints, models are immutable), so a copy never goes stale.

Layout of `SELFSUP_CACHE_DIR`:

    .lock                  taken (exclusively, briefly) to add or evict entries
    entries/<name>/        one entry: `data` (the file or folder) and `used` (its mtime: the last use)
    entries/<name>.pin     a process using the entry holds a shared lock on it
    .tmp-<random>/         a download in progress, renamed into `entries/` only once complete and verified

Several processes on one machine share the cache safely:
- A download lands in a temporary folder and is renamed into place, so nobody sees half a copy; the `.lock` makes
  two processes that want the same entry download it once.
- A process that gets an entry holds a shared `flock` on its `.pin` file until `release_all()` (every Celery
  task calls it when it ends: `workers/tasks.py`) or until it exits (the kernel drops the lock even on SIGKILL).
  Eviction takes the pin exclusively without waiting, so an entry in use (memory-mapped, being loaded) is
  never removed.
- The least recently used unpinned entries are evicted until the new entry fits under `SELFSUP_CACHE_MAX_BYTES`.
  If pinned entries alone leave no room, the new entry is kept anyway (a job must run) and a warning logged; an
  entry larger than the whole bound is refused, naming the setting to raise.

Verification: `get(..., verify=...)` runs the caller's check (sha256s recorded when the blob was written) on a
fresh download and on the first use of an entry by each task; a copy that fails it is removed and downloaded
again once, and a second failure is an error (the store itself holds bad bytes).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from selfsup.settings import get_settings

logger = logging.getLogger(__name__)

DATA = "data"
USED = "used"

_PINS: dict[Path, dict[str, IO[bytes]]] = {}
_VERIFIED: dict[Path, set[str]] = {}


class CacheError(RuntimeError):
    """A blob cannot be cached: larger than the whole cache, or still corrupt after a fresh download."""


class CorruptBlobError(CacheError):
    """What the blob store itself holds under a prefix fails its check (a fresh copy is no better)."""

    def __init__(self, prefix: str, problem: str) -> None:
        super().__init__(f"{prefix} is corrupt in the blob store: {problem}")
        self.problem = problem


@dataclass(frozen=True)
class CacheEntry:
    """One cached prefix, as eviction sees it."""

    name: str
    size_bytes: int
    last_used: float


def entry_name(prefix: str) -> str:
    """The entry folder of a prefix: a digest, so nested prefixes (a dataset and its tokenizer) never collide."""
    return hashlib.sha256(prefix.rstrip("/").encode()).hexdigest()[:40]


def tree_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class BlobCache:
    """Local copies of immutable blobs under `root`, at most `max_bytes` of them (see the module docstring)."""

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = root
        self.max_bytes = get_settings().cache_max_bytes if max_bytes is None else max_bytes
        self.entries = root / "entries"
        self.entries.mkdir(parents=True, exist_ok=True)
        # Entries this process uses (the open pin files holding their shared locks) and those it verified: kept
        # per process, not per object, since a store (and its cache object) may be built for every call.
        self._pins = _PINS.setdefault(self.root.resolve(), {})
        self._verified = _VERIFIED.setdefault(self.root.resolve(), set())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _pin(self, name: str) -> None:
        if name in self._pins:
            return
        fh = open(self.entries / f"{name}.pin", "a+b")  # noqa: SIM115 - held open: the lock lives as long as it
        fcntl.flock(fh, fcntl.LOCK_SH)
        self._pins[name] = fh

    def release(self) -> None:
        """Drop this process's pins: its entries may be evicted again (call when a job is done with them)."""
        for fh in self._pins.values():
            fh.close()
        self._pins.clear()
        self._verified.clear()

    def get(
        self,
        prefix: str,
        download: Callable[[Path], None],
        *,
        verify: Callable[[Path], str | None] | None = None,
        expected_bytes: int | None = None,
    ) -> Path:
        """The local copy of `prefix`, downloaded by `download(target)` (which writes the file or folder `target`)
        unless cached; pinned for this process, marked used, and checked by `verify` (None: fine, else what is
        wrong). `expected_bytes`, when known, lets eviction make room before the download."""
        name = entry_name(prefix)
        for attempt in (1, 2):
            path = self._get_once(name, prefix, download, expected_bytes)
            if verify is None or name in self._verified:
                return path
            problem = verify(path)
            if problem is None:
                self._verified.add(name)
                return path
            logger.warning("cached copy of %s is corrupt (%s); downloading it again", prefix, problem)
            self.discard(prefix)
            if attempt == 2:
                raise CorruptBlobError(prefix, problem)
        raise AssertionError("unreachable")

    def _get_once(self, name: str, prefix: str, download: Callable[[Path], None], expected: int | None) -> Path:
        entry = self.entries / name
        with self._locked():
            if (entry / DATA).exists():
                self._pin(name)
                (entry / USED).touch()
                return entry / DATA
            # Downloading under the lock keeps two processes from fetching the same blob twice; it also
            # serialises different downloads on one machine, which share the same network link anyway.
            self._sweep_temporaries()
            if expected is not None:
                self._make_room(expected, keep=name)
            tmp = self.root / f".tmp-{uuid.uuid4().hex}"
            tmp.mkdir()
            try:
                download(tmp / DATA)
                size = tree_size(tmp / DATA)
                if size > self.max_bytes:
                    raise CacheError(
                        f"{prefix} has {size} bytes, more than SELFSUP_CACHE_MAX_BYTES={self.max_bytes}: raise it"
                    )
                self._make_room(size, keep=name)
                (tmp / USED).touch()
                os.rename(tmp, entry)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self._pin(name)
            self._verified.discard(name)
            return entry / DATA

    def entry_path(self, prefix: str) -> Path:
        """Where `prefix`'s copy lives (whether or not it is there yet)."""
        return self.entries / entry_name(prefix) / DATA

    def evict(self, prefix: str) -> None:
        """Forget `prefix`'s copy (its blobs were deleted, or it was found corrupt), pinned by this process or not."""
        self.discard(prefix)

    def discard(self, prefix: str) -> None:
        """Remove `prefix`'s copy (found corrupt by its user), even though this process has it pinned."""
        name = entry_name(prefix)
        with self._locked():
            pin = self._pins.pop(name, None)
            if pin is not None:
                pin.close()
            self._verified.discard(name)
            self._remove(name)

    def _remove(self, name: str) -> None:
        # Renamed away first, so a crash mid-delete never leaves a half entry that looks complete.
        entry = self.entries / name
        if entry.exists():
            doomed = self.root / f".tmp-{uuid.uuid4().hex}"
            os.rename(entry, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def list_entries(self) -> list[CacheEntry]:
        """Every complete entry, least recently used first."""
        found = []
        for entry in self.entries.iterdir():
            if not entry.is_dir() or not (entry / DATA).exists():
                continue
            try:
                used = (entry / USED).stat().st_mtime
            except FileNotFoundError:
                used = 0.0
            found.append(CacheEntry(name=entry.name, size_bytes=tree_size(entry / DATA), last_used=used))
        return sorted(found, key=lambda e: (e.last_used, e.name))

    def total_bytes(self) -> int:
        """Bytes held by all entries."""
        return sum(e.size_bytes for e in self.list_entries())

    def _in_use(self, name: str) -> bool:
        """Whether a live process (this one included) holds the entry's pin."""
        if name in self._pins:
            return True
        with open(self.entries / f"{name}.pin", "a+b") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False

    def _make_room(self, incoming: int, *, keep: str) -> None:
        """Evict unpinned entries, least recently used first, until `incoming` more bytes fit (lock held)."""
        entries = [e for e in self.list_entries() if e.name != keep]
        total = sum(e.size_bytes for e in entries)
        for entry in entries:
            if total + incoming <= self.max_bytes:
                return
            if self._in_use(entry.name):
                continue
            self._remove(entry.name)
            (self.entries / f"{entry.name}.pin").unlink(missing_ok=True)
            total -= entry.size_bytes
            logger.info("evicted %s (%d bytes) from the blob cache", entry.name, entry.size_bytes)
        if total + incoming > self.max_bytes:
            logger.warning(
                "blob cache over its bound (%d + %d > SELFSUP_CACHE_MAX_BYTES=%d): the rest is in use",
                total,
                incoming,
                self.max_bytes,
            )

    def _sweep_temporaries(self) -> None:
        """Remove what a process killed mid-download or mid-eviction left (lock held: none is in progress)."""
        for tmp in self.root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def release_all() -> None:
    """Drop every pin this process holds, in every cache (a training task calls it when its job is done)."""
    for pins in _PINS.values():
        for fh in pins.values():
            fh.close()
        pins.clear()
    for verified in _VERIFIED.values():
        verified.clear()
