"""The FastAPI application: thin routes over storage.crud, one error shape, OpenAPI at /openapi.json."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api.deps import api_lifespan
from api.errors import install_error_handlers
from api.middleware import RequestIdMiddleware, RequestMetricsMiddleware
from api.openapi import install_openapi
from api.routes import (
    checkpoints,
    corpora,
    datasets,
    health,
    jobs,
    labelled_sets,
    metrics,
    models,
    quotas,
    webhooks,
)
from api.routes.dashboard import mount_dashboard

DESCRIPTION = """Self-supervised pretraining as a service: upload unlabeled text, submit a job, follow it,
download a Hugging Face checkpoint. Every `/v1` request carries `Authorization: Bearer <key>`.
Errors are `{"error": {"code", "message", "details"}}`. In `/docs`, press Authorize and paste the key.
Every response carries an `X-Request-ID` (the client's, when it sent a plain one), which the server's log
lines about the request carry too. A web dashboard over this API is served at `/`."""

DOCS_ASSETS_URL = "/docs-assets"


def create_app() -> FastAPI:
    """Build the API application."""
    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from files the package ships, not a CDN.
    app = FastAPIOffline(
        title="selfsup",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=api_lifespan,
        static_url=DOCS_ASSETS_URL,
        swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},  # no online validator badge
    )
    install_error_handlers(app)
    for module in (health, metrics, corpora, datasets, models, jobs, checkpoints, labelled_sets, webhooks, quotas):
        app.include_router(module.router)
    mount_dashboard(app)
    install_openapi(app)
    # The last added runs first: the request id is set before anything is counted or logged.
    app.add_middleware(RequestMetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app
