"""Request dependencies: the database session, the caller's tenant, and owned-resource lookups.

Ownership lives here, once: a route that asks for `OwnedJob` gets the caller's job or a 404.

Database admission: a request that needs the database first takes one of the process's database
slots, waiting for it on the event loop (no thread, no connection held while it waits); there are
as many slots as the connection pool keeps connections (`SELFSUP_DATABASE_POOL_SIZE`; the overflow is
left to anything outside admission, so under load no request opens and closes a connection of its own).
So a request that holds a slot always gets a
connection at once, a worker thread never blocks on the pool, and no number of concurrent clients can
wedge the API (threads waiting for connections that only other threads' next steps would give back:
FastAPI issue 3205). A request that waits longer than `SELFSUP_API_WAIT_SECONDS` is answered 503 with
`Retry-After`; requests that need no database (`/healthz`) never wait.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from api.key_uses import KeyUses
from api.streams import StreamHub, StreamIdError, StreamPosition, ending_streams_on_exit_signals
from selfsup.logs import bind_log_context
from selfsup.scopes import Scope, grants, scope_for_method
from selfsup.settings import get_settings
from selfsup.spec import ProbeSpec
from storage import crud
from storage.db import get_sessionmaker, pool_kept, session_scope
from storage.status import CorpusStatus
from storage.tables import (
    ApiKey,
    Checkpoint,
    Corpus,
    Dataset,
    Job,
    LabelledSet,
    Model,
    Tenant,
    Webhook,
    utcnow,
)
from workers.celery_app import enqueue

log = logging.getLogger("selfsup.api")

T = TypeVar("T")


@asynccontextmanager
async def api_lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """The app's lifespan: one database slot per kept pooled connection, shared by every request and every
    job stream's feed, the process's job streams (`api/streams.py`), ended before the server stops, and
    the keys' last uses (`api/key_uses.py`), written every few seconds and once more at the end."""
    settings = get_settings()
    slots = anyio.Semaphore(pool_kept())
    if settings.bootstrap_admin_key is not None:
        await run_in_threadpool(_store_bootstrap_admin_key)
    key_uses = KeyUses()
    async with anyio.create_task_group() as feeds:
        streams = StreamHub(slots, feeds)
        feeds.start_soon(key_uses.flush_every, settings.key_last_used_flush_seconds, slots)
        with ending_streams_on_exit_signals(streams):
            yield {"database_slots": slots, "streams": streams, "key_uses": key_uses}
        streams.shut_down()
        feeds.cancel_scope.cancel()
    with anyio.CancelScope(shield=True):
        await run_in_threadpool(key_uses.flush)


def _store_bootstrap_admin_key() -> None:
    """`SELFSUP_BOOTSTRAP_ADMIN_KEY`, stored hashed as an admin key of the operator tenant unless already stored."""
    settings = get_settings()
    assert settings.bootstrap_admin_key is not None
    try:
        with session_scope() as session:
            created = crud.ensure_api_key(
                session=session,
                tenant_name=settings.operator_tenant,
                key=settings.bootstrap_admin_key.get_secret_value(),
                scopes=[Scope.ADMIN],
                name="bootstrap (SELFSUP_BOOTSTRAP_ADMIN_KEY)",
            )
    except IntegrityError:
        created = False  # another API process stored it at the same moment
    if created:
        log.info("stored SELFSUP_BOOTSTRAP_ADMIN_KEY as an admin key of tenant %s", settings.operator_tenant)


