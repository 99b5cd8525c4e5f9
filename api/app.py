"""The FastAPI application: thin routes over storage.crud, one error shape, OpenAPI at /openapi.json."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api.deps import database_slots
from api.errors import install_error_handlers
from api.openapi import install_openapi
from api.routes import checkpoints, corpora, datasets, health, jobs

DESCRIPTION = """Self-supervised pretraining as a service: upload unlabeled text, submit a job, follow it,
download a Hugging Face checkpoint. Every `/v1` request carries `Authorization: Bearer <key>`.
Errors are `{"error": {"code", "message", "details"}}`. In `/docs`, press Authorize and paste the key."""

DOCS_ASSETS_URL = "/docs-assets"


def create_app() -> FastAPI:
    """Build the API application."""
    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from files the package ships, not a CDN.
    app = FastAPIOffline(
        title="selfsup",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=database_slots,
        static_url=DOCS_ASSETS_URL,
        swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},  # no online validator badge
    )
    install_error_handlers(app)
    for module in (health, corpora, datasets, jobs, checkpoints):
        app.include_router(module.router)
    install_openapi(app)
    return app
