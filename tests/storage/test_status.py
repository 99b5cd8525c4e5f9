"""Job and corpus lifecycles: the transition tables, and crud keeping to them on a real (SQLite) database."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from sqlalchemy.orm import Session

from api import schemas
from storage import crud
from storage.status import (
    ACTIVE_JOB_STATUSES,
    CORPUS_TRANSITIONS,
    DELIVERY_TRANSITIONS,
    FINISHED_JOB_STATUSES,
    JOB_TRANSITIONS,
    CorpusStatus,
    DeliveryStatus,
    JobStatus,
    job_statuses_leading_to,
)
from storage.tables import Job, JobCorpus


def test_the_api_shows_the_same_statuses_the_tables_store() -> None:
    assert set(get_args(schemas.JobStatus)) == {s.value for s in JobStatus} == set(JOB_TRANSITIONS)
    assert set(get_args(schemas.CorpusStatus)) == {s.value for s in CorpusStatus} == set(CORPUS_TRANSITIONS)
    assert set(get_args(schemas.DeliveryStatus)) == {s.value for s in DeliveryStatus} == set(DELIVERY_TRANSITIONS)


def test_final_statuses_are_the_ones_without_moves() -> None:
    assert FINISHED_JOB_STATUSES == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    assert ACTIVE_JOB_STATUSES == {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED}
    assert job_statuses_leading_to(JobStatus.SUCCEEDED) == {JobStatus.RUNNING}
    with pytest.raises(ValueError, match="cannot move from paused to running"):
        job_statuses_leading_to(JobStatus.RUNNING, among=frozenset({JobStatus.PAUSED}))


def _job(session: Session, **training: Any) -> Job:
    tenant = crud.get_or_create_tenant(session=session, name="t")
    return crud.create_job(
        session=session,
        tenant=tenant,
        spec={"training": training},
        name="j",
        corpus_ids=[],
        max_steps=10,
        idempotency_key=None,
        request_sha256=None,
    )


def _status(session: Session, job: Job) -> str:
    session.refresh(job)
    return job.status


def test_a_job_moves_only_as_its_lifecycle_allows(session: Session) -> None:
    job = _job(session)
    assert _status(session, job) == JobStatus.QUEUED
    assert not crud.finish_job(session=session, job_id=job.id, status=JobStatus.SUCCEEDED, message="no")
    with pytest.raises(ValueError, match="not a final job status"):
        crud.finish_job(session=session, job_id=job.id, status=JobStatus.PAUSED, message="no")
    assert crud.claim_job(session=session, job_id=job.id, owner="w:1", lease_seconds=60)
    assert not crud.claim_job(session=session, job_id=job.id, owner="w:2", lease_seconds=60)
    assert not crud.fail_job(session=session, job_id=job.id, reason="not mine", owner="w:2")
    assert crud.fail_job(session=session, job_id=job.id, reason="broken", owner="w:1")
    assert _status(session, job) == JobStatus.FAILED and job.error == "broken" and job.lease_owner is None
    assert not crud.fail_job(session=session, job_id=job.id, reason="again")
    events = [(e.type, e.message) for e in crud.list_events(session=session, job_id=job.id)]
    assert events == [("queued", "job queued"), ("failed", "failed: broken")]


def test_a_crashed_job_is_requeued_until_its_restarts_are_spent(session: Session) -> None:
    job = _job(session, max_restarts=1)
    outcomes = []
    for owner in ("w:1", "w:2"):
        assert crud.claim_job(session=session, job_id=job.id, owner=owner, lease_seconds=60)
        session.refresh(job)
        outcomes.append(crud.requeue_after_crash(session=session, job=job, owner=owner, error="boom"))
    assert outcomes == [crud.RequeueOutcome.REQUEUED, crud.RequeueOutcome.FAILED]
    assert _status(session, job) == JobStatus.FAILED and job.error == "gave up after 1 restarts; last error: boom"
    assert crud.requeue_after_crash(session=session, job=job, owner="w:2", error="x") == crud.RequeueOutcome.SKIPPED


def test_max_restarts_defaults_to_the_specs_default(session: Session) -> None:
    job = _job(session)
    outcomes = []
    while not outcomes or outcomes[-1] == crud.RequeueOutcome.REQUEUED:
        assert crud.claim_job(session=session, job_id=job.id, owner="w:1", lease_seconds=60)
        session.refresh(job)
        outcomes.append(crud.requeue_after_crash(session=session, job=job, owner="w:1", error="boom"))
    assert outcomes == [crud.RequeueOutcome.REQUEUED] * 3 + [crud.RequeueOutcome.FAILED]


def test_pause_resume_and_cancel_of_an_idle_job(session: Session) -> None:
    job = _job(session)
    assert crud.request_pause(session=session, job=job) == JobStatus.PAUSED
    assert crud.resume_paused(session=session, job=job) and job.status == JobStatus.QUEUED
    assert crud.request_pause(session=session, job=job) == JobStatus.PAUSED
    assert crud.request_cancel(session=session, job=job) == JobStatus.CANCELLED
    assert not crud.resume_paused(session=session, job=job)


def _corpus(session: Session) -> str:
    tenant = crud.get_or_create_tenant(session=session, name="t")
    corpus = crud.create_corpus(
        session=session,
        tenant=tenant,
        corpus_id="cor_1",
        name="plays",
        fmt="txt",
        compression=None,
        size_bytes=1,
        sha256="0" * 64,
    )
    return corpus.id


def test_a_corpus_is_ingested_once(session: Session) -> None:
    corpus_id = _corpus(session)
    counts: dict[str, Any] = {
        "documents": 2,
        "characters": 9,
        "train_documents": 1,
        "validation_documents": 1,
        "ingest_report": {"dropped": {}},
    }
    assert crud.mark_corpus_ready(session=session, corpus_id=corpus_id, **counts)
    assert not crud.mark_corpus_ready(session=session, corpus_id=corpus_id, **counts)
    assert crud.fail_corpus(session=session, corpus_id=corpus_id, reason="late") is not None
    corpus = crud.get_corpus_by_id(session=session, corpus_id=corpus_id)
    assert corpus is not None
    session.refresh(corpus)
    assert corpus.status == CorpusStatus.READY and corpus.documents == 2 and corpus.error is None


def test_a_failed_corpus_fails_the_jobs_waiting_on_it(session: Session) -> None:
    corpus_id = _corpus(session)
    job = _job(session)
    session.add(JobCorpus(job_id=job.id, corpus_id=corpus_id, position=0))
    session.flush()
    assert crud.fail_corpus(session=session, corpus_id=corpus_id, reason="not UTF-8") is not None
    assert _status(session, job) == JobStatus.FAILED
    assert job.error == f"corpus plays ({corpus_id}) failed: not UTF-8"
    assert crud.fail_corpus(session=session, corpus_id="cor_missing", reason="x") is None
