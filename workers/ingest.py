"""The ingest task body: turn an uploaded blob into train/validation splits and mark the corpus."""

from __future__ import annotations

import json
import logging

from selfsup.settings import Settings
from storage import crud
from storage.blobs import BlobStore
from storage.db import session_scope
from storage.keys import corpus_prefix, corpus_split_key, corpus_upload_key
from storage.status import CorpusStatus
from workers.archives import ArchiveLimits, ArchiveRefused, archive_kind
from workers.celery_app import CURATE_DATASET, PREPARE_JOB, enqueue
from workers.data.documents import (
    IngestError,
    IngestStats,
    read_jsonl_texts,
    rebalance_tiny_split,
    split_archive,
    split_corpus,
)

log = logging.getLogger(__name__)

# Up to this many decompressed bytes are allowed whatever the ratio: a tiny archive is not a bomb.
_RATIO_FLOOR_BYTES = 1024 * 1024


def corpus_limits(settings: Settings) -> ArchiveLimits:
    """What a compressed corpus upload (gzip, zip, tar) may decompress to, and an archive may hold."""
    return ArchiveLimits(
        max_files=settings.archive_max_files,
        max_bytes=settings.max_decompressed_bytes,
        max_ratio=settings.archive_max_ratio,
        files_setting="SELFSUP_ARCHIVE_MAX_FILES",
        bytes_setting="SELFSUP_MAX_DECOMPRESSED_BYTES",
        ratio_floor_bytes=_RATIO_FLOOR_BYTES,
    )


def ingest(corpus_id: str, *, settings: Settings, store: BlobStore) -> str:
    """Ingest one corpus; idempotent, so a second delivery redoes the same work or nothing."""
    with session_scope() as session:
        corpus = crud.get_corpus_by_id(session=session, corpus_id=corpus_id)
        if corpus is None or corpus.status != CorpusStatus.PROCESSING:
            return "nothing to do"
        fmt = corpus.format
    try:
        stats = _split(corpus_id, fmt, settings=settings, store=store)
        if stats.train_documents == 0 or stats.validation_documents == 0:
            stats.train_documents, stats.validation_documents = _rebalance(store, corpus_id, settings)
    except (IngestError, ArchiveRefused) as exc:
        # The split writers discarded their partial files; the upload stays, as for any failed corpus.
        return _fail(corpus_id, str(exc))
    except FileNotFoundError:
        return _fail(corpus_id, "the uploaded bytes are missing from storage (the upload did not complete)")
    except Exception as exc:
        log.exception("ingest of %s failed", corpus_id)
        return _fail(corpus_id, f"internal error during ingest: {type(exc).__name__}: {exc}")

    with session_scope() as session:
        corpus = crud.get_corpus_by_id(session=session, corpus_id=corpus_id)
        if corpus is None:  # deleted meanwhile
            store.delete_prefix(corpus_prefix(corpus_id))
            return "deleted during ingest"
        if not crud.mark_corpus_ready(
            session=session,
            corpus_id=corpus_id,
            documents=stats.documents,
            characters=stats.characters,
            train_documents=stats.train_documents,
            validation_documents=stats.validation_documents,
            ingest_report=stats.report(),
        ):
            return "nothing to do"  # another delivery finished it first
        waiting = [job.id for job in crud.queued_jobs_reading(session=session, corpus_id=corpus_id)]
        curating = crud.processing_curated_datasets(session=session, tenant_id=corpus.tenant_id)
    for job_id in waiting:
        enqueue(PREPARE_JOB, job_id)
    for dataset_id in curating:  # a dataset of the tenant may wait for this corpus; one that does not, returns
        enqueue(CURATE_DATASET, dataset_id)
    return f"ready: {stats.documents} documents, {stats.characters} characters"


def _split(corpus_id: str, fmt: str, *, settings: Settings, store: BlobStore) -> IngestStats:
    """Read the upload into the train and validation splits (written only if the whole upload is read)."""
    limits = corpus_limits(settings)
    with (
        store.writer(corpus_split_key(corpus_id, "train")) as train_out,
        store.writer(corpus_split_key(corpus_id, "validation")) as validation_out,
    ):
        if fmt == "archive":
            if not store.exists(corpus_upload_key(corpus_id)):
                raise FileNotFoundError(corpus_upload_key(corpus_id))
            archive = store.local_copy(corpus_upload_key(corpus_id))  # a zip is read from its end: a seekable file
            return split_archive(
                archive,
                archive_kind(archive),
                limits=limits,
                max_file_bytes=settings.archive_max_file_bytes,
                validation_fraction=settings.validation_fraction,
                train_out=train_out,
                validation_out=validation_out,
            )
        with store.open(corpus_upload_key(corpus_id)) as raw:
            return split_corpus(
                raw,
                fmt=fmt,
                validation_fraction=settings.validation_fraction,
                train_out=train_out,
                validation_out=validation_out,
                limits=limits,
            )


def _rebalance(store: BlobStore, corpus_id: str, settings: Settings) -> tuple[int, int]:
    splits = {}
    for split in ("train", "validation"):
        with store.open(corpus_split_key(corpus_id, split)) as fh:
            splits[split] = list(read_jsonl_texts(fh))
    train, validation = rebalance_tiny_split(
        splits["train"], splits["validation"], validation_fraction=settings.validation_fraction
    )
    for split, docs in (("train", train), ("validation", validation)):
        with store.writer(corpus_split_key(corpus_id, split)) as out:
            for doc in docs:
                out.write((json.dumps({"text": doc}, ensure_ascii=False) + "\n").encode("utf-8"))
    return len(train), len(validation)


def _fail(corpus_id: str, reason: str) -> str:
    with session_scope() as session:
        corpus = crud.fail_corpus(session=session, corpus_id=corpus_id, reason=reason)
        if corpus is None:
            return "deleted during ingest"
        curating = crud.processing_curated_datasets(session=session, tenant_id=corpus.tenant_id)
    for dataset_id in curating:  # a dataset waiting for this corpus now fails with its reason
        enqueue(CURATE_DATASET, dataset_id)
    return f"failed: {reason}"
