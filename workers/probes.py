"""Run one probe: claim the run, load its checkpoint and labelled set, fit the probe, record the accuracy.

On the `cpu` queue with torch limited to one thread while it runs, so a probe never competes with training
for cores. A checkpoint pruned (`checkpointing.keep_last`) before its probe ran fails the run with that
reason; the random-init baseline only borrows a checkpoint's config and tokenizer, so it falls back to any
checkpoint the job still has. A heartbeat touches the run while it works; a run whose worker died (no heartbeat
for a lease) is failed by the reconciler (`workers/tasks.py: reconcile`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from selfsup.spec import JobSpec
from storage import crud
from storage.blobs import BlobStore
from storage.db import session_scope
from storage.keys import labelled_set_key
from storage.tables import Checkpoint
from workers.training.probe import LabelledExample, probe_accuracy

log = logging.getLogger("selfsup.probes")


def read_labelled_set(store: BlobStore, labelled_set_id: str) -> list[LabelledExample]:
    """A stored labelled set's examples (validated on upload: every line has a text and a label)."""
    examples = []
    with store.open(labelled_set_key(labelled_set_id)) as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                examples.append(LabelledExample(text=row["text"], label=str(row["label"])))
    return examples


@contextmanager
def heartbeat(run_id: str, every_seconds: float) -> Iterator[None]:
    """Touch the running run every `every_seconds` while the block runs: the reconciler fails a run whose
    heartbeat stopped for a lease (`SELFSUP_LEASE_SECONDS`), as its worker died."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_seconds):
            try:
                with session_scope() as session:
                    crud.touch_probe_run(session=session, run_id=run_id)
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next one
                log.warning("probe %s: heartbeat failed", run_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"probe-heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_probe(run_id: str, *, store: BlobStore, heartbeat_seconds: float = 10.0) -> str:
    """Do one queued probe run, its heartbeat going while it works; returns what happened, for the log."""
    with session_scope() as session:
        if not crud.claim_probe_run(session=session, run_id=run_id):
            return "not claimed: done already, or running elsewhere"
        run = crud.get_probe_run(session=session, run_id=run_id)
        assert run is not None
        job = crud.get_job_by_id(session=session, job_id=run.job_id)
        assert job is not None
        seed = JobSpec.model_validate(job.spec).training.seed
        checkpoints = crud.list_checkpoints(session=session, job_id=run.job_id)
        checkpoint = next((c for c in checkpoints if c.id == run.checkpoint_id), None)
        if checkpoint is None and run.random_init and checkpoints:
            checkpoint = checkpoints[0]
        labelled_set = crud.get_labelled_set_by_id(session=session, labelled_set_id=run.labelled_set_id)
        problem = None
        if checkpoint is None:
            problem = f"checkpoint {run.checkpoint_id} was pruned (checkpointing.keep_last) before its probe ran"
        elif labelled_set is None:
            problem = f"labelled set {run.labelled_set_id} was deleted before the probe ran"
        if problem:
            crud.fail_probe_run(session=session, run=run, error=problem)
            return f"failed: {problem}"
        assert isinstance(checkpoint, Checkpoint)
        prefix, random_init, name, step = checkpoint.blob_prefix, run.random_init, run.name, run.step
        labelled_set_id, pooling, layer = run.labelled_set_id, run.pooling, run.layer
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with heartbeat(run_id, heartbeat_seconds):
            examples = read_labelled_set(store, labelled_set_id)
            seed_if_random = seed if random_init else None
            result = probe_accuracy(
                store.local_copy(prefix),
                examples,
                random_init_seed=seed_if_random,
                pooling="cls" if pooling == "cls" else "mean",
                layer=layer,
            )
    except Exception as exc:
        # A checkpoint removed while it was read, one the Auto classes cannot load, a labelled set the classifier
        # refuses: the run fails and says why (logged with its traceback), rather than staying `running` forever.
        log.exception("probe %s failed", run_id)
        with session_scope() as session:
            failed = crud.get_probe_run(session=session, run_id=run_id)
            assert failed is not None
            crud.fail_probe_run(session=session, run=failed, error=f"{type(exc).__name__}: {exc}")
        return f"failed: {exc}"
    finally:
        torch.set_num_threads(threads)
    what = "the random-init model (step 0)" if random_init else f"the checkpoint at step {step}"
    message = (
        f"probe {name}: held-out accuracy {result.accuracy:.3f} on {what} "
        f"({result.train_examples} train, {result.held_out_examples} held-out examples)"
    )
    with session_scope() as session:
        done = crud.get_probe_run(session=session, run_id=run_id)
        assert done is not None
        crud.record_probe_accuracy(session=session, run=done, accuracy=result.accuracy, message=message)
    return message
