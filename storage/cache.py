"""A process's local copies of blobs from an object store, for what must be read as files (memory maps, loaders).

Blobs under a key never change once written (a new version gets a new key), so a copy is fetched once and then
reused. Each key gets its own entry, named by a digest of the key: `datasets/k` and `datasets/k/tokenizer` are two
entries, never one folder nested in the other, so a partial copy can never pass for a whole one. An entry appears
by a rename of a finished download, so a reader never sees half of one, and two processes fetching the same key at
once both end up with the same complete entry.

This class is deliberately small: what to bound and how to verify (sizes, sha256) is for a subclass or a wrapper
to add around `get`, `entry_path` and `evict`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


class BlobCache:
    """Entries under `root`, one per key: a file or a folder, whatever the blob under the key is."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries = root / "entries"

    def entry_path(self, key: str) -> Path:
        """Where `key`'s copy lives (whether or not it is there yet); readable, but unique per key."""
        key = key.rstrip("/")
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return self.entries / f"{digest}-{key.rsplit('/', 1)[-1]}"

    def get(self, key: str, fetch: Callable[[Path], None]) -> Path:
        """The local copy of `key`, made by `fetch(tmp)` (which writes a file or a folder at `tmp`) if it is missing.

        `fetch` raises FileNotFoundError when nothing is stored under the key; then nothing is kept.
        """
        final = self.entry_path(key)
        if final.exists():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".tmp-{uuid.uuid4().hex}-{final.name}")
        try:
            fetch(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.exists():  # another process finished the same copy first: keep theirs
                    raise
        finally:
            _remove(tmp)
        return final

    def evict(self, key: str) -> None:
        """Forget `key`'s copy (the next `get` fetches it again)."""
        _remove(self.entry_path(key))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
