"""`/v1/checkpoints`: read a checkpoint, download it as a tar archive or file by file."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from api.deps import OwnedCheckpoint, SessionDep, TenantDep, check_labelled_sets, wake_worker
from api.downloads import blob_download, content_disposition
from api.errors import ApiError
from api.presenters import checkpoint_public, probe_run_public
from api.schemas import CheckpointPublic, ProbeRunsPage, ProbesRequest
from selfsup.settings import get_settings
from storage import crud
from storage.blobs import get_blob_store
from storage.checkpoints import iter_tar, tar_size
from storage.keys import join_key
from workers.celery_app import PROBE_CHECKPOINT

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"])


@router.get("/{checkpoint_id}", response_model=CheckpointPublic, summary="Get a checkpoint")
def get_checkpoint(checkpoint: OwnedCheckpoint, session: SessionDep) -> CheckpointPublic:
    return checkpoint_public(session, checkpoint)


@router.get(
    "/{checkpoint_id}/archive",
    summary="Download a checkpoint as a tar archive",
    description="The Hugging Face directory (config, weights, tokenizer, model card) as `application/x-tar`, "
    "streamed with `Content-Length`. Unpack it and load it with the `transformers` Auto classes.",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-tar": {}}}},
)
def download_archive(checkpoint: OwnedCheckpoint) -> StreamingResponse:
    return StreamingResponse(
        iter_tar(get_blob_store(), checkpoint.blob_prefix, checkpoint.files),
        media_type="application/x-tar",
        headers={
            "Content-Length": str(tar_size(checkpoint.files)),
            "Content-Disposition": f'attachment; filename="{checkpoint.job_id}-v{checkpoint.version}.tar"',
        },
    )


@router.get(
    "/{checkpoint_id}/files/{name:path}",
    summary="Download one file of a checkpoint",
    description="Honours `Range`. The response carries the file's recorded sha256 in `X-Checksum-Sha256`. "
    "A name may have folders (`1_Pooling/config.json`), as in the checkpoint's `files`. With `?redirect=true` "
    "and blobs in an object store, the answer is a 307 to a short-lived presigned URL of the file (the bytes do "
    "not pass through the API; the 307 carries `X-Checksum-Sha256` too); with blobs in a local folder, the file "
    "is streamed as without it.",
    response_class=StreamingResponse,
    responses={
        206: {"description": "The requested range"},
        307: {
            "description": "`?redirect=true` with an object store: `Location` is a presigned URL of the file, "
            "valid for SELFSUP_DOWNLOAD_URL_SECONDS"
        },
        404: {"description": "No such checkpoint, or no such file in it"},
        416: {
            "description": "The range is outside the file (`Content-Range: bytes */<size>`)",
            "content": {"text/plain": {"schema": {"type": "string", "maxLength": 0}}},
        },
    },
)
def download_file(
    checkpoint: OwnedCheckpoint,
    name: str,
    request: Request,
    redirect: Annotated[
        bool, Query(description="Answer 307 to a presigned URL where blobs are in an object store.")
    ] = False,
) -> Response:
    entry = next((f for f in checkpoint.files if f["name"] == name), None)
    if entry is None:
        names = ", ".join(f["name"] for f in checkpoint.files)
        raise ApiError(404, f"checkpoint {checkpoint.id} has no file {name!r}; it has: {names}")
    store = get_blob_store()
    key = join_key(checkpoint.blob_prefix, entry["name"])
    if redirect:
        url = store.presigned_url(
            key,
            expires=get_settings().download_url_seconds,
            content_disposition=content_disposition(entry["name"]),
        )
        if url is not None:  # None: a local folder has no URL of its own, so the file is streamed below
            return RedirectResponse(url, status_code=307, headers={"x-checksum-sha256": entry["sha256"]})
    return blob_download(
        request,
        store=store,
        key=key,
        filename=entry["name"],
        size=entry["size_bytes"],
        sha256=entry["sha256"],
        last_modified=checkpoint.created_at,
    )


@router.post(
    "/{checkpoint_id}/probes",
    status_code=202,
    response_model=ProbeRunsPage,
    summary="Probe a checkpoint",
    description="Queue linear probes of this checkpoint on the caller's labelled sets (the body is the job spec's "
    "`probes`, under `probes`). Each records `probe_accuracy/<name>` at the checkpoint's step in the job's "
    "metrics; a probe name the job has no baseline of yet also gets the random-init baseline at step 0. "
    "Follow the runs at `GET /v1/jobs/{job_id}/probes`.",
)
def probe_checkpoint(
    checkpoint: OwnedCheckpoint, body: ProbesRequest, tenant: TenantDep, session: SessionDep
) -> ProbeRunsPage:
    job = crud.get_job_by_id(session=session, job_id=checkpoint.job_id)
    layers = int(job.spec["model"]["layers"]) if job is not None else 0
    check_labelled_sets(session, tenant, body.probes, field="probes", model_layers=layers)
    runs = crud.queue_probe_runs(
        session=session,
        job_id=checkpoint.job_id,
        checkpoint=checkpoint,
        probes=[probe.model_dump() for probe in body.probes],
    )
    session.commit()
    for run in runs:
        wake_worker(PROBE_CHECKPOINT, run.id)
    return ProbeRunsPage(data=[probe_run_public(r) for r in runs])
