"""Labelled sets, and the probe runs that measure checkpoints on them (`probe_accuracy/<name>` metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.crud._sql import rowcount
from storage.crud.events import add_event, write_metrics
from storage.crud.paging import page
from storage.status import ProbeStatus
from storage.tables import Checkpoint, Job, LabelledSet, ProbeRun, Tenant, utcnow

PROBE_METRIC_PREFIX = "probe_accuracy/"


def probe_metric_name(probe_name: str) -> str:
    """The metric a probe's held-out accuracy is recorded under."""
    return PROBE_METRIC_PREFIX + probe_name


def create_labelled_set(
    *,
    session: Session,
    tenant: Tenant,
    labelled_set_id: str,
    name: str,
    size_bytes: int,
    sha256: str,
    examples: int,
    label_counts: dict[str, int],
) -> LabelledSet:
    """Record a validated labelled set whose examples are already stored."""
    labelled_set = LabelledSet(
        id=labelled_set_id,
        tenant_id=tenant.id,
        name=name,
        size_bytes=size_bytes,
        sha256=sha256,
        examples=examples,
        label_counts=label_counts,
    )
    session.add(labelled_set)
    session.flush()
    return labelled_set


def get_labelled_set(*, session: Session, tenant: Tenant, labelled_set_id: str) -> LabelledSet | None:
    """One of the tenant's labelled sets, or None."""
    return session.scalar(
        select(LabelledSet).where(LabelledSet.id == labelled_set_id, LabelledSet.tenant_id == tenant.id)
    )


def get_labelled_set_by_id(*, session: Session, labelled_set_id: str) -> LabelledSet | None:
    """A labelled set by id, whoever owns it (for the worker, which was handed the id)."""
    return session.get(LabelledSet, labelled_set_id)


def list_labelled_sets(
    *, session: Session, tenant: Tenant, limit: int, cursor: str | None
) -> tuple[list[LabelledSet], str | None]:
    """A page of the tenant's labelled sets, newest first."""
    return page(session, LabelledSet, [LabelledSet.tenant_id == tenant.id], limit=limit, cursor=cursor)


def delete_labelled_set(*, session: Session, labelled_set: LabelledSet) -> None:
    """Forget a labelled set (its blob is removed by the caller; probes still queued on it then fail)."""
    session.delete(labelled_set)


def queue_probe_runs(
    *, session: Session, job_id: str, checkpoint: Checkpoint, probes: Sequence[dict[str, Any]]
) -> list[ProbeRun]:
    """Queue one run per probe (`{"labelled_set_id", "name"}`) of `checkpoint`, and, for a probe name the job has
    no baseline of yet, the random-init baseline at step 0 (it borrows the checkpoint's shape and tokenizer)."""
    runs = []
    baselines = set(
        session.scalars(select(ProbeRun.name).where(ProbeRun.job_id == job_id, ProbeRun.random_init.is_(True)))
    )
    for probe in probes:
        name, labelled_set_id = str(probe["name"]), str(probe["labelled_set_id"])
        # Specs stored before probes had these options read the last layer's mean.
        reads = {"pooling": str(probe.get("pooling", "mean")), "layer": int(probe.get("layer", -1))}
        if name not in baselines:
            baselines.add(name)
            runs.append(
                ProbeRun(
                    job_id=job_id,
                    checkpoint_id=checkpoint.id,
                    random_init=True,
                    step=0,
                    name=name,
                    labelled_set_id=labelled_set_id,
                    **reads,
                )
            )
        runs.append(
            ProbeRun(
                job_id=job_id,
                checkpoint_id=checkpoint.id,
                random_init=False,
                step=checkpoint.step,
                name=name,
                labelled_set_id=labelled_set_id,
                **reads,
            )
        )
    session.add_all(runs)
    session.flush()
    return runs


