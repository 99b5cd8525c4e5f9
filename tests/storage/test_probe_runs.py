"""A probe run whose worker died stays `running` no longer: the reconciler's query fails it once its heartbeat
is a lease old, and leaves live, queued and finished runs alone (crud on a real SQLite database)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from storage import crud
from storage.tables import Checkpoint, Event, ProbeRun, utcnow


def test_a_running_probe_without_heartbeat_fails_and_says_how_to_retry(session: Session) -> None:
    tenant = crud.get_or_create_tenant(session=session, name="alice")
    job = crud.create_job(
        session=session,
        tenant=tenant,
        spec={},
        name="j",
        corpus_ids=[],
        max_steps=10,
        idempotency_key=None,
        request_sha256=None,
    )
    checkpoint = Checkpoint(job_id=job.id, step=10, version=1, blob_prefix="x/1")
    crud.add_checkpoint(session=session, checkpoint=checkpoint)
    runs = crud.queue_probe_runs(
        session=session, job_id=job.id, checkpoint=checkpoint, probes=[{"labelled_set_id": "lbl_1", "name": "play"}]
    )
    dead = next(r for r in runs if not r.random_init)
    alive = next(r for r in runs if r.random_init)
    assert crud.claim_probe_run(session=session, run_id=dead.id) and crud.claim_probe_run(
        session=session, run_id=alive.id
    )
    lease_ago = utcnow() - timedelta(seconds=30)
    session.query(ProbeRun).filter(ProbeRun.id == dead.id).update({"updated_at": lease_ago - timedelta(seconds=1)})
    session.query(ProbeRun).filter(ProbeRun.id == alive.id).update({"updated_at": lease_ago - timedelta(seconds=1)})
    crud.touch_probe_run(session=session, run_id=alive.id)  # its worker's heartbeat
    session.commit()

    assert crud.fail_stale_running_probe_runs(session=session, untouched_since=lease_ago) == [dead.id]
    session.commit()
    session.expire_all()
    failed, live = session.get(ProbeRun, dead.id), session.get(ProbeRun, alive.id)
    assert failed is not None and failed.status == "failed" and failed.error is not None
    assert "stopped" in failed.error and f"probe checkpoint {checkpoint.id} again" in failed.error
    assert live is not None and live.status == "running"
    events = session.query(Event).filter(Event.job_id == job.id, Event.type == "probe_failed").all()
    assert len(events) == 1 and "probe play (step 10)" in events[0].message
    # Nothing left to fail: a failed run is not running, a beating one is fresh.
    assert crud.fail_stale_running_probe_runs(session=session, untouched_since=lease_ago) == []
