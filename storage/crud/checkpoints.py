"""Checkpoint rows, their aliases, and which to prune."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from selfsup.spec import MetricMode, default_metric_mode
from storage.crud.events import metric_at_steps
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


@dataclass(frozen=True)
class BestRule:
    """What the `best` alias follows: a metric recorded at checkpoint steps, and whether lower or higher wins."""

    metric: str
    mode: MetricMode

    @classmethod
    def of(cls, job_spec: Mapping[str, Any]) -> BestRule:
        """A job's `checkpointing.best` (the lowest val_loss for jobs submitted before it existed)."""
        best = (job_spec.get("checkpointing") or {}).get("best") or {}
        metric = str(best.get("metric") or "val_loss")
        return cls(metric=metric, mode=best.get("mode") or default_metric_mode(metric))

    @property
    def recorded_by_training(self) -> bool:
        """Whether the trainer records the metric with the evaluation before it saves the checkpoint (a
        validation metric), rather than something else later (a probe's accuracy)."""
        return self.metric.startswith("val_")


def checkpoint_scores(
    *, session: Session, job_id: str, rule: BestRule, checkpoints: Sequence[Checkpoint]
) -> dict[str, float]:
    """Each checkpoint's value of the rule's metric (the metric row at its step), by checkpoint id; those
    without one are left out."""
    values = metric_at_steps(session=session, job_id=job_id, name=rule.metric, steps=[c.step for c in checkpoints])
    return {c.id: values[c.step] for c in checkpoints if c.step in values}


def aliases_by_score(
    checkpoints: Sequence[Checkpoint], scores: Mapping[str, float], *, mode: MetricMode
) -> dict[str, list[str]]:
    """`latest`, `final` and `best` (the best score in `mode`'s direction, the newest on a tie), by checkpoint id."""
    aliases: dict[str, list[str]] = {c.id: [] for c in checkpoints}
    if not checkpoints:
        return aliases
    aliases[max(checkpoints, key=lambda c: c.version).id].append("latest")
    for c in checkpoints:
        if c.is_final:
            aliases[c.id].append("final")
    scored = [c for c in checkpoints if c.id in scores]
    if scored:
        sign = 1.0 if mode == "max" else -1.0
        aliases[max(scored, key=lambda c: (sign * scores[c.id], c.version)).id].append("best")
    return aliases


def checkpoint_aliases(*, session: Session, job_id: str, checkpoints: Sequence[Checkpoint]) -> dict[str, list[str]]:
    """`latest`, `final` and `best` for a job's checkpoints, by checkpoint id: `best` follows the job's
    `checkpointing.best` metric, read from the metrics recorded at the checkpoints' steps."""
    job = session.get(Job, job_id)
    rule = BestRule.of(job.spec if job is not None else {})
    scores = checkpoint_scores(session=session, job_id=job_id, rule=rule, checkpoints=checkpoints)
    return aliases_by_score(checkpoints, scores, mode=rule.mode)


def checkpoint_by_alias(*, session: Session, job_id: str, alias: str) -> Checkpoint | None:
    """The job's checkpoint that `alias` (latest, best, final) names now, or None while none does."""
    checkpoints = list_checkpoints(session=session, job_id=job_id)
    aliases = checkpoint_aliases(session=session, job_id=job_id, checkpoints=checkpoints)
    return next((c for c in checkpoints if alias in aliases[c.id]), None)


def prunable_checkpoints(*, session: Session, job_id: str, keep_last: int) -> list[Checkpoint]:
    """The job's checkpoints beyond the newest `keep_last` that may go: never `best` or `final`, nor one still
    waiting for its value of a `best` metric recorded after it (a probe's accuracy)."""
    checkpoints = list_checkpoints(session=session, job_id=job_id)
    job = session.get(Job, job_id)
    rule = BestRule.of(job.spec if job is not None else {})
    scores = checkpoint_scores(session=session, job_id=job_id, rule=rule, checkpoints=checkpoints)
    awaiting = set() if rule.recorded_by_training else {c.id for c in checkpoints if c.id not in scores}
    return prunable_checkpoints_among(
        checkpoints, aliases_by_score(checkpoints, scores, mode=rule.mode), keep_last=keep_last, keep=awaiting
    )


def prunable_checkpoints_among(
    checkpoints: Sequence[Checkpoint], aliases: Mapping[str, list[str]], *, keep_last: int, keep: set[str]
) -> list[Checkpoint]:
    """Checkpoints beyond the newest `keep_last`, never `best` or `final` nor those in `keep`."""
    ordered = sorted(checkpoints, key=lambda c: c.version)
    old = ordered[:-keep_last] if len(ordered) > keep_last else []
    return [c for c in old if not ({"best", "final"} & set(aliases[c.id])) and c.id not in keep]
