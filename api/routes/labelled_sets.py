"""`/v1/labelled-sets`: upload, list, read and delete the labelled sets that probes measure checkpoints on."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import CursorDep, OwnedLabelledSet, SessionDep, TenantDep, UploaderDep, run_db
from api.errors import ApiError
from api.labelled_sets import read_body, validate_labelled_set
from api.presenters import labelled_set_public
from api.quotas import check_stored_upload, upload_quota
from api.schemas import LabelledSetPublic, LabelledSetsPage
from selfsup.settings import get_settings
from selfsup.spec_types import Name
from storage import crud
from storage.blobs import BlobStore, get_blob_store
from storage.keys import labelled_set_key, labelled_set_prefix
from storage.tables import LabelledSet, new_id

router = APIRouter(prefix="/v1/labelled-sets", tags=["labelled sets"])

_UPLOAD_DOC = """The body is JSONL, one example a line: `{"text": "...", "label": "..."}` (a label may be a string
or an integer). Validated at once: every line needs a non-empty `text` and a `label`, the set at least 2 labels
and 2 examples of each. A bad set is refused with 422, naming the bad lines (1-based) in `details`.

Name it in a job's `probes` (`{"labelled_set_id": "lbl_…", "name": "source"}`) or in
`POST /v1/checkpoints/{id}/probes`: a logistic regression on the checkpoint's frozen features is fitted on
about 80% of the examples (split by a hash of each text, per label) and its accuracy on the rest recorded.

    curl -X POST "$SELFSUP/v1/labelled-sets?name=which-play" -H "Authorization: Bearer $KEY" \\
         -H "Content-Type: application/jsonl" --data-binary @plays.jsonl
"""


def _store(store: BlobStore, key: str, body: bytes) -> None:
    with store.writer(key) as out:
        out.write(body)


@router.post(
    "",
    status_code=201,
    response_model=LabelledSetPublic,
    summary="Upload a labelled set",
    description=_UPLOAD_DOC,
    responses={403: {"description": "Over a storage or upload quota"}, 413: {"description": "Over the size limit"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/jsonl": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload_labelled_set(
    request: Request,
    tenant: UploaderDep,
    name: Annotated[Name | None, Query(description="Defaults to the id.")] = None,
) -> LabelledSetPublic:
    settings = get_settings()
    body = await read_body(request, limit=settings.max_labelled_set_bytes)
    validated = await run_in_threadpool(validate_labelled_set, body, max_examples=settings.max_labelled_set_examples)
    quota = await run_db(request, lambda session: upload_quota(session, tenant))
    if quota is not None and len(validated.body) > quota.remaining:
        raise quota.exceeded(len(validated.body))
    labelled_set_id = new_id("lbl")
    store = get_blob_store()
    await run_in_threadpool(_store, store, labelled_set_key(labelled_set_id), validated.body)

    def record(session: Session) -> LabelledSet:
        check_stored_upload(session, tenant, len(validated.body))  # counted and inserted under the tenant's lock
        return crud.create_labelled_set(
            session=session,
            tenant=tenant,
            labelled_set_id=labelled_set_id,
            name=name or labelled_set_id,
            size_bytes=len(validated.body),
            sha256=validated.sha256,
            examples=validated.examples,
            label_counts=validated.label_counts,
        )

    try:
        labelled_set = await run_db(request, record)
    except ApiError:
        store.delete_prefix(labelled_set_prefix(labelled_set_id))
        raise
    return labelled_set_public(labelled_set)


@router.get("", response_model=LabelledSetsPage, summary="List labelled sets")
def list_labelled_sets(
    tenant: TenantDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: CursorDep = None,
) -> LabelledSetsPage:
    rows, next_cursor = crud.list_labelled_sets(session=session, tenant=tenant, limit=limit, cursor=cursor)
    return LabelledSetsPage(data=[labelled_set_public(r) for r in rows], next_cursor=next_cursor)


@router.get("/{labelled_set_id}", response_model=LabelledSetPublic, summary="Get a labelled set")
def get_labelled_set(labelled_set: OwnedLabelledSet) -> LabelledSetPublic:
    return labelled_set_public(labelled_set)


@router.delete("/{labelled_set_id}", status_code=204, summary="Delete a labelled set")
def delete_labelled_set(labelled_set: OwnedLabelledSet, session: SessionDep) -> Response:
    crud.delete_labelled_set(session=session, labelled_set=labelled_set)
    session.commit()
    get_blob_store().delete_prefix(labelled_set_prefix(labelled_set.id))
    return Response(status_code=204)
