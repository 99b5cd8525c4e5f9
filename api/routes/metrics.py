"""`GET /metrics`: Prometheus text format for operators. Open unless `SELFSUP_METRICS_TOKEN` is set.

The database part is read like any request's (it waits for a database slot, at most
`SELFSUP_API_WAIT_SECONDS`), the broker's with short socket timeouts; a source that does not answer
leaves its series out and says so in `selfsup_metrics_source_up`, so a scrape never fails or hangs
because the database or the broker is down.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from api.deps import run_db
from api.errors import ApiError
from api.metrics import METRIC_ROW_NAMES, Scrape, render
from selfsup.settings import get_settings
from storage import crud
from storage.crud import OperationsSnapshot
from workers.celery_app import queue_depths

log = logging.getLogger("selfsup.api")

router = APIRouter(tags=["operations"])


def check_metrics_token(headers: Mapping[str, str]) -> None:
    """401 unless the request bears `SELFSUP_METRICS_TOKEN` (when that is set); compared in constant time."""
    token = get_settings().metrics_token
    if token is None:
        return
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(
            401,
            "missing metrics token: send `Authorization: Bearer <SELFSUP_METRICS_TOKEN>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise ApiError(401, "invalid metrics token", headers={"WWW-Authenticate": "Bearer"})


async def _read_database(request: Request) -> OperationsSnapshot | None:
    try:
        return await run_db(
            request, lambda session: crud.operations_snapshot(session=session, metric_names=METRIC_ROW_NAMES)
        )
    except Exception as exc:  # noqa: BLE001 - reported as selfsup_metrics_source_up{source="database"} 0
        log.warning("metrics: could not read the database: %s: %s", type(exc).__name__, exc)
        return None


async def _read_broker() -> dict[str, int] | None:
    try:
        return await run_in_threadpool(queue_depths)
    except Exception as exc:  # noqa: BLE001 - reported as selfsup_metrics_source_up{source="broker"} 0
        log.warning("metrics: could not read the broker's queues: %s: %s", type(exc).__name__, exc)
        return None


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Requests by route and status with latency histograms, jobs and corpora by status, queue "
    "depths, running jobs' tokens/s, step time and newest checkpoint (write time, size), in the Prometheus "
    "text format. No API key; when `SELFSUP_METRICS_TOKEN` is set, send it as `Authorization: Bearer <token>`.",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text exposition format"},
        401: {"description": "`SELFSUP_METRICS_TOKEN` is set and the request did not bear it"},
    },
)
async def metrics(request: Request) -> Response:
    check_metrics_token(request.headers)
    scrape = Scrape(database=await _read_database(request), queue_depths=await _read_broker())
    body, content_type = render(scrape, request.headers.get("accept", ""))
    return Response(body, headers={"Content-Type": content_type})
