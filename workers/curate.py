"""The curate task body: wait for a dataset's corpora, curate them once per curation key, mark it ready.

A second dataset with the same curation key (same corpora contents, weights, rules and evaluation
corpora) reuses the stored kept text and report instead of curating again; while an older dataset with
that key is still curating, a newer one waits for it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from selfsup.curation_spec import DatasetCreate
from selfsup.settings import Settings
from storage import crud
from storage.blobs import BlobStore
from storage.db import session_scope
from storage.status import CorpusStatus, DatasetStatus
from storage.tables import Corpus
from workers.celery_app import CURATE_DATASET, PREPARE_JOB, enqueue

log = logging.getLogger(__name__)


def curate_dataset(dataset_id: str, *, settings: Settings, store: BlobStore) -> str:
    """Curate (or reuse the curation of) one dataset; idempotent, so a second delivery does nothing new."""
    with session_scope() as session:
        dataset = crud.get_curated_dataset_by_id(session=session, dataset_id=dataset_id)
        if dataset is None or dataset.status != DatasetStatus.PROCESSING:
            return "nothing to do"
        request = DatasetCreate.model_validate(dataset.request)
        key = dataset.curation_key
        named = [(f"sources[{i}].corpus_id", s.corpus_id) for i, s in enumerate(request.sources)]
        named += [(f"decontaminate_against[{i}]", c) for i, c in enumerate(request.decontaminate_against)]
        corpora = crud.corpora_by_ids(session=session, corpus_ids=[corpus_id for _, corpus_id in named])
        problem = _unusable(named, corpora)
        if problem:
            return _fail(dataset_id, key, problem)
        if any(corpora[corpus_id].status != CorpusStatus.READY for _, corpus_id in named):
            return "waiting for corpus ingest"
        sources = [corpora[s.corpus_id] for s in request.sources]
        evaluation = [corpora[c] for c in request.decontaminate_against]
        earlier = crud.earlier_processing_dataset(session=session, dataset=dataset)

    # Imported here: the rules pull in their libraries only in a worker that curates.
    from workers.data.curated import report_totals, run_curation, stored_report

    report = stored_report(store, key)
    if report is not None:
        return _ready(dataset_id, key, report_totals(report), how=f"reused curation {key[:12]}")
    if earlier is not None:
        return f"waiting for dataset {earlier}, which curates the same text"
    workdir_root = settings.resolved_home / "work"
    workdir_root.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=f"curate-{dataset_id}-", dir=workdir_root) as workdir:
            report = run_curation(
                store=store,
                curation_key=key,
                request=request,
                sources=sources,
                evaluation=evaluation,
                workdir=Path(workdir),
                heartbeat=_Heartbeat(dataset_id, every_seconds=settings.lease_seconds / 3),
                processes=settings.resolved_curation_processes,
            )
    except FileNotFoundError as exc:
        return _fail(dataset_id, key, f"a corpus's ingested text is missing from storage ({exc.filename})")
    except Exception as exc:  # noqa: BLE001 - any error ends the dataset failed with its reason, never silently
        log.exception("curation of dataset %s failed", dataset_id)
        return _fail(dataset_id, key, f"curation failed: {type(exc).__name__}: {exc}")
    return _ready(dataset_id, key, report_totals(report), how=f"curated {key[:12]}")


def _unusable(named: list[tuple[str, str]], corpora: dict[str, Corpus]) -> str | None:
    """Why the named corpora cannot be curated (one was deleted or failed ingest), or None."""
    for field, corpus_id in named:
        corpus = corpora.get(corpus_id)
        if corpus is None:
            return f"corpus {corpus_id} ({field}) was deleted before curation"
        if corpus.status == CorpusStatus.FAILED:
            return f"corpus {corpus.name} ({corpus_id}, {field}) failed ingest: {corpus.error}"
    return None


class _Heartbeat:
    """Touches a curating dataset now and then, so the reconciler does not start a second curation."""

    def __init__(self, dataset_id: str, *, every_seconds: float) -> None:
        self.dataset_id = dataset_id
        self.every_seconds = every_seconds
        self.last = time.monotonic()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last < self.every_seconds:
            return
        self.last = now
        with session_scope() as session:
            crud.touch_curated_dataset(session=session, dataset_id=self.dataset_id)


def _ready(dataset_id: str, key: str, totals: dict[str, Any], *, how: str) -> str:
    with session_scope() as session:
        if not crud.mark_curated_dataset_ready(session=session, dataset_id=dataset_id, totals=totals):
            return "nothing to do"  # deleted, or another delivery finished it first
        jobs = [job.id for job in crud.queued_jobs_on_dataset(session=session, dataset_id=dataset_id)]
        sharing = crud.processing_curated_datasets(session=session, curation_key=key)
    for job_id in jobs:
        enqueue(PREPARE_JOB, job_id)
    for other in sharing:  # they reuse this curation now
        enqueue(CURATE_DATASET, other)
    return f"ready: {how}; woke {len(jobs)} jobs"


def _fail(dataset_id: str, key: str, reason: str) -> str:
    with session_scope() as session:
        if crud.fail_curated_dataset(session=session, dataset_id=dataset_id, reason=reason) is None:
            return "deleted during curation"
        sharing = crud.processing_curated_datasets(session=session, curation_key=key)
    for other in sharing:  # no longer waiting on this one: each tries (or fails) on its own
        enqueue(CURATE_DATASET, other)
    return f"failed: {reason}"
