"""`/v1/webhooks`: subscribe a URL to a tenant's events, list and delete subscriptions, and see deliveries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import CursorDep, OwnedWebhook, SessionDep, TenantDep
from api.errors import ApiError
from api.presenters import delivery_public, webhook_created, webhook_public
from api.schemas import DeliveriesPage, WebhookCreate, WebhookCreated, WebhookPublic, WebhooksPage
from selfsup.settings import get_settings
from selfsup.webhook_targets import UnsafeTarget, check_target
from storage import crud

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

# Each event is sent once per subscribed webhook: a bound keeps one tenant's event from fanning out unboundedly.
MAX_WEBHOOKS_PER_TENANT = 20

_CREATE_DOC = """Events of the chosen types are POSTed to `url` as JSON `{"type", "timestamp", "data"}`, signed as the
[Standard Webhooks](https://www.standardwebhooks.com/) specification says (`webhook-id`, `webhook-timestamp`,
`webhook-signature`: HMAC-SHA256 with the `secret` in this response, which is never shown again). Verify with
`standardwebhooks.Webhook(secret).verify(body, headers)`, and deduplicate on `webhook-id`: an answer other than
2xx is retried with exponential backoff for a day, with the same id.

The URL's host must resolve to public addresses only (not loopback, link-local, private, multicast, reserved or
unspecified), unless the operator set `SELFSUP_WEBHOOK_ALLOW_PRIVATE_TARGETS=true`. Redirects are not followed.
"""


@router.post(
    "",
    status_code=201,
    response_model=WebhookCreated,
    summary="Create a webhook",
    description=_CREATE_DOC,
    responses={
        409: {"description": f"The tenant already has {MAX_WEBHOOKS_PER_TENANT} webhooks"},
        422: {"description": "Invalid URL or event type, or a URL that resolves to a non-public address"},
    },
)
def create_webhook(request: WebhookCreate, tenant: TenantDep, session: SessionDep) -> WebhookCreated:
    try:
        check_target(request.url, allow_private=get_settings().webhook_allow_private_targets)
    except UnsafeTarget as exc:
        raise ApiError(422, f"url: {exc}", details=[{"field": "url", "message": str(exc)}]) from exc
    if crud.count_webhooks(session=session, tenant=tenant) >= MAX_WEBHOOKS_PER_TENANT:
        raise ApiError(409, f"a tenant may have at most {MAX_WEBHOOKS_PER_TENANT} webhooks; delete one first")
    webhook = crud.create_webhook(
        session=session, tenant=tenant, url=request.url, event_types=[str(t) for t in request.event_types]
    )
    return webhook_created(webhook)


@router.get("", response_model=WebhooksPage, summary="List webhooks")
def list_webhooks(tenant: TenantDep, session: SessionDep) -> WebhooksPage:
    return WebhooksPage(data=[webhook_public(w) for w in crud.list_webhooks(session=session, tenant=tenant)])


@router.get("/{webhook_id}", response_model=WebhookPublic, summary="Get a webhook")
def get_webhook(webhook: OwnedWebhook) -> WebhookPublic:
    return webhook_public(webhook)


@router.delete("/{webhook_id}", status_code=204, summary="Delete a webhook and stop its deliveries")
def delete_webhook(webhook: OwnedWebhook, session: SessionDep) -> Response:
    crud.delete_webhook(session=session, webhook=webhook)
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=DeliveriesPage,
    summary="List a webhook's deliveries",
    description="Newest first: each message's status (pending, delivered, failed), attempts, and last answer.",
)
def list_deliveries(
    webhook: OwnedWebhook,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: CursorDep = None,
) -> DeliveriesPage:
    rows, next_cursor = crud.list_deliveries(session=session, webhook_id=webhook.id, limit=limit, cursor=cursor)
    return DeliveriesPage(data=[delivery_public(d) for d in rows], next_cursor=next_cursor)
