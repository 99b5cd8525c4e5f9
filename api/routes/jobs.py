"""`/v1/jobs`: submit, list, follow and cancel pretraining jobs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import (
    CursorDep,
    OwnedJob,
    ReadJob,
    SessionDep,
    StreamHubDep,
    StreamStart,
    TenantDep,
    check_labelled_sets,
    wake_worker,
)
from api.errors import ApiError, validation_details
from api.estimates import estimate_job
from api.presenters import checkpoint_public, checkpoints_public, job_public, probe_run_public
from api.quotas import check_job_quotas, check_resume
from api.schemas import (
    CheckpointPublic,
    CheckpointsPage,
    EventPublic,
    EventsPage,
    JobEstimate,
    JobPublic,
    JobResume,
    JobsPage,
    JobStatus,
    MetricPoint,
    MetricsPage,
    ProbeRunsPage,
)
from selfsup.spec import JobSpec, heldout_metric_names, inherit_from_parent, parent_conflicts
from storage import crud
from storage.bases import checkpoint_base, model_base
from storage.blobs import get_blob_store
from storage.keys import join_key
from storage.status import FINISHED_JOB_STATUSES, CorpusStatus, DatasetStatus, ModelStatus
from storage.status import JobStatus as Status
from storage.tables import Job, Tenant
from workers.celery_app import PREPARE_JOB, TRAIN_JOB, training_queue

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=201,
    response_model=JobPublic,
    summary="Submit a pretraining job",
    responses={
        403: {"description": "Over a quota; `details` names the quota, its limit and the use"},
        409: {"description": "Idempotency-Key reused with a different body"},
        422: {"description": "Invalid spec; `details` names each bad field"},
    },
)
def create_job(
    spec: JobSpec,
    tenant: TenantDep,
    session: SessionDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=200, description="Repeat a request safely: the same key and body return the same job."),
    ] = None,
) -> JobPublic:
    canonical = spec.model_dump(mode="json")
    fingerprint = crud.request_fingerprint(canonical)
    if idempotency_key:
        earlier = crud.find_job_by_idempotency_key(session=session, tenant=tenant, key=idempotency_key)
        if earlier is not None:
            return _replay(earlier, fingerprint, response)
    dataset_id = _check_data(spec, tenant=tenant, session=session)
    base = None
    if spec.init_from is not None:
        spec, canonical, base = _resolve_init_from(spec, canonical, tenant=tenant, session=session)
    _check_heldout_corpora(spec, tenant=tenant, session=session)
    check_labelled_sets(session, tenant, spec.probes, field="probes", model_layers=spec.model.layers)
    check_job_quotas(session, tenant, spec)  # takes the tenant's lock: counted and inserted in one transaction
    try:
        job = crud.create_job(
            session=session,
            tenant=tenant,
            spec=canonical,
            base=base,
            name=spec.name or f"{spec.objective.type}-{spec.model.family}",
            corpus_ids=spec.corpus_ids or [],
            dataset_id=dataset_id,
            max_steps=spec.training.max_steps,
            idempotency_key=idempotency_key,
            request_sha256=fingerprint,
            priority=spec.priority,
            devices=spec.resources.devices,
        )
        session.commit()
    except IntegrityError:
        # Two requests with one Idempotency-Key raced; the first one's job is the answer.
        session.rollback()
        earlier = crud.find_job_by_idempotency_key(session=session, tenant=tenant, key=idempotency_key or "")
        if earlier is None:
            raise
        return _replay(earlier, fingerprint, response)
    wake_worker(PREPARE_JOB, job.id)
    return job_public(job)


@router.post(
    ":estimate",
    response_model=JobEstimate,
    summary="Estimate a job: parameters, tokens, FLOPs, tokens per parameter, ETA",
    description="Validates the spec as `POST /v1/jobs` does (the same 422s, the corpora or dataset must be yours) "
    "and creates nothing. FLOPs follow `flops_formula`; `eta_seconds` scales the throughput your recent jobs "
    "recorded (preferring those of the same family and objective) by FLOPs per token, and is null with "
    "`eta_reason` when there is no such history. See docs/estimates.md.",
    responses={422: {"description": "Invalid spec; `details` names each bad field"}},
)
def estimate(spec: JobSpec, tenant: TenantDep, session: SessionDep) -> JobEstimate:
    _check_data(spec, tenant=tenant, session=session)
    if spec.init_from is not None:  # the shape and tokenizer are the parent's, as the job would have them
        spec, _, _ = _resolve_init_from(spec, spec.model_dump(mode="json"), tenant=tenant, session=session)
    _check_heldout_corpora(spec, tenant=tenant, session=session)
    return estimate_job(session=session, tenant=tenant, spec=spec)


def _replay(job: Job, fingerprint: str, response: Response) -> JobPublic:
    if job.request_sha256 != fingerprint:
        raise ApiError(
            409,
            "this Idempotency-Key was used with a different request body; use a new key for a new job",
            details={"job_id": job.id},
        )
    response.headers["Idempotent-Replayed"] = "true"
    return job_public(job)


def _check_data(spec: JobSpec, *, tenant: Tenant, session: Session) -> str | None:
    """422 unless the job's corpora (or curated dataset) are the caller's and usable; returns the dataset id."""
    if spec.dataset_id is None:
        _check_corpora(spec, tenant=tenant, session=session)
        return None
    dataset = crud.get_curated_dataset(session=session, tenant=tenant, dataset_id=spec.dataset_id)
    problem = None
    if dataset is None:
        problem = f"no dataset {spec.dataset_id}"
    elif dataset.status == DatasetStatus.FAILED:
        problem = f"dataset {spec.dataset_id} failed curation: {dataset.error}"
    if problem:
        raise ApiError(422, f"dataset_id: {problem}", details=[{"field": "dataset_id", "message": problem}])
    return spec.dataset_id


def _resolve_init_from(
    spec: JobSpec, canonical: dict[str, Any], *, tenant: Tenant, session: Session
) -> tuple[JobSpec, dict[str, Any], dict[str, Any]]:
    """The spec with the parent's shape and tokenizer, and the base it starts from; 422 naming what is wrong."""
    assert spec.init_from is not None
    base: dict[str, Any] | None = None
    if spec.init_from.checkpoint_id is not None:
        field, wanted = "init_from.checkpoint_id", spec.init_from.checkpoint_id
        checkpoint = crud.get_checkpoint(session=session, tenant=tenant, checkpoint_id=wanted)
        parent = crud.get_job(session=session, tenant=tenant, job_id=checkpoint.job_id) if checkpoint else None
        if checkpoint is not None and parent is not None:
            base = checkpoint_base(checkpoint, parent)
        problem = f"no checkpoint {wanted}"
    else:
        field, wanted = "init_from.model_id", spec.init_from.model_id or ""
        problem = f"no model {wanted}"
        model = crud.get_model(session=session, tenant=tenant, model_id=wanted)
        if model is not None and model.status != ModelStatus.READY:
            problem = f"model {wanted} is {model.status}, not ready" + (f": {model.error}" if model.error else "")
        elif model is not None:
            try:
                with get_blob_store().open(join_key(model.blob_prefix, "config.json")) as fh:
                    base = model_base(model, config=json.load(fh))
            except (OSError, ValueError) as exc:
                problem = f"model {wanted} cannot be started from: {exc}"
    if base is None:
        raise ApiError(422, f"{field}: {problem}", details=[{"field": field, "message": problem}])
    conflicts = parent_conflicts(spec, base["model"], base["tokenizer"])
    if conflicts:
        raise ApiError(422, "; ".join(f"{p['field']}: {p['message']}" for p in conflicts), details=conflicts)
    merged = inherit_from_parent(canonical, base["model"], base["tokenizer"])
    # The parent's shape may not suit this objective (say, a gpt2 for masked_lm).
    inherited = _validated_spec(merged)
    return inherited, inherited.model_dump(mode="json"), base


