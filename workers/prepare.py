"""The prepare task body: make sure a queued job's tokenized data exists, then wake a trainer.

A job names corpora (tokenized as they are, once per corpora and tokenizer) or a curated dataset
(waited for until curated, then its kept text tokenized once per curation, sources and tokenizer,
each source drawn by its weight).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from selfsup.spec import JobSpec
from storage import crud
from storage.bases import BaseUnusable, tokenizer_files
from storage.blobs import BlobStore
from storage.checkpoints import verify_files
from storage.db import session_scope
from storage.keys import join_key
from storage.status import CorpusStatus, DatasetStatus, JobStatus
from storage.tables import Corpus, Dataset, TokenizedDataset
from workers.celery_app import wake_trainer
from workers.data.datasets import TOKENIZER_DIR, build_dataset, dataset_key, tokenizer_identity
from workers.data.heldout import ensure_heldout, heldout_key, tokenizer_sha256

log = logging.getLogger(__name__)


def prepare(job_id: str, *, store: BlobStore) -> str:
    """Tokenize (or reuse) the job's data; fail the job with a reason if its corpora cannot serve it."""
    with session_scope() as session:
        job = crud.get_job_by_id(session=session, job_id=job_id)
        if job is None or job.status != JobStatus.QUEUED:
            return "nothing to do"
        if job.dataset_key:
            return "already prepared"
        spec = JobSpec.model_validate(job.spec)
        tokenizer_spec = spec.tokenizer.model_dump(mode="json")  # type: ignore[union-attr]
        base = job.base
        # A job that starts from a base keeps the base's tokenizer: the key names its files' sha256.
        identity = tokenizer_identity(tokenizer_spec, base["tokenizer_sha256"] if base else None)
        data: list[Corpus] | Dataset
        if job.dataset_id is not None or spec.dataset_id is not None:
            curated = crud.get_curated_dataset_by_id(session=session, dataset_id=job.dataset_id or "")
            if curated is None:
                crud.fail_job(session=session, job_id=job.id, reason="its dataset was deleted before training started")
                return "failed: dataset deleted"
            if curated.status == DatasetStatus.FAILED:
                reason = f"dataset {curated.name} ({curated.id}) failed: {curated.error}"
                crud.fail_job(session=session, job_id=job.id, reason=reason)
                return "failed: dataset failed"
            if curated.status != DatasetStatus.READY:
                return "waiting for dataset curation"
            from workers.data.curated import curated_dataset_key

            data = curated
            key = curated_dataset_key(curated.curation_key, [s["corpus_id"] for s in curated.source_corpora], identity)
        else:
            corpora = crud.job_corpora(session=session, job_id=job_id)
            failed = [c for c in corpora if c.status == CorpusStatus.FAILED]
            if failed:
                reason = f"corpus {failed[0].name} ({failed[0].id}) failed: {failed[0].error}"
                crud.fail_job(session=session, job_id=job.id, reason=reason)
                return "failed: corpus failed"
            if len(corpora) < len(job.spec["corpus_ids"]):
                reason = "a corpus of this job was deleted before training started"
                crud.fail_job(session=session, job_id=job.id, reason=reason)
                return "failed: corpus deleted"
            if any(c.status != CorpusStatus.READY for c in corpora):
                return "waiting for corpus ingest"
            data = corpora
            key = dataset_key([c.sha256 for c in corpora], identity)
        heldout = _heldout_corpora(session, job.id, spec)
        if isinstance(heldout, str):
            return heldout
        dataset = crud.get_dataset(session=session, key=key)

    if dataset is None:
        try:
            base_tokenizer = _base_tokenizer(store, base) if base else None
        except BaseUnusable as exc:
            _fail(job_id, str(exc))
            return "failed: base unusable"
        try:
            built = _build(
                store=store,
                key=key,
                data=data,
                tokenizer_spec=tokenizer_spec,
                base_tokenizer=base_tokenizer,
                identity=identity,
            )
        except Exception as exc:
            log.exception("tokenizing for job %s failed", job_id)
            _fail(job_id, f"tokenization failed: {type(exc).__name__}: {exc}")
            return "failed: tokenization"
        with session_scope() as session:
            dataset = crud.add_dataset(session=session, dataset=built)

    window = spec.model.context_length + 1
    problem = None
    if dataset.train_tokens < window:
        problem = f"the training split has {dataset.train_tokens} tokens"
    elif dataset.validation_tokens < window:
        problem = f"the validation split has {dataset.validation_tokens} tokens"
    if problem is None and heldout:
        try:
            problem = _prepare_heldout(store=store, dataset=dataset, corpora=heldout, window=window)
        except Exception as exc:
            log.exception("tokenizing held-out corpora for job %s failed", job_id)
            _fail(job_id, f"tokenizing evaluation.corpus_ids failed: {type(exc).__name__}: {exc}")
            return "failed: tokenization"
    if problem:
        _fail(
            job_id,
            f"{problem}, fewer than model.context_length + 1 = {window}; "
            "upload more text or lower model.context_length",
        )
        return "failed: too little data"
    with session_scope() as session:
        # Only the delivery that records the dataset wakes a trainer, so duplicates enqueue nothing.
        recorded = crud.record_job_dataset(session=session, job_id=job_id, dataset_key=key)
    if not recorded:
        return "already prepared"
    wake_trainer(job_id, spec.resources.devices)
    return f"dataset {key[:12]} ready ({dataset.train_tokens} train tokens); trainer woken"


