"""CPU priority of the cpu worker: ingest, tokenization and curation yield the CPU to training.

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
