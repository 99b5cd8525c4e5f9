"""Writing a blob file past the page cache (`O_DIRECT`), where the filesystem allows it.

A buffered `write()` copies every byte into the kernel's page cache, and on a virtual machine whose memory the host
hands back and forth (Firecracker with `virtio_balloon`, as this project's benchmark machine is) a page the guest
has not touched lately costs a trip to the host: writing 1 GiB into the page cache ran at 300-420 MB/s there, the
same write with `O_DIRECT` at 1,300-1,600 MB/s (fsync included), and an upload through the API went from 305-474
to 575-760 MB/s with half the API's CPU per GiB (bench/README.md, "Writing past the page cache"). `cp` does not pay
the price either: it copies in the kernel (`copy_file_range`).

How: bytes are gathered in one page-aligned 4 MiB buffer (an anonymous `mmap`) and written from it in whole blocks
at block-aligned offsets, as `O_DIRECT` requires; the last, partial block is zero-padded, written, and cut off with
`ftruncate`. After a `flush()` the file goes on buffered (`O_DIRECT` cleared), since the next write would start
mid-block. Where the filesystem refuses `O_DIRECT` (tmpfs before Linux 6.6 at `open`; some FUSE and network
filesystems at the first write) the file is written the ordinary way. The data is not in the page cache afterwards:
its first reader reads the disk.
"""

from __future__ import annotations

import errno
import io
import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

# Offsets and lengths of O_DIRECT writes are multiples of this: the largest logical block size of common devices
# (512 or 4096 bytes); a device that needs more refuses the write with EINVAL and the file goes on buffered.
BLOCK = 4096
BUFFER_BYTES = 4 * 1024 * 1024
# Small writes (a JSON line at a time) are gathered by io.BufferedWriter first, in C, and reach the raw file in
# pieces of at least this much.
_SMALL_WRITES_BUFFER = 256 * 1024


def open_for_writing(path: Path, *, direct: bool) -> BinaryIO:
    """A new file at `path` (which must not exist) for writing; with `direct`, through `O_DIRECT` where the
    filesystem takes it. `flush()` puts everything written so far into the file, so that `os.fsync(f.fileno())`
    makes it durable."""
    if direct and hasattr(os, "O_DIRECT"):
        try:
            raw = _DirectFile(path)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this filesystem has no O_DIRECT
                raise
        else:
            return cast(BinaryIO, _FlushingThrough(raw, buffer_size=_SMALL_WRITES_BUFFER))
    return open(path, "xb")


class _FlushingThrough(io.BufferedWriter):
    """io.BufferedWriter's `flush` leaves the raw file's own buffer alone; this one flushes that too."""

    def flush(self) -> None:
        super().flush()
        self.raw.flush()


class _DirectFile(io.RawIOBase):
    """A file written with O_DIRECT from an aligned buffer (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_DIRECT, 0o644)
        self._buffer = mmap.mmap(-1, BUFFER_BYTES)  # page-aligned, as O_DIRECT needs its memory to be
        self._view = memoryview(self._buffer)
        self._used = 0  # bytes waiting in the buffer
        self._size = 0  # bytes written so far, the buffer's included
        self._direct = True

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: Buffer, /) -> int:
        """Take as much of `data` as the buffer holds (all of it once buffered), writing the buffer when full."""
        piece = memoryview(data).cast("B")
        if not self._direct:
            written = os.write(self._fd, piece)
            self._size += written
            return written
        taken = min(len(piece), BUFFER_BYTES - self._used)
        self._view[self._used : self._used + taken] = piece[:taken]
        self._used += taken
        self._size += taken
        if self._used == BUFFER_BYTES:
            self._write_buffer(BUFFER_BYTES)
        return taken

    def flush(self) -> None:
        """Write what the buffer holds: its last block zero-padded, then cut back to the real size; the file goes on
        buffered from here."""
        if self.closed or not self._direct or self._used == 0:
            return
        length = -(-self._used // BLOCK) * BLOCK
        self._view[self._used : length] = bytes(length - self._used)
        self._write_buffer(length)
        os.ftruncate(self._fd, self._size)
        self._go_buffered()
        os.lseek(self._fd, self._size, os.SEEK_SET)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._view.release()
            self._buffer.close()
            super().close()

    def _write_buffer(self, length: int) -> None:
        done = 0
        while done < length:
            try:
                done += os.write(self._fd, self._view[done:length])
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self._direct:
                    raise
                self._go_buffered()  # the filesystem took O_DIRECT at open but not these writes
        self._used = 0

    def _go_buffered(self) -> None:
        import fcntl  # POSIX only, as O_DIRECT is

        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self._direct = False
