"""A job on several devices: the worker launches one `torchrun` process per job and watches it.

`torchrun` (torch.distributed.run, on a free port of this machine) starts `resources.devices` processes
that run this module, one per device. Rank 0 is the job's run as on one device (`workers.train.JobRun`,
under the worker's lease: metrics, events, checkpoints, the ending); the other ranks only train, following
rank 0's order before every step (`workers/training/ranks.py`), and compile when it does (all ranks or none),
so every rank stops together on cancel, pause, SIGTERM (the worker's stop reaches rank 0 through a stop file)
and lease loss. Until rank 0 starts (torchrun and each rank import torch first: seconds), the worker keeps the
job's lease.

A rank that dies ends the others (torchrun tears the group down) and fails the attempt: unless rank 0
ended the job itself (it writes what happened to a result file), the worker requeues the job as a crash,
and the restart rules apply (`training.max_restarts`). The processes die with the worker: torchrun and
every rank get SIGTERM when their parent dies, and a worker that leaves while they run stops torchrun, which
stops its ranks.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from selfsup.logs import configure_logging, enter_log_context
from selfsup.processes import die_with_parent, freeze_imported_objects
from selfsup.settings import Settings, get_settings
from selfsup.spec import JobSpec
from storage import crud
from storage.blobs import get_blob_store
from storage.db import session_scope
from storage.tables import Job
from workers.faults import Faults
from workers.train import JobRun, load_claimed, open_trainer, requeue_crashed, run_to_its_end
from workers.training.ranks import Order, Ranks, process_group
from workers.training.trainer import TrainingDiverged

log = logging.getLogger(__name__)

# How often the worker looks at its torchrun process and its own stop signal.
_WATCH_SECONDS = 0.5
# The files of a run's folder: the worker asks rank 0 to stop; rank 0 says it started, then what happened.
_STOP, _LEADING, _RESULT = "stop", "leading", "result.json"
# How long torchrun gets to stop its ranks (it gives them 30 s before SIGKILL).
_TORCHRUN_STOP_SECONDS = 35.0


def train_on_devices(job: Job, *, owner: str, settings: Settings, should_stop: Callable[[], bool]) -> str:
    """Train a claimed job on `job.devices` processes and wait for them; returns what happened."""
    with tempfile.TemporaryDirectory(prefix=f"selfsup-{job.id}-") as folder:
        result, stop, leading = (Path(folder) / name for name in (_RESULT, _STOP, _LEADING))
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
            folder,
        ]
        threads = str(settings.torch_threads or 1)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
        log.info("job %s: training on %d devices (torchrun)", job.id, job.devices)
        # Its own process group, so the worker (not a signal to the worker's group) decides when it stops.
        process = subprocess.Popen(command, env=env, preexec_fn=die_with_parent, start_new_session=True)  # noqa: PLW1509
        extended = time.monotonic()
        try:
            while process.poll() is None:
                if should_stop() and not stop.exists():
                    stop.touch()  # rank 0 checkpoints and hands the job back at its next step
                if not leading.exists() and time.monotonic() - extended >= settings.control_interval_seconds:
                    with session_scope() as session:
                        crud.extend_lease(
                            session=session, job_id=job.id, owner=owner, lease_seconds=settings.lease_seconds
                        )
                    extended = time.monotonic()
                try:
                    process.wait(timeout=_WATCH_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if process.poll() is None:  # the worker is leaving while they run: take them along
                process.terminate()  # torchrun stops its ranks (SIGTERM, then SIGKILL after 30 s)
                try:
                    process.wait(timeout=_TORCHRUN_STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    process.kill()  # the ranks get SIGTERM as their parent dies
                    process.wait()
        said = json.loads(result.read_text(encoding="utf-8")) if result.exists() else {}
    if "outcome" in said:
        return str(said["outcome"])
    error = f"a training process failed (torchrun exited with code {process.returncode})"
    if "error" in said:
        error += f"; rank 0: {said['error']}"
    log.error("job %s: %s", job.id, error)
    return requeue_crashed(job.id, owner, error)


def _lead(ranks: Ranks, job_id: str, owner: str, folder: Path) -> None:
    """Rank 0: the job's run, under the worker's lease; what happened goes to the result file for the worker."""
    (folder / _LEADING).touch()  # the lease is this rank's to renew from here
    result, stop = folder / _RESULT, folder / _STOP
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
    base_config = rows.job.base.get("config") if rows.job.base is not None else None
    trainer, _ = open_trainer(
        spec,
        get_blob_store(),
        rows.dataset,
        rows.heldout,
        ranks,
        base_config,
        cpu_bf16_matmuls=settings.cpu_bf16_matmuls,
    )
    faults = Faults.parse(
        settings.fault_injection,
        job_id=job_id,
        job_name=rows.job.name,
        marker_dir=settings.resolved_home / "faults",
        rank=ranks.rank,
    )
    if ranks.order() is not Order.STEP:  # rank 0 could not set the run up
        return
    trainer.join_ranks()
    backend = faults.compile_backend(settings.compile_backend)
    try:
        while (order := ranks.order()) is not Order.STOP:
            if order is Order.COMPILE:
                try:
                    trainer.compile_forward(backend=backend)  # with rank 0; if any rank fails, all stay eager
                except Exception:
                    log.warning("job %s: torch.compile failed on a rank; training eager", job_id, exc_info=True)
                continue
            # As rank 0 between metric steps: no host sync of its own, and a non-finite step skips its update on
            # the device just as rank 0's does, so the ranks never disagree about whether to update.
            trainer.train_step(sync=False)
            faults.after_step(trainer.step)
    except TrainingDiverged:  # rank 0 saw the same numbers and fails the job; nothing to add
        return


def main(argv: list[str]) -> None:
    """One rank of a job on several devices (torchrun runs this): `JOB_ID OWNER FOLDER` (the worker's folder for
    the run: the stop, leading and result files)."""
    die_with_parent()
    job_id, owner, folder = argv
    settings = get_settings()
    configure_logging(settings.log_format)
    import torch
    import transformers

    # As in a worker (workers/tasks.py): no progress bar per checkpoint, transformers' warnings through our logs.
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    torch.set_num_threads(settings.torch_threads or 1)
    freeze_imported_objects()  # as a worker does: a rank exits in a fraction of a second when its job ends
    with process_group() as ranks:  # leaving it, the trainer lets go of the group first (`process_group`)
        enter_log_context(job_id=job_id, rank=str(ranks.rank))
        if ranks.first:
            _lead(ranks, job_id, owner, Path(folder))
        else:
            _follow(ranks, job_id)


if __name__ == "__main__":
    main(sys.argv[1:])
