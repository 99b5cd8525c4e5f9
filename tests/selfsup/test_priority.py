"""The cpu worker that `selfsup up` starts runs at a lower CPU priority than training (SELFSUP_CPU_WORKER_NICE)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfsup.priority import autogroup
from selfsup.settings import Settings
from tests.service import Service

REPO = Path(__file__).resolve().parents[2]
_TWICE = "from selfsup.priority import lower_priority as p; print(p(5), p(3))"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _children(pid: int) -> dict[int, str]:
    """The command lines of `pid`'s child processes."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): state, ppid, …
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def _nice(pid: int) -> int:
    """Field 19 of /proc/PID/stat: the niceness."""
    return int((Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split())[16])


def test_the_cpu_worker_that_selfsup_up_starts_yields_the_cpu_to_training(embedded_service: Service) -> None:
    workers = {pid: cmd for pid, cmd in _children(embedded_service.process.pid).items() if " worker " in cmd}
    cpu = [pid for pid, cmd in workers.items() if "--queues cpu " in cmd]
    gpu = [pid for pid, cmd in workers.items() if "--queues gpu " in cmd]
    assert len(cpu) == 1 and len(gpu) == 1, workers
    started_at = _nice(embedded_service.process.pid)  # the test run's own niceness (e.g. under `nice -n 10`)
    configured = Settings.model_fields["cpu_worker_nice"].default
    assert _nice(cpu[0]) == min(19, max(started_at, configured)), workers
    # Training keeps the priority the service was started with.
    assert _nice(gpu[0]) == started_at
    # In one session, so one scheduler autogroup: there niceness orders them (between sessions CFS shares equally).
    assert autogroup(cpu[0]) == autogroup(gpu[0]), (autogroup(cpu[0]), autogroup(gpu[0]))
    assert os.getpgid(cpu[0]) != os.getpgid(gpu[0])  # each in a group of its own (killed as one on shutdown)
    log = embedded_service.log_path.read_text(errors="replace")
    assert f"cpu queue at nice {_nice(cpu[0])}" in log, log[-3000:]


def test_lower_priority_never_raises_it() -> None:
    # In a child, so the test run keeps its priority.
    out = subprocess.run(
        [sys.executable, "-c", _TWICE], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )
    first, second = map(int, out.stdout.split())
    start = os.getpriority(os.PRIO_PROCESS, 0)
    assert first == max(5, start)
    assert second == first  # asked for less than it has: kept (raising priority needs privileges)
