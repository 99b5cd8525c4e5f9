"""`/v1/keys`: a tenant's admins create, list and revoke the tenant's own API keys (the `admin` scope)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Response

from api.deps import AdminDep, SessionDep
from api.errors import ApiError
from api.presenters import key_created, key_public
from api.schemas import KeyCreate, KeyCreated, KeysPage
from storage import crud
from storage.tables import utcnow

router = APIRouter(prefix="/v1/keys", tags=["keys"])

# A bound on live keys per tenant, so a leaked admin key cannot fill the table.
MAX_KEYS_PER_TENANT = 100

_CREATE_DOC = """The key is in this response's `key` and never shown again: only its hash is stored. It works until
it expires or is revoked (`DELETE /v1/keys/{key_id}`), from its very next request on. Scopes: `read` (GET
requests), `write` (every other request but key management; includes read), `admin` (this API; includes read
and write)."""


@router.post(
    "",
    status_code=201,
    response_model=KeyCreated,
    summary="Create an API key",
    description=_CREATE_DOC,
    responses={409: {"description": f"The tenant already has {MAX_KEYS_PER_TENANT} keys in use"}},
)
def create_key(request: KeyCreate, caller: AdminDep, session: SessionDep) -> KeyCreated:
    now = utcnow()
    expires_at = request.expires_at
    if request.expires_in_seconds is not None:
        expires_at = now + timedelta(seconds=request.expires_in_seconds)
    if expires_at is not None and expires_at <= now:
        message = "expires_at is not in the future"
        raise ApiError(422, message, details=[{"field": "expires_at", "message": message}])
    if crud.count_usable_api_keys(session=session, tenant=caller.tenant) >= MAX_KEYS_PER_TENANT:
        raise ApiError(409, f"a tenant may have at most {MAX_KEYS_PER_TENANT} keys in use; revoke one first")
    api_key, key = crud.create_api_key(
        session=session, tenant=caller.tenant, scopes=request.scopes, name=request.name, expires_at=expires_at
    )
    return key_created(api_key, key)


@router.get(
    "",
    response_model=KeysPage,
    summary="List API keys",
    description="The tenant's keys, revoked and expired ones too, oldest first; never a key itself.",
)
def list_keys(caller: AdminDep, session: SessionDep) -> KeysPage:
    return KeysPage(data=[key_public(k) for k in crud.list_api_keys(session=session, tenant=caller.tenant)])


@router.delete(
    "/{key_id}",
    status_code=204,
    summary="Revoke an API key",
    description="The key gets 401 from its next request on; it stays in the list, revoked. A key may revoke itself.",
)
def revoke_key(key_id: str, caller: AdminDep, session: SessionDep) -> Response:
    api_key = crud.get_api_key(session=session, key_id=key_id, tenant=caller.tenant)
    if api_key is None:
        raise ApiError(404, f"no key {key_id}")
    crud.revoke_api_key(session=session, api_key=api_key)
    return Response(status_code=204)
