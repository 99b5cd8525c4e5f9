"""The FastAPI application: thin routes over storage.crud, one error shape, OpenAPI at /openapi.json."""

from __future__ import annotations

from fastapi import FastAPI

from api.deps import database_slots
from api.errors import install_error_handlers
from api.middleware import RequestIdMiddleware, RequestMetricsMiddleware
from api.routes import checkpoints, corpora, datasets, health, jobs, metrics

DESCRIPTION = """Self-supervised pretraining as a service: upload unlabeled text, submit a job, follow it,
download a Hugging Face checkpoint. Every `/v1` request carries `Authorization: Bearer <key>`.
Errors are `{"error": {"code", "message", "details"}}`. Every response carries an `X-Request-ID` (the client's,
when it sent a plain one), which the server's log lines about the request carry too."""


def create_app() -> FastAPI:
    """Build the API application."""
    app = FastAPI(title="selfsup", version="1.0.0", description=DESCRIPTION, lifespan=database_slots)
    install_error_handlers(app)
    for module in (health, metrics, corpora, datasets, jobs, checkpoints):
        app.include_router(module.router)
    # The last added runs first: the request id is set before anything is counted or logged.
    app.add_middleware(RequestMetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app
