"""The blob folder's files written past the page cache (storage/direct_io.py): byte for byte whatever the writes'
sizes, really with O_DIRECT where the filesystem takes it, and the ordinary way where it does not."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfsup.settings import get_settings
from storage.blobs import BlobStoreFull, LocalBlobStore, get_blob_store
from storage.direct_io import BLOCK, BUFFER_BYTES, open_for_writing
from tests.service import REPO

# Write sizes around every boundary: nothing, a byte, a block, a block and a byte, the whole buffer and past it,
# many small writes (as ingest writes JSON lines), and large ones (as an upload's pieces come).
PATTERNS = {
    "empty": [],
    "one byte": [1],
    "one block": [BLOCK],
    "a block and a byte": [BLOCK + 1],
    "the buffer": [BUFFER_BYTES],
    "the buffer and 3 bytes": [BUFFER_BYTES + 3],
    "small writes": [97] * 50_000,
    "large writes": [300_000] * 30 + [5],
    "mixed": [7, 2 * BUFFER_BYTES + 1, 3, BLOCK - 1],
}


def _direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def _takes_direct_io(folder: Path) -> bool:
    try:
        fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(fd)
    (folder / "probe").unlink()
    return True


@pytest.fixture
def disk_folder(tmp_path: Path) -> Path:
    if not _takes_direct_io(tmp_path):
        pytest.skip(f"{tmp_path}'s filesystem does not take O_DIRECT")
    return tmp_path


@pytest.mark.parametrize("sizes", list(PATTERNS.values()), ids=list(PATTERNS))
def test_a_blob_written_past_the_page_cache_is_byte_for_byte(disk_folder: Path, sizes: list[int]) -> None:
    store = LocalBlobStore(disk_folder / "blobs")
    pieces = [os.urandom(size) for size in sizes]
    with store.writer("corpora/cor_1/upload") as out:
        assert _direct(out.fileno())  # the folder takes O_DIRECT, so the store uses it
        for piece in pieces:
            out.write(piece)
    assert store.path("corpora/cor_1/upload").read_bytes() == b"".join(pieces)
    assert not list(store.root.rglob(".tmp-*"))


def test_flush_puts_everything_in_the_file_and_writing_goes_on(disk_folder: Path) -> None:
    """What the store's writer relies on before its fsync: after `flush()` the file holds every byte written, the
    padded last block cut back; later writes continue right after them."""
    path = disk_folder / "file"
    first, second = os.urandom(BUFFER_BYTES + 5000), os.urandom(3 * BLOCK + 11)
    with open_for_writing(path, direct=True) as out:
        out.write(first)
        out.flush()
        assert path.stat().st_size == len(first)
        assert path.read_bytes() == first
        out.write(second)
    assert path.read_bytes() == first + second


def test_the_setting_turns_it_off(disk_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFSUP_BLOB_DIR", str(disk_folder / "blobs"))
    monkeypatch.setenv("SELFSUP_BLOB_DIRECT_WRITES", "false")
    get_settings.cache_clear()
    try:
        store = get_blob_store()
        with store.writer("a/b") as out:
            assert not _direct(out.fileno())
            out.write(b"buffered")
    finally:
        get_settings.cache_clear()
    assert store.path("a/b").read_bytes() == b"buffered"  # type: ignore[attr-defined]


@pytest.mark.parametrize("refused_at", ["open", "write"])
def test_a_filesystem_that_refuses_direct_io_is_written_the_ordinary_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused_at: str
) -> None:
    """Filesystems without O_DIRECT refuse it with EINVAL, at open (tmpfs before Linux 6.6) or at the first write
    (some FUSE and network filesystems); the OS's answer is played here, and the blob must come out the same."""
    import storage.direct_io as direct_io

    real_open, real_write = os.open, os.write

    def refusing_open(path, flags, *args):  # type: ignore[no-untyped-def]
        if flags & os.O_DIRECT:  # as Linux does: the file is created, then O_DIRECT refused
            os.close(real_open(path, flags & ~os.O_DIRECT, *args))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    def refusing_write(fd, data):  # type: ignore[no-untyped-def]
        if _direct(fd):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(
        direct_io.os,
        "open" if refused_at == "open" else "write",
        {"open": refusing_open, "write": refusing_write}[refused_at],
    )
    store = LocalBlobStore(tmp_path / "blobs")
    pieces = [os.urandom(size) for size in PATTERNS["mixed"]]
    with store.writer("x/y") as out:
        for piece in pieces:
            out.write(piece)
        assert not _direct(out.fileno())
    monkeypatch.undo()
    assert store.path("x/y").read_bytes() == b"".join(pieces)


def test_a_failed_write_reaches_the_writer_and_nothing_is_kept(
    disk_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full buffer is written by the file's own thread; its error (a full disk here, the OS's answer played)
    still reaches the code writing the blob, as BlobStoreFull, and the store keeps nothing."""
    import storage.direct_io as direct_io

    real_write = os.write
    writes = 0

    def disk_full_on_the_second_write(fd, data):  # type: ignore[no-untyped-def]
        nonlocal writes
        writes += 1
        if writes == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(direct_io.os, "write", disk_full_on_the_second_write)
    store = LocalBlobStore(disk_folder / "blobs")
    with pytest.raises(BlobStoreFull, match="No space left"), store.writer("corpora/cor_1/upload") as out:
        for _ in range(4):
            out.write(os.urandom(BUFFER_BYTES))
    monkeypatch.undo()
    assert not store.exists("corpora/cor_1/upload")
    assert not list(store.root.rglob(".tmp-*"))


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_no_room_is_blob_store_full_and_nothing_is_kept(tmp_path: Path, direct: bool) -> None:
    """A write that finds no room (here a real file-size limit, RLIMIT_FSIZE, in a process of its own; a full disk
    answers the same way) raises BlobStoreFull, which the API answers with 507, and leaves no file behind."""
    script = f"""
import fcntl, os, resource, sys
from pathlib import Path
from storage.blobs import BlobStoreFull, LocalBlobStore
store = LocalBlobStore(Path({str(tmp_path / "blobs")!r}), direct_writes={direct})
resource.setrlimit(resource.RLIMIT_FSIZE, (4 * 1024 * 1024, 4 * 1024 * 1024))
try:
    with store.writer("corpora/cor_1/upload") as out:
        print("direct:", bool(fcntl.fcntl(out.fileno(), fcntl.F_GETFL) & os.O_DIRECT))
        for _ in range(3):
            out.write(os.urandom(3 * 1024 * 1024))
except BlobStoreFull as exc:
    print("full:", exc)
"""
    answer = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert answer.returncode == 0, answer.stderr
    direct_line, full_line = answer.stdout.splitlines()
    assert direct_line == f"direct: {direct and _takes_direct_io(tmp_path)}"  # the path under test was the one taken
    assert full_line.startswith("full: no room in the blob folder for corpora/cor_1/upload"), answer.stdout
    assert not [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
