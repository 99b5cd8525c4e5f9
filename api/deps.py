"""Request dependencies: the database session, the caller's tenant, and owned-resource lookups.

Ownership lives here, once: a route that asks for `OwnedJob` gets the caller's job or a 404.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

from api.errors import ApiError
from storage import crud
from storage.db import session_scope
from storage.tables import Checkpoint, Corpus, Job, Tenant
from workers.celery_app import enqueue

log = logging.getLogger("selfsup.api")


def get_session() -> Iterator[Session]:
    """A session per request, committed when the route returns normally."""
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def current_tenant(request: Request, session: SessionDep) -> Tenant:
    """The tenant of the request's `Authorization: Bearer <key>`; 401 without a valid key."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(
            401,
            "missing API key: send `Authorization: Bearer <key>` (create one with `selfsup keys create --tenant NAME`)",
        )
    tenant = crud.tenant_for_key(session=session, key=key.strip())
    if tenant is None:
        raise ApiError(401, "invalid API key")
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant)]


def owned_corpus(corpus_id: str, tenant: TenantDep, session: SessionDep) -> Corpus:
    """The caller's corpus, or 404."""
    corpus = crud.get_corpus(session=session, tenant=tenant, corpus_id=corpus_id)
    if corpus is None:
        raise ApiError(404, f"no corpus {corpus_id}")
    return corpus


def owned_job(job_id: str, tenant: TenantDep, session: SessionDep) -> Job:
    """The caller's job, or 404."""
    job = crud.get_job(session=session, tenant=tenant, job_id=job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id}")
    return job


def owned_checkpoint(checkpoint_id: str, tenant: TenantDep, session: SessionDep) -> Checkpoint:
    """The caller's checkpoint, or 404."""
    checkpoint = crud.get_checkpoint(session=session, tenant=tenant, checkpoint_id=checkpoint_id)
    if checkpoint is None:
        raise ApiError(404, f"no checkpoint {checkpoint_id}")
    return checkpoint


OwnedCorpus = Annotated[Corpus, Depends(owned_corpus)]
OwnedJob = Annotated[Job, Depends(owned_job)]
OwnedCheckpoint = Annotated[Checkpoint, Depends(owned_checkpoint)]


def page_cursor(
    cursor: Annotated[str | None, Query(description="The next_cursor of the previous page.")] = None,
) -> str | None:
    """The `cursor` query parameter, refused with 422 unless it came from a previous page."""
    if cursor:
        try:
            crud.decode_cursor(cursor)
        except ValueError as exc:
            raise ApiError(422, str(exc), details=[{"field": "cursor", "message": str(exc)}]) from exc
    return cursor


CursorDep = Annotated[str | None, Depends(page_cursor)]


def wake_worker(task: str, row_id: str) -> None:
    """Enqueue a task after its row is committed; if the broker is down, the reconciler catches up."""
    try:
        enqueue(task, row_id)
    except Exception:  # noqa: BLE001 - the row is the truth; a lost wake-up is retried by the reconciler
        log.exception("could not enqueue %s for %s; the reconciler will retry", task, row_id)
