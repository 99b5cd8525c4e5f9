"""Process helpers shared by the supervisor, the embedded broker and the workers."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import signal
import sys

_PR_SET_PDEATHSIG = 1
# glibc's mallopt parameters, and the largest mmap threshold it accepts on 64-bit (32 MiB).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


def die_with_parent() -> None:
    """Run in a child before exec: it gets SIGTERM when its parent dies, so nothing outlives `selfsup up`.

    Linux only; elsewhere the supervisor's own shutdown is the only guard.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def keep_freed_memory(*, trim_threshold: int = 1024**3) -> bool:
    """Make glibc's malloc keep memory it gets back instead of returning it to the kernel; True if applied.

    By default glibc serves allocations above a threshold (128 KiB, rising to at most 32 MiB as large
    blocks are freed) with a fresh `mmap`, and trims the heap as soon as its free top passes twice that,
    so a training loop, which frees and re-allocates the same activations and gradients every step,
    pays thousands of page faults per step, each a zeroed page (bench/allocator.py measures it).
    Raising both thresholds keeps those pages mapped: the process's memory stays at its peak, which a
    training worker reaches again every step anyway.
    Linux with glibc only; elsewhere (musl, macOS) nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def freeze_imported_objects() -> None:
    """Call once a long-lived process has imported what it runs (torch, transformers, our modules): the cyclic
    garbage collector never scans those objects again.

    They live as long as the process anyway. Every full collection otherwise walks them all (millions of
    objects with torch and transformers loaded), and so does the interpreter's finalization: a worker took
    seconds, on a busy machine five, to exit after its warm shutdown, each time a service stops or restarts
    a worker. A prefork worker's children also share these pages with the parent instead of copying them
    when the collector would touch them (what `gc.freeze` is documented for).
    """
    gc.collect()
    gc.freeze()
