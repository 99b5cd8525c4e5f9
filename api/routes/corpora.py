"""`/v1/corpora`: upload, list, read and delete corpora."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import CursorDep, OwnedCorpus, SessionDep, TenantDep, UploaderDep, run_db, wake_worker
from api.errors import ApiError
from api.presenters import corpus_public
from api.quotas import check_stored_upload, upload_quota
from api.schemas import CorporaPage, CorpusPublic
from api.uploads import name_of_upload, receive_upload
from selfsup.settings import get_settings
from selfsup.spec_types import Name
from storage import crud
from storage.blobs import get_blob_store
from storage.keys import corpus_prefix, corpus_upload_key
from storage.tables import Corpus, new_id
from workers.celery_app import INGEST_CORPUS

router = APIRouter(prefix="/v1/corpora", tags=["corpora"])

_UPLOAD_DOC = """The body is the file itself, streamed (or `multipart/form-data` with a field `file`).

Formats: `.txt` (UTF-8) or `.jsonl` with a string `text` per line, either gzip-compressed or not; or an
`archive` of text files (`.zip`, `.tar`, `.tar.gz`/`.tgz`, `.tar.bz2`, `.tar.xz`), one document per file.
The format is `?format=` when given, else `archive` when the bytes are a zip or tar, else the `Content-Type`
(`text/plain`; `application/jsonl` or `application/x-ndjson`; `application/zip`, `application/x-tar`), else
the name's extension; gzip is recognised by its magic bytes. Ingest then runs in the background: poll the
corpus until `status` is `ready` (or `failed`, with `error` saying why).

Decompression is counted while it streams: past `SELFSUP_ARCHIVE_MAX_RATIO` times the upload's size, or past
`SELFSUP_MAX_DECOMPRESSED_BYTES`, the corpus fails (a decompression bomb). In an archive, an absolute path, a
`..`, a link or a device fails the whole corpus; binary files (a NUL byte or invalid UTF-8), files over
`SELFSUP_ARCHIVE_MAX_FILE_BYTES` and empty files are skipped and counted in `archive`; more than
`SELFSUP_ARCHIVE_MAX_FILES` entries fail it.

    curl -X POST "$SELFSUP/v1/corpora?name=shakespeare" -H "Authorization: Bearer $KEY" \\
         -H "Content-Type: text/plain" --data-binary @tinyshakespeare.txt

For a large file use `-T corpus.txt` (with `-X POST`) instead: curl streams it, where `--data-binary @file`
first reads the whole file into curl's memory, and curl (7.88 here) refuses a 1 GiB file that way ("out of memory").
"""


@router.post(
    "",
    status_code=201,
    response_model=CorpusPublic,
    summary="Upload a corpus",
    description=_UPLOAD_DOC,
    responses={
        403: {"description": "Over a storage or upload quota; `details` names it, its limit and the use"},
        413: {"description": "Over the size limit"},
        415: {"description": "Unknown format"},
        422: {"description": "Empty upload"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/plain": {"schema": {"type": "string", "format": "binary"}},
                "application/jsonl": {"schema": {"type": "string", "format": "binary"}},
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
                "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
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
async def upload_corpus(
    request: Request,
    tenant: UploaderDep,
    name: Annotated[
        Name | None, Query(description="Defaults to the file name (the id if that is no valid name).")
    ] = None,
    corpus_format: Annotated[
        Literal["txt", "jsonl", "archive"] | None,
        Query(alias="format", description="The corpus format; by default told by the bytes, Content-Type and name."),
    ] = None,
) -> CorpusPublic:
    corpus_id = new_id("cor")
    store = get_blob_store()
    quota = await run_db(request, lambda session: upload_quota(session, tenant))
    upload = await receive_upload(
        request,
        store=store,
        key=corpus_upload_key(corpus_id),
        quota=quota,
        name=name,
        limit=get_settings().max_upload_bytes,
        fmt=corpus_format,
    )

    # The body streamed without holding a database connection; the row is written in a short transaction.
    def record(session: Session) -> Corpus:
        # Another upload may have finished while this one streamed: the storage quota is checked again here.
        check_stored_upload(session, tenant, upload.size_bytes)
        return crud.create_corpus(
            session=session,
            tenant=tenant,
            corpus_id=corpus_id,
            name=name_of_upload(name, upload.filename, corpus_id),
            fmt=upload.fmt,
            compression=upload.compression,
            size_bytes=upload.size_bytes,
            sha256=upload.sha256,
        )

    try:
        corpus = await run_db(request, record)
    except ApiError:
        store.delete_prefix(corpus_prefix(corpus_id))
        raise
    await run_in_threadpool(wake_worker, INGEST_CORPUS, corpus.id)
    return corpus_public(corpus)


@router.get("", response_model=CorporaPage, summary="List corpora")
def list_corpora(
    tenant: TenantDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: CursorDep = None,
) -> CorporaPage:
    rows, next_cursor = crud.list_corpora(session=session, tenant=tenant, limit=limit, cursor=cursor)
    return CorporaPage(data=[corpus_public(c) for c in rows], next_cursor=next_cursor)


@router.get("/{corpus_id}", response_model=CorpusPublic, summary="Get a corpus")
def get_corpus(corpus: OwnedCorpus) -> CorpusPublic:
    return corpus_public(corpus)


@router.delete("/{corpus_id}", status_code=204, summary="Delete a corpus", responses={409: {"description": "In use"}})
def delete_corpus(corpus: OwnedCorpus, session: SessionDep) -> Response:
    in_use = crud.corpus_in_use(session=session, corpus_id=corpus.id)
    if in_use:
        raise ApiError(
            409,
            f"corpus {corpus.id} is used by queued or running jobs ({', '.join(in_use)}); cancel them first",
            details={"job_ids": in_use},
        )
    crud.delete_corpus(session=session, corpus=corpus)
    session.commit()
    get_blob_store().delete_prefix(corpus_prefix(corpus.id))
    return Response(status_code=204)