@asynccontextmanager
async def database_slot(request: Request) -> AsyncIterator[None]:
    """Hold one database slot; 503 + `Retry-After` if none frees up within `SELFSUP_API_WAIT_SECONDS`."""
    slots: anyio.Semaphore = request.state.database_slots
    wait = get_settings().api_wait_seconds
    try:
        with anyio.fail_after(wait):
            await slots.acquire()
    except TimeoutError:
        raise ApiError(
            503,
            f"the API is busy: no database connection came free within {wait:g} s; retry after a moment",
            headers={"Retry-After": "1"},
        ) from None
    try:
        yield
    finally:
        slots.release()


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session per request, inside a database slot, committed when the route returns normally.

    It is closed (and its connection returned) as soon as the route function returns, before a
    streamed response body is sent.
    """
    async with database_slot(request):
        session = get_sessionmaker()()
        try:
            yield session
        except BaseException:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(_end_session, session, commit=False)
            raise
        with anyio.CancelScope(shield=True):  # a commit under way finishes, and the connection goes back
            await run_in_threadpool(_end_session, session, commit=True)


def _end_session(session: Session, *, commit: bool) -> None:
    """Commit (or roll back) and close in one trip to a worker thread; the connection goes back either way."""
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def _unit_of_work(work: Callable[[Session], T]) -> T:
    with session_scope() as session:
        return work(session)


async def run_db(request: Request, work: Callable[[Session], T]) -> T:
    """Run `work(session)` in one transaction, in a worker thread, inside a database slot.

    For routes that must not hold a session for their whole duration (an upload streams for minutes).
    """
    async with database_slot(request):
        return await run_in_threadpool(_unit_of_work, work)


# FastAPI's own bearer scheme reads the header (and puts `securitySchemes` in the OpenAPI document, so `/docs`
# can authorise); with auto_error off, a missing or malformed header gets our 401 below, not FastAPI's.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key: `Authorization: Bearer <key>` (create one with `selfsup keys create --tenant NAME`, "
    "or `POST /v1/keys` with an `admin` key). GET needs the `read` scope, other methods `write`, `/v1/keys` `admin`.",
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the tenant, and the id and scopes of the key it used (never the key itself)."""

    tenant: Tenant
    key_id: str
    scopes: tuple[str, ...]


def _presented_key(credentials: HTTPAuthorizationCredentials | None) -> str:
    """The key of `Authorization: Bearer <key>`; 401 without one (no database needed to say so)."""
    if credentials is None:
        raise ApiError(
            401,
            "missing API key: send `Authorization: Bearer <key>` (create one with `selfsup keys create --tenant NAME`)",
        )
    return credentials.credentials


def _admit(request: Request, found: tuple[ApiKey, Tenant] | None, needed: Scope | None) -> Caller:
    """The caller of a looked-up key; 401 for a key that does not exist or is revoked or expired, 403 when it
    lacks the scope `needed` (default: what the request's method needs, `read` for GET and HEAD, `write` for
    the rest)."""
    if found is None:
        raise ApiError(401, "invalid API key")
    api_key, tenant = found
    now = utcnow()
    refusal = crud.api_key_refusal(api_key, now=now)
    if refusal == "revoked":
        raise ApiError(401, "API key revoked: ask an admin of your tenant for a new one")
    if refusal == "expired":
        assert api_key.expires_at is not None
        raise ApiError(
            401, f"API key expired at {api_key.expires_at.isoformat()}: ask an admin of your tenant for a new one"
        )
    # The request's log lines say whose it was and which key (its id; never the key).
    bind_log_context(tenant=tenant.name, key_id=api_key.id)
    key_uses: KeyUses | None = getattr(request.state, "key_uses", None)
    if key_uses is not None:
        key_uses.note(api_key.id, now)
    caller = Caller(tenant=tenant, key_id=api_key.id, scopes=tuple(api_key.scopes))
    needed = needed or scope_for_method(request.method)
    if not grants(caller.scopes, needed):
        have = ", ".join(caller.scopes) or "none"
        raise ApiError(
            403,
            f"this API key lacks the `{needed}` scope that {request.method} {request.url.path} needs "
            f"(its scopes: {have}); ask an admin of your tenant for a key with `{needed}`",
            details={"required_scope": str(needed), "key_scopes": list(caller.scopes)},
        )
    return caller


def authorize(
    request: Request, session: Session, credentials: HTTPAuthorizationCredentials | None, needed: Scope | None = None
) -> Caller:
    """The caller of `Authorization: Bearer <key>`, if its key may do what `needed` says (default: what the
    request's method needs); 401 without a key that exists and is neither revoked nor expired, 403 naming the
    missing scope. Looked up on every request (no cache), so a revocation holds from the next request on."""
    key = _presented_key(credentials)
    return _admit(request, crud.api_key_and_tenant(session=session, key=key), needed)


def tenant_for_credentials(
    request: Request, session: Session, credentials: HTTPAuthorizationCredentials | None
) -> Tenant:
    """The tenant of `Authorization: Bearer <key>`, if the key may do what the request's method needs."""
    return authorize(request, session, credentials).tenant


