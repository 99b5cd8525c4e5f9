"""The `best` alias follows the job's `checkpointing.best` metric as recorded in the metrics table, also one
written after the checkpoints (a probe's accuracy), and pruning waits for it (crud on a real SQLite database)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from storage import crud
from storage.tables import Checkpoint, Job, utcnow


def _job_with_checkpoints(session: Session, spec: dict[str, Any], steps: list[int]) -> Job:
    tenant = crud.get_or_create_tenant(session=session, name="alice")
    job = crud.create_job(
        session=session,
        tenant=tenant,
        spec=spec,
        name="j",
        corpus_ids=[],
        max_steps=100,
        idempotency_key=None,
        request_sha256=None,
    )
    for version, step in enumerate(steps, start=1):
        crud.add_checkpoint(
            session=session,
            checkpoint=Checkpoint(job_id=job.id, step=step, version=version, blob_prefix=f"x/{version}"),
        )
    return job


def _best_step(session: Session, job: Job) -> int | None:
    best = crud.checkpoint_by_alias(session=session, job_id=job.id, alias="best")
    return best.step if best is not None else None


def _record(session: Session, job: Job, name: str, values: dict[int, float]) -> None:
    crud.write_metrics(session=session, job_id=job.id, rows=[(s, name, v, utcnow()) for s, v in values.items()])


def test_best_follows_a_metric_written_after_the_checkpoints(session: Session) -> None:
    spec = {"checkpointing": {"best": {"metric": "probe_accuracy/sources", "mode": "max"}}}
    job = _job_with_checkpoints(session, spec, [10, 20, 30, 40])
    _record(session, job, "val_loss", {10: 3.0, 20: 2.0, 30: 1.0, 40: 1.5})
    assert _best_step(session, job) is None  # no probe has run yet

    _record(session, job, "probe_accuracy/sources", {10: 0.6, 20: 0.8})
    assert _best_step(session, job) == 20
    # Checkpoints still waiting for their probe are kept; a scored one that is not best may go.
    assert [c.step for c in crud.prunable_checkpoints(session=session, job_id=job.id, keep_last=1)] == [10]

    _record(session, job, "probe_accuracy/sources", {30: 0.7, 40: 0.75})
    assert _best_step(session, job) == 20
    assert [c.step for c in crud.prunable_checkpoints(session=session, job_id=job.id, keep_last=1)] == [10, 30]
    listing = crud.checkpoint_aliases(
        session=session, job_id=job.id, checkpoints=crud.list_checkpoints(session=session, job_id=job.id)
    )
    assert [c.step for c in crud.list_checkpoints(session=session, job_id=job.id) if "best" in listing[c.id]] == [20]


def test_a_job_from_before_checkpointing_best_follows_the_lowest_val_loss(session: Session) -> None:
    job = _job_with_checkpoints(session, {"training": {}}, [10, 20, 30])
    _record(session, job, "val_loss", {10: 3.0, 20: 1.0, 30: 2.0})
    assert _best_step(session, job) == 20
    # A validation metric is recorded before its checkpoint: an unscored checkpoint (a pause's) may go.
    job = _job_with_checkpoints(session, {"checkpointing": {"best": {"metric": "val_loss", "mode": "min"}}}, [5, 7])
    assert [c.step for c in crud.prunable_checkpoints(session=session, job_id=job.id, keep_last=1)] == [5]