def _build(
    *,
    store: BlobStore,
    key: str,
    data: list[Corpus] | Dataset,
    tokenizer_spec: dict[str, Any],
    base_tokenizer: Path | None,
    identity: dict[str, Any],
) -> TokenizedDataset:
    """Tokenize a job's corpora as they are, or a curated dataset's kept text by its sources' weights."""
    tokenizer = {"tokenizer_spec": tokenizer_spec, "base_tokenizer": base_tokenizer, "identity": identity}
    if isinstance(data, Dataset):
        from workers.data.curated import build_curated_dataset

        return build_curated_dataset(store=store, key=key, dataset=data, **tokenizer)  # type: ignore[arg-type]
    return build_dataset(store=store, key=key, corpora=data, **tokenizer)  # type: ignore[arg-type]


def _base_tokenizer(store: BlobStore, base: dict[str, Any]) -> Path:
    """The local folder of the base a job starts from, its tokenizer files checked against their sha256s."""
    folder = store.local_copy(base["blob_prefix"])
    problem = verify_files(folder, tokenizer_files(base["files"]))
    if problem:
        raise BaseUnusable(f"cannot use the tokenizer of {base['type']} {base['id']} (init_from): {problem}")
    return folder


def _heldout_corpora(session: Session, job_id: str, spec: JobSpec) -> list[Corpus] | str:
    """The job's held-out corpora once all are ready; else what happened (the job failed, or it waits)."""
    wanted = spec.evaluation.corpus_ids
    by_id = crud.corpora_by_ids(session=session, corpus_ids=wanted)
    missing = [corpus_id for corpus_id in wanted if corpus_id not in by_id]
    if missing:
        crud.fail_job(session=session, job_id=job_id, reason=f"evaluation corpus {missing[0]} was deleted")
        return "failed: evaluation corpus deleted"
    corpora = [by_id[corpus_id] for corpus_id in wanted]
    failed = [c for c in corpora if c.status == CorpusStatus.FAILED]
    if failed:
        reason = f"evaluation corpus {failed[0].name} ({failed[0].id}) failed: {failed[0].error}"
        crud.fail_job(session=session, job_id=job_id, reason=reason)
        return "failed: evaluation corpus failed"
    if any(c.status != CorpusStatus.READY for c in corpora):
        return "waiting for evaluation corpus ingest"
    return corpora


def _prepare_heldout(*, store: BlobStore, dataset: TokenizedDataset, corpora: list[Corpus], window: int) -> str | None:
    """Tokenize each held-out corpus with the dataset's tokenizer (once per corpus and tokenizer); a problem or None."""
    tokenizer_dir = store.local_copy(join_key(dataset.blob_prefix, TOKENIZER_DIR))
    digest = tokenizer_sha256(tokenizer_dir)
    for corpus in corpora:
        key = heldout_key(corpus.sha256, digest)
        tokens = ensure_heldout(store=store, corpus=corpus, tokenizer_dir=tokenizer_dir, key=key)
        if tokens < window:
            return f"evaluation corpus {corpus.name} ({corpus.id}) has {tokens} tokens"
    return None


def _fail(job_id: str, reason: str) -> None:
    with session_scope() as session:
        crud.fail_job(session=session, job_id=job_id, reason=reason)
