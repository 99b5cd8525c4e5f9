"""`SELFSUP_API_NICE`: the API runs at a lower CPU priority, so training on the same machine keeps the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service import REPO, SELFSUP, TEST_SETTINGS, running_api

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _nice(pid: int) -> int:
    """Field 19 of /proc/PID/stat: the niceness."""
    return int((Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split())[16])


def test_the_api_runs_at_the_niceness_it_is_given(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFSUP_")}
    env.update(TEST_SETTINGS)
    env.update({"SELFSUP_HOME": str(tmp_path), "SELFSUP_API_NICE": "5"})
    subprocess.run([*SELFSUP, "migrate"], env=env, cwd=REPO, check=True, capture_output=True, timeout=120)
    log_path = tmp_path / "api.log"
    # Generous: at a lower priority on a busy machine (a test run beside it) the API starts slowly.
    with running_api(env, log_path, timeout=180) as (_, api):
        # At least 5 (a test run started under `nice -n 10` keeps its 10: priority is never raised); the log line
        # says so either way.
        expected = max(5, os.getpriority(os.PRIO_PROCESS, 0))
        assert _nice(api.pid) == expected
        assert f"at nice {expected}" in log_path.read_text(errors="replace")