def queue_job_probes(*, session: Session, checkpoint: Checkpoint) -> list[ProbeRun]:
    """Queue the probes the job's spec asks for (`probes`) on a checkpoint just recorded."""
    job = session.get(Job, checkpoint.job_id)
    probes = (job.spec.get("probes") if job is not None else None) or []
    if not probes:
        return []
    return queue_probe_runs(session=session, job_id=checkpoint.job_id, checkpoint=checkpoint, probes=probes)


def get_probe_run(*, session: Session, run_id: str) -> ProbeRun | None:
    """A probe run by id."""
    return session.get(ProbeRun, run_id)


def list_probe_runs(*, session: Session, job_id: str) -> list[ProbeRun]:
    """A job's probe runs, by step then name."""
    query = select(ProbeRun).where(ProbeRun.job_id == job_id)
    return list(session.scalars(query.order_by(ProbeRun.step, ProbeRun.name, ProbeRun.created_at)))


def claim_probe_run(*, session: Session, run_id: str) -> bool:
    """Move a queued run to running; False if it is not queued (done already, or another worker has it)."""
    claimed = (
        update(ProbeRun)
        .where(ProbeRun.id == run_id, ProbeRun.status == ProbeStatus.QUEUED)
        .values(status=ProbeStatus.RUNNING, updated_at=utcnow())
    )
    return rowcount(session, claimed) == 1


def record_probe_accuracy(*, session: Session, run: ProbeRun, accuracy: float, message: str) -> None:
    """A run succeeded: its accuracy becomes the job's `probe_accuracy/<name>` metric at the run's step."""
    run.status = ProbeStatus.SUCCEEDED
    run.accuracy = accuracy
    write_metrics(
        session=session, job_id=run.job_id, rows=[(run.step, probe_metric_name(run.name), accuracy, utcnow())]
    )
    add_event(session=session, job_id=run.job_id, type="probe", message=message)


def fail_probe_run(*, session: Session, run: ProbeRun, error: str) -> None:
    """A run could not be done: say why, on the run and in the job's events."""
    run.status = ProbeStatus.FAILED
    run.error = error
    what = "random-init baseline" if run.random_init else f"step {run.step}"
    add_event(session=session, job_id=run.job_id, type="probe_failed", message=f"probe {run.name} ({what}): {error}")


def stale_queued_probe_runs(*, session: Session, untouched_since: datetime) -> list[str]:
    """Ids of runs queued since `untouched_since` (a lost wake-up); each is touched, so it waits again."""
    runs = list(
        session.scalars(
            select(ProbeRun).where(ProbeRun.status == ProbeStatus.QUEUED, ProbeRun.updated_at < untouched_since)
        )
    )
    for run in runs:
        run.updated_at = utcnow()
    return [run.id for run in runs]


def touch_probe_run(*, session: Session, run_id: str) -> None:
    """A running run's sign of life (its worker's heartbeat), so the reconciler does not take it for dead."""
    session.execute(
        update(ProbeRun)
        .where(ProbeRun.id == run_id, ProbeRun.status == ProbeStatus.RUNNING)
        .values(updated_at=utcnow())
    )


def fail_stale_running_probe_runs(*, session: Session, untouched_since: datetime) -> list[str]:
    """Fail the runs `running` with no heartbeat since `untouched_since`: their worker died (killed, out of memory,
    cut off). Failed rather than run again, so a probe that kills its worker cannot loop; the error says how to
    retry. Returns their ids."""
    runs = list(
        session.scalars(
            select(ProbeRun).where(ProbeRun.status == ProbeStatus.RUNNING, ProbeRun.updated_at < untouched_since)
        )
    )
    for run in runs:
        target = "a checkpoint of the job" if run.random_init else f"checkpoint {run.checkpoint_id}"
        fail_probe_run(
            session=session,
            run=run,
            error="the worker running this probe stopped (killed, crashed or cut off) before it finished; "
            f"probe {target} again with POST /v1/checkpoints/{{id}}/probes",
        )
    return [run.id for run in runs]
