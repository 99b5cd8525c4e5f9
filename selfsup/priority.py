"""CPU priority and cores of the cpu worker: ingest, tokenization and curation yield the CPU to training.

Ingest and tokenization use every core they are given (tokenizers' Rayon pool, curation's processes), so on
a machine that also trains they took the trainer's cores: a job slowed about 3× while a 40,000-document
corpus was tokenized. Capping their threads would waste a dedicated ingest machine's cores; a lower
priority costs nothing there and, where a trainer shares the machine, lets the kernel give it the CPU first
(Linux CFS weighs nice 10 against nice 0 about 1 to 10). The niceness is inherited by everything the worker
starts: Celery's pool processes, curation's processes, the tokenizers' threads.

Niceness only orders processes that CFS compares directly: with `sched_autogroup` (most desktop and many
server kernels) the CPU is first shared equally between sessions, so `selfsup up` keeps its workers in its
own session (each in a process group of its own). Workers started apart (two systemd units, two terminals)
are shared by their cgroups or sessions: give the training one the larger share there (e.g. `CPUWeight=`).

Priority alone did not reliably keep a CPU trainer at 0.8 of its speed (`bench/ingest_isolation.py`: 0.777-0.796
at nice 10 in three runs and 0.833 in a fourth, 0.783 at nice 12; one core: 0.869 and 0.883). A trainer on every
core leaves short gaps between its operators, which any priority gives to the tokenizers, and a tokenizer thread
running on a core the trainer's other thread waits for stalls the whole step.
So where the two share a machine (`selfsup up`), the cpu worker's corpus work also runs on the cores the
trainer leaves, at least one (`SELFSUP_CPU_WORKER_THREADS`, `corpus_cores`); a dedicated ingest machine keeps
every core.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("selfsup.priority")

MAX_NICE = 19


def current_nice() -> int:
    """This process's niceness (0 where the platform has none)."""
    return os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0


def lower_priority(nice: int) -> int:
    """Run this process (and what it starts) at niceness `nice` at least; returns the niceness it runs at.

    Never raises priority (that needs privileges, and a worker started under `nice -n 15` stays there).
    """
    if not hasattr(os, "setpriority") or nice <= 0:
        return current_nice()
    target = min(MAX_NICE, max(nice, current_nice()))
    try:
        os.setpriority(os.PRIO_PROCESS, 0, target)
    except OSError as exc:
        log.warning("could not lower the worker's CPU priority to nice %s: %s", target, exc)
    return current_nice()


def autogroup(pid: int | str = "self") -> str | None:
    """The scheduler autogroup a process is in (`/autogroup-12`), None without autogroup support."""
    try:
        return Path(f"/proc/{pid}/autogroup").read_text().split()[0]
    except (OSError, IndexError):
        return None


def corpus_cores(torch_threads: int | None, *, cores: int | None = None, gpu: bool | None = None) -> int:
    """Cores for corpus work beside a trainer on the same machine: those the trainer leaves, at least one.

    A CPU trainer uses `torch_threads` cores (unset: all of them); a GPU trainer drives its device from one.
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    gpu = has_nvidia_gpu() if gpu is None else gpu
    trainer = torch_threads or (1 if gpu else cores)
    return max(1, cores - trainer)


def has_nvidia_gpu() -> bool:
    """Whether the NVIDIA driver reports a GPU (without importing torch, which costs a process seconds)."""
    try:
        return any(Path("/proc/driver/nvidia/gpus").iterdir())
    except OSError:
        return False


def limit_corpus_threads(threads: int) -> None:
    """Run this process's tokenization on `threads` cores: the tokenizers' Rayon pool reads this when it starts,
    so call it before anything encodes."""
    os.environ["RAYON_NUM_THREADS"] = str(threads)