def current_tenant(request: Request, credentials: BearerDep, session: SessionDep) -> Tenant:
    """The caller's tenant, looked up in the request's session; every `/v1` route but key management uses it,
    so every one checks the scope its method needs."""
    return tenant_for_credentials(request, session, credentials)


async def uploading_tenant(request: Request, credentials: BearerDep) -> Tenant:
    """The caller's tenant, looked up in a transaction of its own, for routes that hold no session."""
    return await run_db(request, lambda session: tenant_for_credentials(request, session, credentials))


TenantDep = Annotated[Tenant, Depends(current_tenant)]
UploaderDep = Annotated[Tenant, Depends(uploading_tenant)]


def require_scope(needed: Scope) -> Callable[[Request, HTTPAuthorizationCredentials | None, Session], Caller]:
    """A dependency that gives the caller if its key has `needed`, whatever the method (403 otherwise)."""

    def caller_with_scope(request: Request, credentials: BearerDep, session: SessionDep) -> Caller:
        return authorize(request, session, credentials, needed)

    return caller_with_scope


AdminDep = Annotated[Caller, Depends(require_scope(Scope.ADMIN))]


def require_operator(caller: AdminDep) -> Caller:
    """The caller, if it holds an `admin` key of the operator tenant (`SELFSUP_OPERATOR_TENANT`); 403 otherwise."""
    operator = get_settings().operator_tenant
    if caller.tenant.name != operator:
        raise ApiError(
            403,
            f"only an admin key of the operator tenant ({operator!r}) may do this",
            details={"required_scope": str(Scope.ADMIN), "required_tenant": operator},
        )
    return caller


OperatorDep = Annotated[Caller, Depends(require_operator)]


def owned_corpus(corpus_id: str, tenant: TenantDep, session: SessionDep) -> Corpus:
    """The caller's corpus, or 404."""
    corpus = crud.get_corpus(session=session, tenant=tenant, corpus_id=corpus_id)
    if corpus is None:
        raise ApiError(404, f"no corpus {corpus_id}")
    return corpus


def owned_dataset(dataset_id: str, tenant: TenantDep, session: SessionDep) -> Dataset:
    """The caller's curated dataset, or 404."""
    dataset = crud.get_curated_dataset(session=session, tenant=tenant, dataset_id=dataset_id)
    if dataset is None:
        raise ApiError(404, f"no dataset {dataset_id}")
    return dataset


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


def owned_model(model_id: str, tenant: TenantDep, session: SessionDep) -> Model:
    """The caller's uploaded model, or 404."""
    model = crud.get_model(session=session, tenant=tenant, model_id=model_id)
    if model is None:
        raise ApiError(404, f"no model {model_id}")
    return model


def owned_webhook(webhook_id: str, tenant: TenantDep, session: SessionDep) -> Webhook:
    """The caller's webhook, or 404."""
    webhook = crud.get_webhook(session=session, tenant=tenant, webhook_id=webhook_id)
    if webhook is None:
        raise ApiError(404, f"no webhook {webhook_id}")
    return webhook


def owned_labelled_set(labelled_set_id: str, tenant: TenantDep, session: SessionDep) -> LabelledSet:
    """The caller's labelled set, or 404."""
    labelled_set = crud.get_labelled_set(session=session, tenant=tenant, labelled_set_id=labelled_set_id)
    if labelled_set is None:
        raise ApiError(404, f"no labelled set {labelled_set_id}")
    return labelled_set


OwnedCorpus = Annotated[Corpus, Depends(owned_corpus)]
OwnedLabelledSet = Annotated[LabelledSet, Depends(owned_labelled_set)]
OwnedDataset = Annotated[Dataset, Depends(owned_dataset)]
OwnedJob = Annotated[Job, Depends(owned_job)]
OwnedCheckpoint = Annotated[Checkpoint, Depends(owned_checkpoint)]
OwnedModel = Annotated[Model, Depends(owned_model)]
OwnedWebhook = Annotated[Webhook, Depends(owned_webhook)]


async def read_job(job_id: str, request: Request, credentials: BearerDep) -> Job:
    """The caller's job, or 404, for the routes clients poll and stream.

    The key, its tenant and the job are one query, in one transaction and one trip to a worker thread (the
    route itself is `async`): a poll costs one database round trip and one thread hop, and no session is
    held once the job is read (a stream runs for minutes). The key is checked as `authorize` does."""
    key = _presented_key(credentials)

    def load(session: Session) -> Job | None:
        found = crud.api_key_tenant_and_job(session=session, key=key, job_id=job_id)
        _admit(request, None if found is None else (found[0], found[1]), None)  # 401 or 403 unless usable
        return None if found is None else found[2]

    job = await run_db(request, load)
    if job is None:
        raise ApiError(404, f"no job {job_id}")
    return job


