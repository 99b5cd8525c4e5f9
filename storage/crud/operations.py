"""What an operator's scrape of `/metrics` reads from the database: counts by status, and running jobs' latest
metric values. Every query is an indexed lookup or a count over a small table, cheap enough for each scrape."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import and_, func, select, text
from sqlalchemy.orm import Session

from storage.status import CorpusStatus, JobStatus
from storage.tables import Corpus, Job, Metric, Tenant

# A scrape must not hang on a slow database: PostgreSQL cancels its statements after this long.
_STATEMENT_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class RunningJob:
    """A running job and the newest value of each metric asked for that it has recorded."""

    job_id: str
    tenant: str
    latest: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OperationsSnapshot:
    """The database's part of a metrics scrape."""

    jobs_by_status: dict[str, int]
    corpora_by_status: dict[str, int]
    corpus_bytes_by_status: dict[str, int]
    running_jobs: list[RunningJob]


def operations_snapshot(*, session: Session, metric_names: Sequence[str]) -> OperationsSnapshot:
    """Jobs and corpora by status (every status, zeros included), and each running job's newest `metric_names`."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL statement_timeout = {_STATEMENT_TIMEOUT_MS}"))
    jobs = dict.fromkeys((s.value for s in JobStatus), 0)
    for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status)):
        jobs[status] = count
    corpora = dict.fromkeys((s.value for s in CorpusStatus), 0)
    corpus_bytes = dict.fromkeys((s.value for s in CorpusStatus), 0)
    for status, count, size in session.execute(
        select(Corpus.status, func.count(), func.coalesce(func.sum(Corpus.size_bytes), 0)).group_by(Corpus.status)
    ):
        corpora[status], corpus_bytes[status] = count, int(size)
    running = {
        job_id: RunningJob(job_id=job_id, tenant=tenant)
        for job_id, tenant in session.execute(
            select(Job.id, Tenant.name).join(Tenant, Tenant.id == Job.tenant_id).where(Job.status == JobStatus.RUNNING)
        )
    }
    if running and metric_names:
        newest = (
            select(Metric.job_id, Metric.name, func.max(Metric.step).label("step"))
            .where(Metric.job_id.in_(list(running)), Metric.name.in_(list(metric_names)))
            .group_by(Metric.job_id, Metric.name)
            .subquery()
        )
        rows = session.execute(
            select(Metric.job_id, Metric.name, Metric.value).join(
                newest,
                and_(Metric.job_id == newest.c.job_id, Metric.name == newest.c.name, Metric.step == newest.c.step),
            )
        )
        for job_id, name, value in rows:
            running[job_id].latest[name] = float(value)
    return OperationsSnapshot(
        jobs_by_status=jobs,
        corpora_by_status=corpora,
        corpus_bytes_by_status=corpus_bytes,
        running_jobs=sorted(running.values(), key=lambda job: job.job_id),
    )
