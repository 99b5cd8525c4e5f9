"""`crud.claim_next_job`: the order a free trainer takes waiting jobs in, and the running quota, on SQLite and
PostgreSQL (the claim's locking differs between them)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from storage import crud
from storage.db import make_engine
from storage.status import JobStatus
from storage.tables import Base, Job, utcnow


@pytest.fixture(params=["sqlite", "postgres"])
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    url = (
        f"sqlite:///{tmp_path / 'db.sqlite'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_database")
    )
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    with Session(engine, expire_on_commit=False) as session:
        yield session
    engine.dispose()


def _job(
    session: Session, tenant: str, name: str, *, priority: str = "normal", prepared: bool = True, devices: int = 1
) -> Job:
    job = crud.create_job(
        session=session,
        tenant=crud.get_or_create_tenant(session=session, name=tenant),
        spec={},
        name=name,
        corpus_ids=[],
        max_steps=10,
        idempotency_key=None,
        request_sha256=None,
        priority=priority,
        devices=devices,
    )
    if prepared:
        crud.record_job_dataset(session=session, job_id=job.id, dataset_key="k")
    session.commit()
    return job


def _claim(session: Session, devices: int = 1) -> str | None:
    claimed = crud.claim_next_job(
        session=session,
        owner="w:1",
        lease_seconds=60,
        fair_share_window_seconds=3600,
        default_max_running_jobs=None,
        devices=devices,
    )
    session.commit()
    return claimed


def test_priority_then_fair_share_then_age_and_the_running_quota(session: Session) -> None:
    # Tenant a trained for 50 s half an hour ago (inside the window); b, c and e trained nothing.
    earlier = _job(session, "a", "a-earlier")
    assert crud.claim_job(session=session, job_id=earlier.id, owner="w:0", lease_seconds=60)
    crud.finish_job(session=session, job_id=earlier.id, status=JobStatus.SUCCEEDED, message="done")
    half_an_hour_ago = utcnow() - timedelta(minutes=30)
    session.execute(
        update(Job)
        .where(Job.id == earlier.id)
        .values(started_at=half_an_hour_ago, finished_at=half_an_hour_ago + timedelta(seconds=50))
    )
    session.commit()
    e_tenant = crud.get_or_create_tenant(session=session, name="e")
    crud.set_quota(session=session, tenant=e_tenant, values={"max_running_jobs": 1})
    session.commit()

    a1, a2 = _job(session, "a", "a1"), _job(session, "a", "a2")
    e1, e2 = _job(session, "e", "e1", priority="low"), _job(session, "e", "e2", priority="low")
    b1 = _job(session, "b", "b1")
    c_low = _job(session, "c", "c-low", priority="low")
    c_high = _job(session, "c", "c-high", priority="high")
    _job(session, "b", "not-prepared", prepared=False)

    names = {j.id: j.name for j in (a1, a2, e1, e2, b1, c_low, c_high)}
    order = []
    while (claimed := _claim(session)) is not None:
        order.append(names[claimed])
    # high first; b (no device-seconds) before a (50 s), a's in age order; then the low ones: e1 (older than
    # c-low); e2 never, its tenant being at its running quota of 1 while e1 runs; the unprepared job never.
    assert order == ["c-high", "b1", "a1", "a2", "e1", "c-low"], order
    now = utcnow()
    used = crud.device_seconds_by_tenant(
        session=session, tenant_ids={earlier.tenant_id, b1.tenant_id}, since=now - timedelta(hours=1), now=now
    )
    assert used[earlier.tenant_id] >= 50  # the earlier run, and a1's and a2's running since they were claimed
    # e1 ends: e2 may run now.
    crud.finish_job(session=session, job_id=e1.id, status=JobStatus.SUCCEEDED, message="done")
    session.commit()
    assert _claim(session) == e2.id
    assert _claim(session) is None


def test_a_trainer_claims_only_jobs_that_fit_its_devices(session: Session) -> None:
    wide = _job(session, "alice", "two-devices", priority="high", devices=2)
    narrow = _job(session, "alice", "one-device", priority="low")
    assert _claim(session, devices=1) == narrow.id  # the first in the order needs two devices: passed over
    assert _claim(session, devices=1) is None  # and it stays queued for a worker with two
    session.refresh(wide)
    assert wide.status == JobStatus.QUEUED and wide.lease_owner is None
    assert _claim(session, devices=4) == wide.id


def test_what_waits_for_which_devices(session: Session) -> None:
    """The look-ups that wake (and explain the wait of) jobs by the devices they need."""
    one = _job(session, "alice", "one-device")
    two_a = _job(session, "alice", "two-a", devices=2)
    two_b = _job(session, "bob", "two-b", devices=2)
    four = _job(session, "bob", "four", devices=4)
    _job(session, "bob", "unprepared", devices=8, prepared=False)  # still tokenizing: no trainer may claim it
    waiting = crud.jobs_waiting_to_train_by_devices(session=session)
    assert waiting.keys() == {1, 2, 4} and waiting[1] == one.id and waiting[4] == four.id
    assert waiting[2] in (two_a.id, two_b.id)
    assert sorted(crud.jobs_waiting_for_more_devices(session=session, than=2)) == [(four.id, 4)]
    assert crud.devices_if_waiting_to_train(session=session, job_id=two_a.id) == 2
    assert crud.claim_job(session=session, job_id=four.id, owner="w:4", lease_seconds=60)
    session.commit()
    assert crud.devices_if_waiting_to_train(session=session, job_id=four.id) is None  # claimed: no longer waits
    assert crud.jobs_waiting_for_more_devices(session=session, than=2) == []
    # A condition said once stays one event while nothing changes.
    said = [crud.add_event_unless_latest(session=session, job_id=two_a.id, type="w", message="m") for _ in range(2)]
    assert said == [True, False]


def test_a_paused_job_resumes_on_other_devices(session: Session) -> None:
    job = _job(session, "alice", "paused", devices=2)
    session.execute(update(Job).where(Job.id == job.id).values(status=JobStatus.PAUSED))
    session.commit()
    session.refresh(job)
    assert crud.resume_paused(session=session, job=job, resources={"devices": 1, "nodes": 1})
    session.commit()
    assert job.status == JobStatus.QUEUED and job.devices == 1 and job.spec["resources"]["devices"] == 1
    assert not crud.resume_paused(session=session, job=job)  # no longer paused
    events = [e.message for e in crud.list_events(session=session, job_id=job.id)]
    assert events[-1] == "queued again after a pause, on 1 device(s) instead of 2", events
