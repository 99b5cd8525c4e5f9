"""`/v1/models`: upload, list, read and delete base models (Hugging Face folders) to start jobs from."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import CursorDep, OwnedModel, SessionDep, TenantDep, UploaderDep, run_db, wake_worker
from api.errors import ApiError
from api.presenters import model_public
from api.quotas import check_stored_upload, upload_quota
from api.schemas import ModelPublic, ModelsPage
from api.uploads import name_of_upload, receive_archive
from selfsup.settings import get_settings
from selfsup.spec_types import Name
from storage import crud
from storage.blobs import get_blob_store
from storage.keys import model_files_prefix, model_prefix, model_upload_key
from storage.tables import Model, new_id
from workers.celery_app import VALIDATE_MODEL

router = APIRouter(prefix="/v1/models", tags=["models"])

_UPLOAD_DOC = """The body is a tar (plain, `.tar.gz`, `.tar.bz2`, `.tar.xz`) or zip archive of a Hugging Face model
folder, streamed (or `multipart/form-data` with a field `file`): `config.json`, the weights as safetensors
(`model.safetensors`, or shards with `model.safetensors.index.json`) and the tokenizer's files, as
`save_pretrained` writes them (a single top-level folder is fine). Families: gpt2, llama, bert, roberta, t5.

Validation then runs in the background: poll the model until `status` is `ready` (or `failed`, with `error`
saying what to fix). It refuses pickled weights (`.bin`, `.pt`, `.pkl`: re-save with
`save_pretrained(safe_serialization=True)`), weights whose shapes differ from `config.json`, a tokenizer that
does not load, and unsafe archives: absolute paths, `..`, links or devices, more than `SELFSUP_MODEL_MAX_FILES`
entries, more than `SELFSUP_MODEL_MAX_BYTES` extracted, or more than `SELFSUP_ARCHIVE_MAX_RATIO` bytes
extracted per archive byte. A refused archive leaves nothing stored.

    tar -czf my-model.tar.gz -C my-model .
    curl -X POST "$SELFSUP/v1/models?name=my-model" -H "Authorization: Bearer $KEY" \\
         -H "Content-Type: application/gzip" --data-binary @my-model.tar.gz
"""


@router.post(
    "",
    status_code=201,
    response_model=ModelPublic,
    summary="Upload a base model",
    description=_UPLOAD_DOC,
    responses={
        403: {"description": "Over a storage or upload quota; `details` names it, its limit and the use"},
        413: {"description": "Over the size limit"},
        415: {"description": "Not a tar or zip archive"},
        422: {"description": "Empty upload"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            },
        }
    },
)
async def upload_model(
    request: Request,
    tenant: UploaderDep,
    name: Annotated[
        Name | None, Query(description="Defaults to the file name (the id if that is no valid name).")
    ] = None,
) -> ModelPublic:
    model_id = new_id("mdl")
    store = get_blob_store()
    quota = await run_db(request, lambda session: upload_quota(session, tenant))
    archive = await receive_archive(
        request,
        store=store,
        key=model_upload_key(model_id),
        quota=quota,
        limit=get_settings().model_max_bytes,
        limit_setting="SELFSUP_MODEL_MAX_BYTES",
    )

    # The body streamed without holding a database connection; the row is written in a short transaction.
    def record(session: Session) -> Model:
        # Another upload may have finished while this one streamed: the storage quota is checked again here.
        check_stored_upload(session, tenant, archive.size_bytes)
        return crud.create_model(
            session=session,
            tenant=tenant,
            model_id=model_id,
            name=name_of_upload(name, archive.filename, model_id),
            archive_format=archive.fmt,
            archive_bytes=archive.size_bytes,
            archive_sha256=archive.sha256,
            blob_prefix=model_files_prefix(model_id),
        )

    try:
        model = await run_db(request, record)
    except ApiError:
        store.delete_prefix(model_prefix(model_id))
        raise
    await run_in_threadpool(wake_worker, VALIDATE_MODEL, model.id)
    return model_public(model)


@router.get("", response_model=ModelsPage, summary="List uploaded models")
def list_models(
    tenant: TenantDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: CursorDep = None,
) -> ModelsPage:
    rows, next_cursor = crud.list_models(session=session, tenant=tenant, limit=limit, cursor=cursor)
    return ModelsPage(data=[model_public(m) for m in rows], next_cursor=next_cursor)


@router.get("/{model_id}", response_model=ModelPublic, summary="Get an uploaded model")
def get_model(model: OwnedModel) -> ModelPublic:
    return model_public(model)


@router.delete(
    "/{model_id}", status_code=204, summary="Delete an uploaded model", responses={409: {"description": "In use"}}
)
def delete_model(model: OwnedModel, session: SessionDep) -> Response:
    in_use = crud.model_in_use(session=session, model=model)
    if in_use:
        raise ApiError(
            409,
            f"model {model.id} is what queued, running or paused jobs start from ({', '.join(in_use)}); "
            "cancel them first",
            details={"job_ids": in_use},
        )
    crud.delete_model(session=session, model=model)
    session.commit()
    get_blob_store().delete_prefix(model_prefix(model.id))
    return Response(status_code=204)
