"""The blob store: corpora, tokenized arrays and checkpoints, addressed by `/`-separated keys.

`BlobStore` is the small interface both stores implement: `LocalBlobStore` keeps blobs in a folder,
`storage.s3.S3BlobStore` in an S3-compatible bucket; `SELFSUP_BLOB_URL` picks one. In the folder, every
write lands under a temporary name, is fsynced, then renamed into place, so a reader never sees a
half-written blob, and a refused write leaves no file and no folder behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Protocol

from selfsup.settings import get_settings
from storage.cache import BlobCache, CorruptBlobError
from storage.direct_io import open_for_writing
from storage.keys import join_key

CHUNK_SIZE = 1024 * 1024

# Checks a local copy of a blob: None if it is good, else what is wrong.
Verify = Callable[[Path], str | None]


class BlobStoreUnavailable(RuntimeError):
    """The blob store did not answer or refused a request (an object store's outage or throttling): the caller can
    retry later; nothing was kept of a write that raised it."""


class BlobStoreFull(BlobStoreUnavailable):
    """The blob folder has no room for a write (its disk or the user's quota is full, or a file-size limit was hit):
    nothing was kept; it goes again once an operator frees space."""


# What a write answers when there is no room: a full disk, a full quota, a file-size limit (RLIMIT_FSIZE).
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class BlobStore(Protocol):
    """What selfsup needs from storage for files; `LocalBlobStore` implements it, an object store could.

    Keys are `/`-separated and built by `storage.keys`. Nothing here promises a local file: a caller
    that must have one (a memory map, a model loader) asks `local_copy`, which an object store serves
    by downloading into a worker-side cache.
    """

    def writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A file to write `key` into; it appears only when the block exits without error."""

    def staging_dir(
        self, prefix: str, *, before_rename: Callable[[], None] | None = None
    ) -> AbstractContextManager[Path]:
        """A local folder whose files appear under `prefix` together, only when the block succeeds."""

    def open(self, key: str) -> BinaryIO:
        """Read `key` from its start, as a stream."""

    def open_range(
        self, key: str, start: int = 0, end: int | None = None, *, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[bytes]:
        """The bytes of `key` from `start` up to (not including) `end`, or to its end, in chunks."""

    def exists(self, key: str) -> bool:
        """Whether `key` is stored."""

    def list_children(self, prefix: str) -> list[str]:
        """The keys one level below `prefix` (files and sub-prefixes alike); empty if there are none."""

    def local_copy(self, prefix: str, *, verify: Verify | None = None) -> Path:
        """A local, read-only file or folder holding what is stored under `prefix`, which never changes once written;
        FileNotFoundError if nothing is.

        `verify(path)` (None: fine, else what is wrong) checks it against the sha256s recorded when it was
        written; a copy that fails is fetched again, and `CorruptBlobError` says the store itself is bad."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every blob under `prefix`."""

    def sweep_orphans(self, prefix: str, *, older_than: float) -> list[str]:
        """Remove what interrupted writers left under `prefix`."""

    def presigned_url(self, key: str, *, expires: int, content_disposition: str | None = None) -> str | None:
        """A short-lived URL a client can GET `key` from directly, or None where the store has none (a folder)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore:
    """Blobs as files under one folder."""

    def __init__(self, root: Path, *, direct_writes: bool = True) -> None:
        self.root = root
        self.direct_writes = direct_writes  # past the page cache where the filesystem allows (storage/direct_io.py)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The file behind `key`; refuses keys that would escape the store."""
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid blob key: {key!r}")
        return self.root / key

    def _scratch(self, key: str) -> Path:
        """Where a write of `key` is staged: in the deepest of its folders that exists already (at least its
        top-level one, `corpora/`), so a refused write creates no folder, and the sweeper of that one finds it."""
        final = self.path(key)
        folder = final.parent
        while folder != self.root and not folder.is_dir() and folder.parent != self.root:
            folder = folder.parent
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f".tmp-{uuid.uuid4().hex}-{final.name}"

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """Write `key` atomically: temporary file, fsync, then (only now) its folder, rename, fsync the folder."""
        final = self.path(key)
        tmp = self._scratch(key)
        try:
            with open_for_writing(tmp, direct=self.direct_writes) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            if exc.errno in _NO_ROOM:
                raise BlobStoreFull(f"no room in the blob folder for {key}: {exc.strerror}") from exc
            raise
        finally:
            tmp.unlink(missing_ok=True)

    def open(self, key: str) -> BinaryIO:
        """Read `key`."""
        return open(self.path(key), "rb")

    def open_range(
        self, key: str, start: int = 0, end: int | None = None, *, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[bytes]:
        """The bytes of `key` in [`start`, `end`), read in chunks; the file is opened before the first one."""
        fh = self.open(key)
        return _read_range(fh, start, end, chunk_size)

    def list_children(self, prefix: str) -> list[str]:
        """The files and folders directly inside `prefix`'s folder."""
        folder = self.path(prefix.rstrip("/"))
        if not folder.is_dir():
            return []
        return sorted(join_key(prefix, child.name) for child in folder.iterdir())

    def local_copy(self, prefix: str, *, verify: Verify | None = None) -> Path:
        """The stored file or folder itself: blobs are local already, so nothing is copied (only verified)."""
        path = self.path(prefix.rstrip("/"))
        if not path.exists():
            raise FileNotFoundError(prefix)
        problem = verify(path) if verify is not None else None
        if problem is not None:
            raise CorruptBlobError(prefix, problem)
        return path

    def exists(self, key: str) -> bool:
        """Whether `key` is stored."""
        return self.path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        """Remove the folder or file under `prefix`."""
        target = self.path(prefix.rstrip("/"))
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)

    @contextmanager
    def staging_dir(self, prefix: str, *, before_rename: Callable[[], None] | None = None) -> Iterator[Path]:
        """A scratch folder that becomes `prefix` atomically on success (used for checkpoints, datasets).

        If `prefix` already exists (another writer won a race), the staged copy is discarded.
        """
        final = self.path(prefix.rstrip("/"))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".tmp-{uuid.uuid4().hex}-{final.name}")
        tmp.mkdir()
        try:
            yield tmp
            for folder, _dirs, files in os.walk(tmp):
                for name in files:
                    with open(os.path.join(folder, name), "rb") as fh:
                        os.fsync(fh.fileno())
                _fsync_dir(Path(folder))
            if before_rename is not None:
                before_rename()
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
            _fsync_dir(final.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def sweep_orphans(self, prefix: str, *, older_than: float) -> list[str]:
        """Remove temporary files and folders, and empty folders, under `prefix` untouched for `older_than` seconds.

        They are what a writer killed mid-write (an API process during an upload, a trainer during a
        checkpoint) leaves behind; a live writer keeps touching its file, so it is never swept. Empty
        folders are what older versions left for every refused upload (a folder made before the bytes were
        accepted); a folder is only made now right before a file is renamed into it.
        """
        root = self.path(prefix.rstrip("/"))
        if not root.exists():
            return []
        cutoff = time.time() - older_than
        removed = []
        for path in list(root.rglob(".tmp-*")):
            try:
                if path.stat().st_mtime > cutoff:
                    continue
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(str(path.relative_to(self.root)))
            except FileNotFoundError:
                continue
        # Deepest first, so a folder that only held empty folders goes too; never `root` itself.
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                if folder.stat().st_mtime > cutoff or any(folder.iterdir()):
                    continue
                folder.rmdir()
                removed.append(str(folder.relative_to(self.root)))
            except (FileNotFoundError, OSError):
                continue  # gone already, or a writer just renamed a file into it
        return removed

    def presigned_url(self, key: str, *, expires: int, content_disposition: str | None = None) -> str | None:
        """None: a folder has no URL of its own, so the API streams the file itself."""
        return None


def _read_range(fh: BinaryIO, start: int, end: int | None, chunk_size: int) -> Iterator[bytes]:
    with fh:
        fh.seek(start)
        remaining = None if end is None else end - start
        while remaining is None or remaining > 0:
            block = fh.read(chunk_size if remaining is None else min(chunk_size, remaining))
            if not block:
                return
            if remaining is not None:
                remaining -= len(block)
            yield block


def get_blob_store() -> BlobStore:
    """The configured blob store: a bucket for `SELFSUP_BLOB_URL=s3://…`, else the local folder."""
    settings = get_settings()
    location = settings.s3_location
    if location is None:
        return LocalBlobStore(settings.resolved_blob_dir, direct_writes=settings.blob_direct_writes)
    return _s3_store(*location, settings.resolved_cache_dir, os.getpid())


@lru_cache(maxsize=4)
def _s3_store(bucket: str, prefix: str, cache_dir: Path, pid: int) -> BlobStore:
    """One client per process (keyed by pid: a forked worker must not share its parent's connections)."""
    from storage.s3 import S3BlobStore  # boto3 is imported only where an object store is configured

    return S3BlobStore(bucket, prefix, cache=BlobCache(cache_dir))
