"""Writing a blob file past the page cache (`O_DIRECT`), where the filesystem allows it.

A buffered `write()` copies every byte into the kernel's page cache, and on a virtual machine whose memory the host
hands back and forth (Firecracker with `virtio_balloon`, as this project's benchmark machine is) a page the guest
has not touched lately costs a trip to the host: writing 1 GiB into the page cache ran at 300-420 MB/s there, the
same write with `O_DIRECT` at 1,300-1,600 MB/s (fsync included), and an upload through the API went from 327-546
to 715-839 MB/s with about half the API's CPU per GiB (bench/README.md, "Writing past the page cache"). `cp` does not
pay the price either: it copies in the kernel (`copy_file_range`).

How: bytes are gathered in a page-aligned 4 MiB buffer (an anonymous `mmap`) and written from it in whole blocks at
block-aligned offsets, as `O_DIRECT` requires, by the file's own thread while a second buffer fills; the last,
partial block is zero-padded, written, and cut off with `ftruncate`. After a `flush()` the file goes on buffered
(`O_DIRECT` cleared), since the next write would start mid-block. Where the filesystem refuses `O_DIRECT` (tmpfs
before Linux 6.6 at `open`; some FUSE and network filesystems at the first write) the file is written the ordinary
way. The data is not in the page cache afterwards: its first reader reads the disk.
"""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
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
            # Linux checks O_DIRECT after O_CREAT made the file, so the refusal leaves it behind. It is ours: with
            # O_EXCL, a file already there would have been EEXIST.
            path.unlink(missing_ok=True)
        else:
            return cast(BinaryIO, _FlushingThrough(raw, buffer_size=_SMALL_WRITES_BUFFER))
    return open(path, "xb")


class _FlushingThrough(io.BufferedWriter):
    """io.BufferedWriter's `flush` leaves the raw file's own buffer alone; this one flushes that too."""

    def flush(self) -> None:
        super().flush()
        self.raw.flush()


class _DirectFile(io.RawIOBase):
    """A file written with O_DIRECT from aligned buffers (see the module's docstring).

    An O_DIRECT write returns only once the device has the data, so a full buffer is written by a thread of the
    file's own while the caller fills the other one: hashing and receiving go on during the disk's time. At most one
    write is in flight, so the writes land in order."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_DIRECT, 0o644)
        self._buffers = [mmap.mmap(-1, BUFFER_BYTES)]  # page-aligned, as O_DIRECT needs its memory to be
        self._views = [memoryview(self._buffers[0])]
        self._view = self._views[0]  # the buffer being filled
        self._used = 0  # bytes waiting in it
        self._size = 0  # bytes taken so far
        self._direct = True
        self._writer: ThreadPoolExecutor | None = None  # started at the first full buffer
        self._in_flight: Future[None] | None = None

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: Buffer, /) -> int:
        """Take as much of `data` as the buffer holds (all of it once the file is buffered), handing the buffer to
        the writing thread when full."""
        piece = memoryview(data).cast("B")
        if not self._direct:
            self._settle()
            self._write_waiting()
            written = os.write(self._fd, piece)
            self._size += written
            return written
        taken = min(len(piece), BUFFER_BYTES - self._used)
        self._view[self._used : self._used + taken] = piece[:taken]
        self._used += taken
        self._size += taken
        if self._used == BUFFER_BYTES:
            self._hand_over()
        return taken

    def flush(self) -> None:
        """Write everything taken: the last block zero-padded, then the file cut back to its real size; the file goes
        on buffered from here."""
        if self.closed:
            return
        self._settle()
        if self._direct and self._used:
            length = -(-self._used // BLOCK) * BLOCK
            self._view[self._used : length] = bytes(length - self._used)
            self._write_out(self._view, length)
            self._used = 0
            os.ftruncate(self._fd, self._size)
            self._go_buffered()
            os.lseek(self._fd, self._size, os.SEEK_SET)
        self._write_waiting()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self._used = 0  # what could not be written goes with the file; IOBase.close's own flush finds nothing
            if self._writer is not None:
                self._writer.shutdown(wait=True)
            os.close(self._fd)
            for view, buffer in zip(self._views, self._buffers, strict=True):
                view.release()
                with contextlib.suppress(BufferError):  # a failed write's traceback may still hold a slice of it
                    buffer.close()  # (if so, the buffer goes with the traceback)
            super().close()

    def _hand_over(self) -> None:
        """Write the full buffer in the writing thread (after the one in flight) and go on filling the other."""
        self._settle()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-write")
            self._buffers.append(mmap.mmap(-1, BUFFER_BYTES))
            self._views.append(memoryview(self._buffers[1]))
        self._in_flight = self._writer.submit(self._write_out, self._view, BUFFER_BYTES)
        self._view = self._views[1] if self._view is self._views[0] else self._views[0]
        self._used = 0

    def _settle(self) -> None:
        """Wait for the write in flight; its error is raised here."""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.result()

    def _write_waiting(self) -> None:
        """Write what waits in the buffer as it is (the file is buffered by now)."""
        if self._used:
            self._write_out(self._view, self._used)
            self._used = 0

    def _write_out(self, view: memoryview, length: int) -> None:
        done = 0
        while done < length:
            try:
                done += os.write(self._fd, view[done:length])
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self._direct:
                    raise
                self._go_buffered()  # the filesystem took O_DIRECT at open but not these writes

    def _go_buffered(self) -> None:
        import fcntl  # POSIX only, as O_DIRECT is

        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self._direct = False
