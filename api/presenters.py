"""Turn table rows into response schemas (the only place that knows both shapes)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.schemas import (
    CheckpointFile,
    CheckpointPublic,
    CorpusArchiveStats,
    CorpusPublic,
    DatasetPublic,
    DatasetSourcePublic,
    DeliveryPublic,
    JobPublic,
    KeyCreated,
    KeyPublic,
    LabelledSetPublic,
    ModelFile,
    ModelPublic,
    ProbeRunPublic,
    WebhookCreated,
    WebhookPublic,
)
from selfsup.spec import JobSpec
from storage import crud
from storage.status import JobStatus
from storage.tables import (
    ApiKey,
    Checkpoint,
    Corpus,
    Dataset,
    Job,
    LabelledSet,
    Model,
    ProbeRun,
    Webhook,
    WebhookDelivery,
)


def corpus_public(corpus: Corpus) -> CorpusPublic:
    """A corpus as clients see it (an archive's file counts come from its ingest report)."""
    public = CorpusPublic.model_validate(corpus, from_attributes=True)
    archive = (corpus.ingest_report or {}).get("archive")
    if archive is not None:
        public.archive = CorpusArchiveStats.model_validate(archive)
    return public


def model_public(model: Model) -> ModelPublic:
    """An uploaded model as clients see it (never its blob location)."""
    return ModelPublic(
        id=model.id,
        name=model.name,
        status=model.status,  # type: ignore[arg-type]
        error=model.error,
        family=model.family,  # type: ignore[arg-type]
        parameters=model.parameters,
        archive_format=model.archive_format,  # type: ignore[arg-type]
        archive_bytes=model.archive_bytes,
        archive_sha256=model.archive_sha256,
        files=[ModelFile(name=f["name"], size_bytes=f["bytes"], sha256=f["sha256"]) for f in model.files],
        created_at=model.created_at,
    )


def dataset_public(dataset: Dataset) -> DatasetPublic:
    """A curated dataset as clients see it (never its curation key or blob locations)."""
    return DatasetPublic(
        id=dataset.id,
        name=dataset.name,
        status=dataset.status,  # type: ignore[arg-type]
        error=dataset.error,
        sources=[
            DatasetSourcePublic(corpus_id=s["corpus_id"], name=s["name"], weight=s["weight"], share=s["share"])
            for s in dataset.source_corpora
        ],
        curation=dataset.request.get("curation"),
        decontaminate_against=list(dataset.request.get("decontaminate_against", [])),
        totals=dataset.totals,
        created_at=dataset.created_at,
        finished_at=dataset.finished_at,
    )


def job_public(job: Job) -> JobPublic:
    """A job as clients see it, with an ETA while it runs."""
    metrics = {k: float(v) for k, v in (job.latest_metrics or {}).items()}
    eta = None
    tps = metrics.get("tokens_per_second")
    if job.status == JobStatus.RUNNING and tps:
        tokens_per_step = JobSpec.model_validate(job.spec).tokens_per_step
        eta = round((job.max_steps - job.step) * tokens_per_step / tps, 1)
    return JobPublic(
        id=job.id,
        name=job.name,
        status=job.status,  # type: ignore[arg-type]
        spec=job.spec,
        step=job.step,
        max_steps=job.max_steps,
        tokens_seen=job.tokens_seen,
        metrics=metrics,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        eta_seconds=eta,
        cancel_requested=job.cancel_requested,
        pause_requested=job.pause_requested,
        worker=job.lease_owner,
        restarts=job.restarts,
        last_error=job.last_error,
    )


def checkpoints_public(session: Session, job_id: str) -> list[CheckpointPublic]:
    """All of a job's checkpoints, with their aliases."""
    checkpoints = crud.list_checkpoints(session=session, job_id=job_id)
    aliases = crud.checkpoint_aliases(session=session, job_id=job_id, checkpoints=checkpoints)
    return [_checkpoint_public(c, aliases[c.id]) for c in checkpoints]


def checkpoint_public(session: Session, checkpoint: Checkpoint) -> CheckpointPublic:
    """One checkpoint with its aliases among its job's checkpoints."""
    checkpoints = crud.list_checkpoints(session=session, job_id=checkpoint.job_id)
    aliases = crud.checkpoint_aliases(session=session, job_id=checkpoint.job_id, checkpoints=checkpoints)
    return _checkpoint_public(checkpoint, aliases.get(checkpoint.id, []))


def _checkpoint_public(checkpoint: Checkpoint, aliases: list[str]) -> CheckpointPublic:
    return CheckpointPublic(
        id=checkpoint.id,
        job_id=checkpoint.job_id,
        step=checkpoint.step,
        version=checkpoint.version,
        aliases=aliases,
        metrics=checkpoint.metrics,
        files=[CheckpointFile(**f) for f in checkpoint.files],
        created_at=checkpoint.created_at,
    )


def webhook_public(webhook: Webhook) -> WebhookPublic:
    """A webhook as clients see it: never its secret."""
    return WebhookPublic.model_validate(webhook, from_attributes=True)


def webhook_created(webhook: Webhook) -> WebhookCreated:
    """A webhook just created, with its secret: the one response that shows it."""
    return WebhookCreated.model_validate(webhook, from_attributes=True)


def delivery_public(delivery: WebhookDelivery) -> DeliveryPublic:
    """A webhook delivery and its attempts so far."""
    return DeliveryPublic.model_validate(delivery, from_attributes=True)


def labelled_set_public(labelled_set: LabelledSet) -> LabelledSetPublic:
    """A labelled set as clients see it (never its blob key)."""
    return LabelledSetPublic.model_validate(labelled_set, from_attributes=True)


def probe_run_public(run: ProbeRun) -> ProbeRunPublic:
    """A probe run as clients see it, with the metric it records."""
    return ProbeRunPublic(
        id=run.id,
        job_id=run.job_id,
        checkpoint_id=run.checkpoint_id,
        random_init=run.random_init,
        step=run.step,
        name=run.name,
        metric=crud.probe_metric_name(run.name),
        labelled_set_id=run.labelled_set_id,
        pooling=run.pooling,  # type: ignore[arg-type]
        layer=run.layer,
        status=run.status,  # type: ignore[arg-type]
        accuracy=run.accuracy,
        error=run.error,
        created_at=run.created_at,
    )


def key_public(api_key: ApiKey) -> KeyPublic:
    """An API key as its tenant's admins see it (never the key nor its hash)."""
    return KeyPublic(
        id=api_key.id,
        name=api_key.name,
        prefix=api_key.prefix,
        scopes=list(api_key.scopes),
        created_at=api_key.created_at,
        expires_at=api_key.expires_at,
        last_used_at=api_key.last_used_at,
        revoked=api_key.revoked_at is not None,
        revoked_at=api_key.revoked_at,
    )


def key_created(api_key: ApiKey, key: str) -> KeyCreated:
    """A key just created, with the key itself: the one response that shows it."""
    return KeyCreated(**key_public(api_key).model_dump(), key=key)
