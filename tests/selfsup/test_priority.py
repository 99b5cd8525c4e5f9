"""The cpu worker that `selfsup up` starts yields the CPU to training: a lower priority (SELFSUP_CPU_WORKER_NICE) and
the cores the trainer leaves (SELFSUP_CPU_WORKER_THREADS)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfsup.priority import autogroup, corpus_cores
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
    # Corpus work on the cores the trainer leaves; the trainer keeps its own setting.
    torch_threads = _environ(gpu[0]).get("SELFSUP_TORCH_THREADS")
    cores = corpus_cores(int(torch_threads) if torch_threads else None)
    assert _environ(cpu[0])["SELFSUP_CPU_WORKER_THREADS"] == str(cores)
    assert "SELFSUP_CPU_WORKER_THREADS" not in _environ(gpu[0])
    assert f"corpus work on {cores} core{'' if cores == 1 else 's'}" in log, log[-3000:]


def _environ(pid: int) -> dict[str, str]:
    """The environment a process was started with."""
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)


@pytest.mark.parametrize(
    ("torch_threads", "cores", "gpu", "expected"),
    [
        (None, 2, False, 1),  # a CPU trainer on every core: one left, at least
        (2, 8, False, 6),
        (None, 16, True, 15),  # a GPU trainer drives its device from one core
        (4, 2, False, 1),
    ],
)
def test_corpus_work_gets_the_cores_the_trainer_leaves(torch_threads, cores, gpu, expected) -> None:  # type: ignore[no-untyped-def]
    assert corpus_cores(torch_threads, cores=cores, gpu=gpu) == expected


_THREADS_AFTER_ENCODING = """
import os, sys
from selfsup.priority import limit_corpus_threads
limit_corpus_threads(int(sys.argv[1]))
from tokenizers import Tokenizer, models, pre_tokenizers
tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
before = len(os.listdir("/proc/self/task"))
tokenizer.encode_batch(["a a b"] * 20000)
print(len(os.listdir("/proc/self/task")) - before)
"""


def test_limit_corpus_threads_sizes_the_tokenizers_thread_pool() -> None:
    def started(limit: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _THREADS_AFTER_ENCODING, limit],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if k not in ("RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")},
        )
        return int(out.stdout.split()[-1])

    assert started("1") == 1
    assert started("3") == 3


def test_lower_priority_never_raises_it() -> None:
    # In a child, so the test run keeps its priority.
    out = subprocess.run(
        [sys.executable, "-c", _TWICE], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )
    first, second = map(int, out.stdout.split())
    start = os.getpriority(os.PRIO_PROCESS, 0)
    assert first == max(5, start)
    assert second == first  # asked for less than it has: kept (raising priority needs privileges)