def _validated_spec(spec: dict[str, Any]) -> JobSpec:
    """`spec` as a JobSpec, or a 422 naming each field to fix (for a spec the request did not send whole)."""
    try:
        return JobSpec.model_validate(spec)
    except ValidationError as exc:
        details = validation_details(exc.errors())
        raise ApiError(422, "; ".join(f"{d['field']}: {d['message']}" for d in details), details=details) from exc


def _check_corpora(spec: JobSpec, *, tenant: Tenant, session: Session) -> None:
    problems = []
    for i, corpus_id in enumerate(spec.corpus_ids or []):
        corpus = crud.get_corpus(session=session, tenant=tenant, corpus_id=corpus_id)
        if corpus is None:
            problems.append({"field": f"corpus_ids[{i}]", "message": f"no corpus {corpus_id}"})
        elif corpus.status == CorpusStatus.FAILED:
            problems.append(
                {"field": f"corpus_ids[{i}]", "message": f"corpus {corpus_id} failed ingest: {corpus.error}"}
            )
    if problems:
        raise ApiError(422, "; ".join(f"{p['field']}: {p['message']}" for p in problems), details=problems)


def _check_heldout_corpora(spec: JobSpec, *, tenant: Tenant, session: Session) -> None:
    """422 unless each held-out corpus is the caller's and usable, and each metric named after one exists."""
    problems = []
    named: list[tuple[str, str]] = []
    for i, corpus_id in enumerate(spec.evaluation.corpus_ids):
        field = f"evaluation.corpus_ids[{i}]"
        corpus = crud.get_corpus(session=session, tenant=tenant, corpus_id=corpus_id)
        if corpus is None:
            problems.append({"field": field, "message": f"no corpus {corpus_id}"})
        elif corpus.status == CorpusStatus.FAILED:
            problems.append({"field": field, "message": f"corpus {corpus_id} failed ingest: {corpus.error}"})
        else:
            named.append((corpus.id, corpus.name))
    if not problems:
        names = set(heldout_metric_names(named).values())
        stopping, best = spec.evaluation.early_stopping, spec.checkpointing.best
        for field, metric in (
            ("evaluation.early_stopping.metric", stopping.metric if stopping else None),
            ("checkpointing.best.metric", best.metric if best else None),
        ):
            if metric and metric.startswith("val_") and "/" in metric and metric.split("/", 1)[1] not in names:
                problems.append(
                    {
                        "field": field,
                        "message": f"{metric!r} names no held-out corpus of this job; their metrics end in "
                        + ", ".join(f"/{name}" for name in sorted(names)),
                    }
                )
    if problems:
        raise ApiError(422, "; ".join(f"{p['field']}: {p['message']}" for p in problems), details=problems)


