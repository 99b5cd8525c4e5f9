"""The validate-model task body: extract an uploaded archive safely, check the model, and mark it ready or failed."""

from __future__ import annotations

import logging

from models.pretrained import PretrainedRefused, check_pretrained_folder
from selfsup.settings import Settings
from storage import crud
from storage.blobs import BlobStore
from storage.db import session_scope
from storage.keys import model_files_prefix, model_prefix, model_upload_key
from storage.status import ModelStatus
from workers.archives import ArchiveLimits, ArchiveRefused, extract_archive

log = logging.getLogger(__name__)


def validate_model(model_id: str, *, settings: Settings, store: BlobStore) -> str:
    """Validate one uploaded model; idempotent, so a second delivery redoes the same work or nothing."""
    with session_scope() as session:
        model = crud.get_model_by_id(session=session, model_id=model_id)
        if model is None or model.status != ModelStatus.PROCESSING:
            return "nothing to do"
        fmt = model.archive_format
    limits = ArchiveLimits(
        max_files=settings.model_max_files, max_bytes=settings.model_max_bytes, max_ratio=settings.archive_max_ratio
    )
    try:
        if not store.exists(model_upload_key(model_id)):
            return _fail(model_id, "the uploaded archive is missing from storage (the upload did not complete)", store)
        archive = store.local_copy(model_upload_key(model_id))
        # The folder appears under its prefix only if every check passed; a refusal discards it.
        with store.staging_dir(model_files_prefix(model_id)) as folder:
            files = extract_archive(archive, fmt, folder, limits=limits)
            summary = check_pretrained_folder(folder)
    except (ArchiveRefused, PretrainedRefused) as exc:
        return _fail(model_id, str(exc), store)
    except Exception as exc:
        log.exception("validation of model %s failed", model_id)
        return _fail(model_id, f"internal error during validation: {type(exc).__name__}: {exc}", store)
    store.delete_prefix(model_upload_key(model_id))  # the archive: the extracted folder is what jobs read

    with session_scope() as session:
        if crud.get_model_by_id(session=session, model_id=model_id) is None:  # deleted meanwhile
            store.delete_prefix(model_prefix(model_id))
            return "deleted during validation"
        if not crud.mark_model_ready(
            session=session,
            model_id=model_id,
            family=summary.family,
            parameters=summary.parameters,
            files=[{"name": f.name, "bytes": f.bytes, "sha256": f.sha256} for f in files],
        ):
            return "nothing to do"  # another delivery finished it first
    return f"ready: {summary.family}, {summary.parameters:,} parameters, {len(files)} files"


def _fail(model_id: str, reason: str, store: BlobStore) -> str:
    """Remove everything stored for the model, then record why it failed."""
    store.delete_prefix(model_prefix(model_id))
    with session_scope() as session:
        if not crud.fail_model(session=session, model_id=model_id, reason=reason):
            return "deleted or finished during validation"
    return f"failed: {reason}"
