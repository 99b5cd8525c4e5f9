"""A job's events and metrics."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, insert, select, tuple_
from sqlalchemy.orm import Session

from storage.tables import (
    Event,
    Metric,
)


def add_event(*, session: Session, job_id: str, type: str, message: str) -> None:
    """Append an event to a job's history."""
    session.add(Event(job_id=job_id, type=type, message=message))


def add_event_unless_latest(*, session: Session, job_id: str, type: str, message: str) -> bool:
    """Append an event unless the job's latest event says the same already (a condition reported once, not at
    every look); whether it was added."""
    latest = session.execute(
        select(Event.type, Event.message).where(Event.job_id == job_id).order_by(Event.id.desc()).limit(1)
    ).first()
    if latest is not None and tuple(latest) == (type, message):
        return False
    add_event(session=session, job_id=job_id, type=type, message=message)
    return True


def list_events(*, session: Session, job_id: str, after_id: int | None = None) -> list[Event]:
    """A job's events, oldest first."""
    query = select(Event).where(Event.job_id == job_id)
    if after_id is not None:
        query = query.where(Event.id > after_id)
    return list(session.scalars(query.order_by(Event.id)))


def write_metrics(*, session: Session, job_id: str, rows: Sequence[tuple[int, str, float, datetime]]) -> None:
    """Store a batch of (step, name, value, time); a value for an existing (step, name) replaces it."""
    if not rows:
        return
    latest: dict[tuple[int, str], tuple[float, datetime]] = {}
    for step, name, value, time in rows:
        latest[(step, name)] = (value, time)
    session.execute(delete(Metric).where(Metric.job_id == job_id, tuple_(Metric.step, Metric.name).in_(list(latest))))
    session.execute(
        insert(Metric),
        [
            {"job_id": job_id, "step": step, "name": name, "value": value, "time": time}
            for (step, name), (value, time) in latest.items()
        ],
    )


def delete_metrics_after(*, session: Session, job_id: str, step: int) -> None:
    """Forget metrics past `step` (a resumed job replays those steps)."""
    session.execute(delete(Metric).where(Metric.job_id == job_id, Metric.step > step))


def list_metrics(
    *, session: Session, job_id: str, name: str | None, after_step: int | None, limit: int
) -> list[Metric]:
    """A job's metrics in step order."""
    query = select(Metric).where(Metric.job_id == job_id)
    if name:
        query = query.where(Metric.name == name)
    if after_step is not None:
        query = query.where(Metric.step > after_step)
    return list(session.scalars(query.order_by(Metric.step, Metric.name).limit(limit)))


def metric_history(*, session: Session, job_id: str, name: str, up_to_step: int) -> list[tuple[int, float]]:
    """One metric's (step, value) pairs up to and including `up_to_step`, in step order."""
    query = (
        select(Metric.step, Metric.value)
        .where(Metric.job_id == job_id, Metric.name == name, Metric.step <= up_to_step)
        .order_by(Metric.step)
    )
    return [(int(step), float(value)) for step, value in session.execute(query)]


def metric_at_steps(*, session: Session, job_id: str, name: str, steps: Sequence[int]) -> dict[int, float]:
    """One metric's value at each of `steps` that has one."""
    if not steps:
        return {}
    query = select(Metric.step, Metric.value).where(
        Metric.job_id == job_id, Metric.name == name, Metric.step.in_(sorted(set(steps)))
    )
    return {int(step): float(value) for step, value in session.execute(query)}


def events_after(*, session: Session, job_id: str, after_id: int, limit: int) -> list[Event]:
    """Up to `limit` of a job's events with an id above `after_id`, in id (write) order."""
    query = select(Event).where(Event.job_id == job_id, Event.id > after_id)
    return list(session.scalars(query.order_by(Event.id).limit(limit)))


def metrics_after(*, session: Session, job_id: str, after_id: int, limit: int) -> list[Metric]:
    """Up to `limit` of a job's metric values with an id above `after_id`, in id (write) order."""
    query = select(Metric).where(Metric.job_id == job_id, Metric.id > after_id)
    return list(session.scalars(query.order_by(Metric.id).limit(limit)))


def last_metric_and_event_ids(*, session: Session, job_id: str) -> tuple[int, int]:
    """The highest metric id and event id a job has (0 where it has none)."""
    metric_id = session.scalar(select(func.max(Metric.id)).where(Metric.job_id == job_id))
    event_id = session.scalar(select(func.max(Event.id)).where(Event.job_id == job_id))
    return metric_id or 0, event_id or 0
