"""Fault injection for the failure-mode tests: crash a trainer at a chosen point, on purpose.

Set `SELFSUP_FAULT_INJECTION` (refused in production) to one of:
- `raise_at_step:N`: raise after step N, every run (a job that always crashes);
- `exit_at_step:N`: kill the worker process after step N, once per job;
- `exit_before_checkpoint_rename:V`: kill the worker after checkpoint version V is written but before it
  is renamed into place, once per job;
- `kill_rank_at_step:N`: SIGKILL rank 1 of a job on several devices after step N, once per job (the
  others see a dead peer, as when a GPU process crashes).
- `compile_error`: `torch.compile` gets a backend that fails, as a broken compiler toolchain would (the job
  must go on eager).
"Once" is remembered by a marker file in the data directory, so the resumed run goes through.
A suffix `@NAME` limits the fault to jobs called NAME, so a clean reference job can run beside it. Several
faults, comma-separated, let one service serve several fault tests (`raise_at_step:30@crash-loop,compile_error@x`):
a job gets the first one that applies to it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class InjectedFault(RuntimeError):
    """A crash on purpose."""


@dataclass(frozen=True)
class Faults:
    """The configured fault for one job, if any."""

    kind: str | None
    value: int
    job_id: str
    marker_dir: Path
    # Which of the job's processes this is (0 on one device).
    rank: int = 0

    @classmethod
    def parse(cls, spec: str | None, *, job_id: str, job_name: str, marker_dir: Path, rank: int = 0) -> Faults:
        """Read `SELFSUP_FAULT_INJECTION` for one job (in its process of rank `rank`)."""
        known = ("raise_at_step", "exit_at_step", "exit_before_checkpoint_rename", "kill_rank_at_step", "compile_error")
        chosen: tuple[str, int] | None = None
        for item in (spec or "").split(","):
            fault, _, only = item.strip().partition("@")
            if not fault:
                continue
            kind, _, value = fault.partition(":")
            if kind not in known:
                raise ValueError(f"unknown fault {fault!r}")
            if chosen is None and (not only or only == job_name):
                chosen = (kind, int(value or 0))
        if chosen is None:
            return cls(None, 0, job_id, marker_dir, rank)
        return cls(chosen[0], chosen[1], job_id, marker_dir, rank)

    def _first_time(self) -> bool:
        marker = self.marker_dir / f"{self.job_id}-{self.kind}-{self.value}"
        if marker.exists():
            return False
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        return True

    def after_step(self, step: int) -> None:
        """Called after every optimizer step."""
        if step != self.value:
            return
        if self.kind == "raise_at_step":
            raise InjectedFault(f"injected fault at step {step}")
        if self.kind == "exit_at_step" and self.rank == 0 and self._first_time():
            os._exit(137)
        if self.kind == "kill_rank_at_step" and self.rank == 1 and self._first_time():
            os.kill(os.getpid(), signal.SIGKILL)

    def before_checkpoint_rename(self, version: int) -> None:
        """Called when a checkpoint's files are written and fsynced, before the rename."""
        if self.kind == "exit_before_checkpoint_rename" and version == self.value and self._first_time():
            os._exit(137)

    def compile_backend(self, configured: str) -> str | Callable[..., Any]:
        """The `torch.compile` backend to use: the configured one, or under `compile_error` one that fails."""
        if self.kind != "compile_error":
            return configured

        def failing_backend(graph: Any, example_inputs: Any) -> Any:
            raise InjectedFault("injected compile failure")

        return failing_backend
