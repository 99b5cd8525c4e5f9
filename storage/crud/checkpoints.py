"""Checkpoint rows, their aliases, and which to prune."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from storage.crud.webhooks import record_checkpoint_created
from storage.tables import (
    Checkpoint,
    Job,
    Tenant,
)


def next_checkpoint_version(*, session: Session, job_id: str) -> int:
    """The version the job's next checkpoint gets."""
    current = session.scalar(select(func.max(Checkpoint.version)).where(Checkpoint.job_id == job_id))
    return (current or 0) + 1


def delete_checkpoint(*, session: Session, checkpoint_id: str) -> None:
    """Forget a checkpoint (its files are removed by the caller)."""
    session.execute(delete(Checkpoint).where(Checkpoint.id == checkpoint_id))


def add_checkpoint(*, session: Session, checkpoint: Checkpoint) -> Checkpoint:
    """Record a checkpoint whose files are complete, and its `checkpoint.created` webhooks."""
    session.add(checkpoint)
    session.flush()
    record_checkpoint_created(session=session, checkpoint=checkpoint)
    return checkpoint


def list_checkpoints(*, session: Session, job_id: str) -> list[Checkpoint]:
    """A job's checkpoints, oldest first."""
    return list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.version)))


def get_checkpoint(*, session: Session, tenant: Tenant, checkpoint_id: str) -> Checkpoint | None:
    """One of the tenant's checkpoints, or None."""
    return session.scalar(
        select(Checkpoint)
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Checkpoint.id == checkpoint_id, Job.tenant_id == tenant.id)
    )


def checkpoint_aliases(checkpoints: Sequence[Checkpoint]) -> dict[str, list[str]]:
    """`latest`, `final` and `best` (lowest val_loss) for a job's checkpoints, by checkpoint id."""
    aliases: dict[str, list[str]] = {c.id: [] for c in checkpoints}
    if not checkpoints:
        return aliases
    aliases[max(checkpoints, key=lambda c: c.version).id].append("latest")
    for c in checkpoints:
        if c.is_final:
            aliases[c.id].append("final")
    scored = [c for c in checkpoints if c.val_loss is not None]
    if scored:
        aliases[min(scored, key=lambda c: (c.val_loss, -c.version)).id].append("best")
    return aliases


def checkpoint_by_alias(*, session: Session, job_id: str, alias: str) -> Checkpoint | None:
    """The job's checkpoint that `alias` (latest, best, final) names now, or None while none does."""
    checkpoints = list_checkpoints(session=session, job_id=job_id)
    aliases = checkpoint_aliases(checkpoints)
    return next((c for c in checkpoints if alias in aliases[c.id]), None)


def prunable_checkpoints(*, checkpoints: Sequence[Checkpoint], keep_last: int) -> list[Checkpoint]:
    """Checkpoints beyond the newest `keep_last`, never `best` or `final`."""
    aliases = checkpoint_aliases(checkpoints)
    ordered = sorted(checkpoints, key=lambda c: c.version)
    old = ordered[:-keep_last] if len(ordered) > keep_last else []
    return [c for c in old if not ({"best", "final"} & set(aliases[c.id]))]