@router.get("", response_model=JobsPage, summary="List jobs")
def list_jobs(
    tenant: TenantDep,
    session: SessionDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: CursorDep = None,
) -> JobsPage:
    rows, next_cursor = crud.list_jobs(session=session, tenant=tenant, status=status, limit=limit, cursor=cursor)
    return JobsPage(data=[job_public(j) for j in rows], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic, summary="Get a job: status, step, loss, ETA")
async def get_job(job: ReadJob) -> JobPublic:
    # What clients poll: one query and one thread hop (see `read_job`); presenting the row is quick enough for
    # the event loop.
    return job_public(job)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobPublic,
    summary="Cancel a job",
    description="A queued job is cancelled at once; a running one stops at its next step boundary.",
    responses={409: {"description": "The job already finished"}},
)
def cancel_job(job: OwnedJob, session: SessionDep) -> JobPublic:
    if job.status in FINISHED_JOB_STATUSES:
        raise ApiError(409, f"job {job.id} already finished ({job.status}); nothing to cancel")
    crud.request_cancel(session=session, job=job)
    return job_public(job)


@router.post(
    "/{job_id}/pause",
    status_code=202,
    response_model=JobPublic,
    summary="Pause a job",
    description="A queued job pauses at once; a running one checkpoints at its next step boundary, frees its "
    "worker and becomes `paused`. `POST /resume` continues from that checkpoint with the same final weights.",
    responses={409: {"description": "The job is not queued or running"}},
)
def pause_job(job: OwnedJob, session: SessionDep) -> JobPublic:
    if job.status not in (Status.QUEUED, Status.RUNNING):
        raise ApiError(409, f"job {job.id} is {job.status}; only a queued or running job can be paused")
    crud.request_pause(session=session, job=job)
    return job_public(job)


@router.post(
    "/{job_id}/resume",
    status_code=202,
    response_model=JobPublic,
    summary="Resume a paused job",
    description="Continues from the checkpoint the pause saved; with `resources`, on another number of devices.",
    responses={
        403: {"description": "Over the queued-jobs quota"},
        409: {"description": "The job is not paused"},
        422: {"description": "`resources` the job cannot train on (`training.batch_size` not a multiple of devices)"},
    },
)
def resume_job(job: OwnedJob, session: SessionDep, body: JobResume | None = None) -> JobPublic:
    if job.status != Status.PAUSED:
        raise ApiError(409, f"job {job.id} is {job.status}, not paused; nothing to resume")
    resources = body.resources.model_dump() if body is not None and body.resources is not None else None
    if resources is not None:
        _validated_spec({**job.spec, "resources": resources})  # the spec's own rules (batch_size per device)
    check_resume(session, job.tenant_id)
    if not crud.resume_paused(session=session, job=job, resources=resources):
        raise ApiError(409, f"job {job.id} is still pausing; try again when its status is paused")
    session.commit()
    if job.dataset_key:
        wake_worker(TRAIN_JOB, job.id, queue=training_queue(job.devices))
    else:
        wake_worker(PREPARE_JOB, job.id)
    return job_public(job)


