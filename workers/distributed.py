"""A job on several devices: the worker launches one `torchrun` process per job and watches it.

`torchrun` (torch.distributed.run, on a free port of this machine) starts `resources.devices` processes
that run this module, one per device. Rank 0 is the job's run as on one device (`workers.train.JobRun`,
under the worker's lease: metrics, events, checkpoints, the ending); the other ranks only train, following
rank 0's order before every step (`workers/training/ranks.py`), so every rank stops together on cancel,
pause, SIGTERM (the worker's stop reaches rank 0 through a stop file) and lease loss.

A rank that dies ends the others (torchrun tears the group down) and fails the attempt: unless rank 0
ended the job itself (it writes what happened to a result file), the worker requeues the job as a crash,
and the restart rules apply (`training.max_restarts`). The processes die with the worker: torchrun and
every rank get SIGTERM when their parent dies, and the worker kills torchrun's process group if it leaves
while they run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from selfsup.logs import configure_logging, enter_log_context
from selfsup.processes import die_with_parent
from selfsup.settings import Settings, get_settings
from selfsup.spec import JobSpec
from storage.blobs import get_blob_store
from storage.tables import Job
from workers.faults import Faults
from workers.train import JobRun, load_claimed, open_trainer, requeue_crashed, run_to_its_end
from workers.training.ranks import Ranks, join_process_group
from workers.training.trainer import TrainingDiverged

log = logging.getLogger(__name__)

# How often the worker looks at its torchrun process and its own stop signal.
_WATCH_SECONDS = 0.5


def train_on_devices(job: Job, *, owner: str, settings: Settings, should_stop: Callable[[], bool]) -> str:
    """Train a claimed job on `job.devices` processes and wait for them; returns what happened."""
    with tempfile.TemporaryDirectory(prefix=f"selfsup-{job.id}-") as folder:
        result, stop = Path(folder) / "result.json", Path(folder) / "stop"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # a rendezvous on this machine, on a port the OS picks free
            f"--nproc-per-node={job.devices}",
            "--max-restarts=0",  # a dead rank fails the attempt; the job's restart rules decide what follows
            "--monitor-interval=0.5",
            "-m",
            __name__,
            job.id,
            owner,
            str(result),
            str(stop),
        ]
        threads = str(settings.torch_threads or 1)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
        log.info("job %s: training on %d devices (torchrun)", job.id, job.devices)
        # Its own process group, so the worker (not a signal to the worker's group) decides when it stops.
        process = subprocess.Popen(command, env=env, preexec_fn=die_with_parent, start_new_session=True)  # noqa: PLW1509
        try:
            while process.poll() is None:
                if should_stop() and not stop.exists():
                    stop.touch()  # rank 0 checkpoints and hands the job back at its next step
                try:
                    process.wait(timeout=_WATCH_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if process.poll() is None:  # the worker is leaving while they run: take them along
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        said = json.loads(result.read_text(encoding="utf-8")) if result.exists() else {}
    if "outcome" in said:
        return str(said["outcome"])
    error = f"a training process failed (torchrun exited with code {process.returncode})"
    if "error" in said:
        error += f"; rank 0: {said['error']}"
    log.error("job %s: %s", job.id, error)
    return requeue_crashed(job.id, owner, error)


def _lead(ranks: Ranks, job_id: str, owner: str, result: Path, stop: Path) -> None:
    """Rank 0: the job's run, under the worker's lease; what happened goes to `result` for the worker."""
    settings = get_settings()
    run = JobRun(
        load_claimed(job_id),
        owner=owner,
        settings=settings,
        store=get_blob_store(),
        should_stop=stop.exists,
        ranks=ranks,
    )
    try:
        said = {"outcome": run_to_its_end(run)}
    except Exception as exc:
        said = {"error": f"{type(exc).__name__}: {exc}"}
        raise
    finally:
        result.write_text(json.dumps(said), encoding="utf-8")


def _follow(ranks: Ranks, job_id: str) -> None:
    """Ranks 1 and up: the same trainer and train step, on their rows of each batch, while rank 0 orders steps."""
    settings = get_settings()
    rows = load_claimed(job_id)
    assert rows.dataset is not None
    spec = JobSpec.model_validate(rows.job.spec)
    trainer, _ = open_trainer(spec, get_blob_store(), rows.dataset, rows.heldout, ranks)
    faults = Faults.parse(
        settings.fault_injection,
        job_id=job_id,
        job_name=rows.job.name,
        marker_dir=settings.resolved_home / "faults",
        rank=ranks.rank,
    )
    if not ranks.order(False):  # rank 0 could not set the run up
        return
    trainer.join_ranks()
    try:
        while ranks.order(False):
            trainer.train_step()
            faults.after_step(trainer.step)
    except TrainingDiverged:  # rank 0 saw the same numbers and fails the job; nothing to add
        return


def main(argv: list[str]) -> None:
    """One rank of a job on several devices (torchrun runs this): `JOB_ID OWNER RESULT_FILE STOP_FILE`."""
    die_with_parent()
    job_id, owner, result, stop = argv
    settings = get_settings()
    configure_logging(settings.log_format)
    import torch

    torch.set_num_threads(settings.torch_threads or 1)
    ranks = join_process_group()
    enter_log_context(job_id=job_id, rank=str(ranks.rank))
    try:
        if ranks.first:
            _lead(ranks, job_id, owner, Path(result), Path(stop))
        else:
            _follow(ranks, job_id)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