ReadJob = Annotated[Job, Depends(read_job)]


async def stream_start(
    last_event_id_header: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="The `id:` of the last message received: the stream resumes after it.",
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Query(description="The same as the `Last-Event-ID` header, for clients that cannot set headers."),
    ] = None,
) -> StreamPosition | None:
    """Where a stream resumes (None: from the beginning); 400 for an id the stream never sent.

    The header wins over the query parameter: a browser's EventSource keeps the URL it was opened with
    and sends the newer position in the header when it reconnects."""
    given, source = last_event_id_header, "Last-Event-ID"
    if given is None:
        given, source = last_event_id, "last_event_id"
    if given is None or not given.strip():
        return None
    try:
        return StreamPosition.decode(given)
    except StreamIdError as exc:
        raise ApiError(400, f"{source}: {exc}", details=[{"field": source, "message": str(exc)}]) from exc


StreamStart = Annotated[StreamPosition | None, Depends(stream_start)]


def stream_hub(request: Request) -> StreamHub:
    """This process's job streams."""
    hub: StreamHub = request.state.streams
    return hub


StreamHubDep = Annotated[StreamHub, Depends(stream_hub)]


async def page_cursor(
    cursor: Annotated[
        str | None,
        Query(
            pattern=crud.CURSOR_PATTERN,
            description="The next_cursor of the previous page (a cursor of another shape is refused with 422).",
        ),
    ] = None,
) -> str | None:
    """The `cursor` query parameter; its pattern is all there is to check (any such string is a position)."""
    return cursor


CursorDep = Annotated[str | None, Depends(page_cursor)]


def readable_corpora(session: Session, tenant: Tenant, named: list[tuple[str, str]]) -> list[Corpus]:
    """The tenant's corpora named by `(field, corpus_id)` pairs, in order; 422 naming each field whose corpus
    is missing (or another tenant's) or failed ingest. Corpora still processing are fine: work waits for them."""
    found, problems = [], []
    for field, corpus_id in named:
        corpus = crud.get_corpus(session=session, tenant=tenant, corpus_id=corpus_id)
        if corpus is None:
            problems.append({"field": field, "message": f"no corpus {corpus_id}"})
        elif corpus.status == CorpusStatus.FAILED:
            problems.append({"field": field, "message": f"corpus {corpus_id} failed ingest: {corpus.error}"})
        else:
            found.append(corpus)
    if problems:
        raise ApiError(422, "; ".join(f"{p['field']}: {p['message']}" for p in problems), details=problems)
    return found


def check_labelled_sets(
    session: Session, tenant: Tenant, probes: list[ProbeSpec], *, field: str, model_layers: int
) -> None:
    """422 unless every probe names one of the caller's labelled sets and a layer the model has (`model_layers`
    deep); `field` prefixes the paths (`probes`)."""
    problems = [
        {"field": f"{field}[{i}].labelled_set_id", "message": f"no labelled set {probe.labelled_set_id}"}
        for i, probe in enumerate(probes)
        if crud.get_labelled_set(session=session, tenant=tenant, labelled_set_id=probe.labelled_set_id) is None
    ]
    problems += [
        {
            "field": f"{field}[{i}].layer",
            "message": f"the model has layers 0 (embeddings) to {model_layers}; -1 is the last",
        }
        for i, probe in enumerate(probes)
        if probe.layer > model_layers
    ]
    if problems:
        raise ApiError(422, "; ".join(f"{p['field']}: {p['message']}" for p in problems), details=problems)


def wake_worker(task: str, row_id: str, *, queue: str | None = None) -> None:
    """Enqueue a task after its row is committed (on `queue`, where the task has several); if the broker is down,
    the reconciler catches up."""
    try:
        enqueue(task, row_id, queue=queue)
    except Exception:  # noqa: BLE001 - the row is the truth; a lost wake-up is retried by the reconciler
        log.exception("could not enqueue %s for %s; the reconciler will retry", task, row_id)