@router.get("/{job_id}/metrics", response_model=MetricsPage, summary="A job's metrics")
def get_metrics(
    job: OwnedJob,
    session: SessionDep,
    name: Annotated[str | None, Query(max_length=64, examples=["train_loss"])] = None,
    after_step: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> MetricsPage:
    rows = crud.list_metrics(session=session, job_id=job.id, name=name, after_step=after_step, limit=limit)
    return MetricsPage(data=[MetricPoint(step=m.step, name=m.name, value=m.value, time=m.time) for m in rows])


@router.get("/{job_id}/events", response_model=EventsPage, summary="A job's history")
def get_events(job: OwnedJob, session: SessionDep, after_id: Annotated[int | None, Query(ge=0)] = None) -> EventsPage:
    rows = crud.list_events(session=session, job_id=job.id, after_id=after_id)
    return EventsPage(data=[EventPublic(id=e.id, time=e.time, type=e.type, message=e.message) for e in rows])


STREAM_DESCRIPTION = """Server-Sent Events of the job as it happens. Every message has `id:`, `event:` and
`data:` (one line of JSON):

- `status`: the job, as `GET /v1/jobs/{id}` returns it; sent first, then whenever its status changes.
- `event`: one item of `GET /v1/jobs/{id}/events`.
- `metric`: one item of `GET /v1/jobs/{id}/metrics`.
- `end`: the final job, once it has ended (succeeded, failed or cancelled), after every event and metric;
  then the stream closes. A stream opened on an ended job replays what follows its start, then ends.

Ids are opaque and strictly increase. Reconnect with `Last-Event-ID: <last id received>` (or
`?last_event_id=`) to get everything after it and nothing twice; a `status` message is sent again only if
the status changed meanwhile. A `: ping` comment every 15 s keeps proxies from closing an idle stream. A
stream also closes without `end` when the server shuts down: reconnect. New rows are read every
`SELFSUP_STREAM_POLL_SECONDS` (default 1 s), once per job however many clients stream it."""


@router.get(
    "/{job_id}/stream",
    response_class=EventSourceResponse,
    summary="Follow a job live (Server-Sent Events)",
    description=STREAM_DESCRIPTION,
    response_description="`text/event-stream`: `status`, then `event`, `metric` and `status` messages, then `end`",
    responses={
        400: {"description": "`Last-Event-ID` (or `last_event_id`) is not an id this stream sent"},
        404: {"description": "No such job of the caller's"},
    },
)
async def stream_job(job: ReadJob, start: StreamStart, streams: StreamHubDep) -> AsyncIterator[ServerSentEvent]:
    """Stream the job's status, events and metrics from `start`, and `end` once it has ended.

    No database session or connection is held while it streams: `api/streams.py` reads each streamed job
    once per poll interval for all its clients, and a client catches up from its `Last-Event-ID` with reads
    of its own before it joins that shared read."""
    async for message in streams.follow(job.id, finished=job.status in FINISHED_JOB_STATUSES, start=start):
        yield message


@router.get(
    "/{job_id}/probes",
    response_model=ProbeRunsPage,
    summary="A job's probe runs",
    description="Every probe of the job's checkpoints (and the random-init baseline, at step 0): queued, running, "
    "or done with its held-out accuracy, which is also the metric `probe_accuracy/<name>` at the run's step.",
)
def get_probe_runs(job: OwnedJob, session: SessionDep) -> ProbeRunsPage:
    return ProbeRunsPage(data=[probe_run_public(r) for r in crud.list_probe_runs(session=session, job_id=job.id)])


@router.get("/{job_id}/checkpoints", response_model=CheckpointsPage, summary="A job's checkpoints")
def get_checkpoints(job: OwnedJob, session: SessionDep) -> CheckpointsPage:
    return CheckpointsPage(data=checkpoints_public(session, job.id))


CheckpointAlias = Literal["latest", "best", "final"]
_NO_CHECKPOINT_FOR = {
    "latest": "has no checkpoint yet",
    "best": "has no checkpoint with a value of its checkpointing.best metric yet",
    "final": "has no final checkpoint: it is written when the job reaches max_steps or stops early",
}


@router.get(
    "/{job_id}/checkpoints/{alias}",
    response_model=CheckpointPublic,
    summary="A job's checkpoint by alias: latest, best or final",
    description="`latest`: the newest; `best`: the best value of the job's `checkpointing.best` metric (default "
    "the lowest `val_loss`) among those with one recorded at their step; `final`: the one written at `max_steps` "
    "or when early stopping ended the job. The same resource as `GET /v1/checkpoints/{id}`.",
    responses={404: {"description": "No such job, or no checkpoint has this alias yet"}},
)
def get_checkpoint_by_alias(
    job: OwnedJob,
    alias: Annotated[CheckpointAlias, Path(description="latest, best or final")],
    session: SessionDep,
) -> CheckpointPublic:
    checkpoint = crud.checkpoint_by_alias(session=session, job_id=job.id, alias=alias)
    if checkpoint is None:
        raise ApiError(404, f"job {job.id} ({job.status}) {_NO_CHECKPOINT_FOR[alias]}")
    return checkpoint_public(session, checkpoint)
