"""`/healthz` (the process is alive) and `/readyz` (the database and the broker answer). No key needed.

Both run on the event loop: `/healthz` touches nothing, so it answers however busy the API is;
`/readyz` queues for a database slot like any request and checks the broker in a worker thread.
"""

from __future__ import annotations

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.deps import run_db
from api.schemas import Health
from selfsup.broker import broker_url
from selfsup.settings import get_settings
from storage.db import ping

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    return Health(status="ok")


def _ping_broker() -> None:
    client = redis.Redis.from_url(broker_url(get_settings()), socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


@router.get("/readyz", response_model=Health, summary="Readiness", responses={503: {"model": Health}})
async def readyz(request: Request) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        await run_db(request, ping)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure as not ready
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        await run_in_threadpool(_ping_broker)
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    body = Health(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
