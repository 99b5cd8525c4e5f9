"""The suite's own guard (tests/conftest.py): a process a test leaves running is ended and named at the end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from tests.service import REPO

LEAKING_TEST = """
import subprocess
from pathlib import Path


def test_that_leaks_a_process():
    leaked = subprocess.Popen(["sleep", "1000"])
    Path({pid_file!r}).write_text(str(leaked.pid))
"""


def test_a_process_a_test_leaves_running_is_killed_and_named(tmp_path: Path) -> None:
    pid_file = tmp_path / "leaked.pid"
    (tmp_path / "test_leak.py").write_text(LEAKING_TEST.format(pid_file=str(pid_file)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    # A pytest of its own, with this suite's conftest as a plugin: its session ends with the sleep still running.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    pid = int(pid_file.read_text())
    assert "killed 1 process(es) the tests left running:" in done.stdout, done.stdout
    assert f"{pid} sleep 1000" in done.stdout, done.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
