"""The FastAPI application: thin routes over storage.crud, one error shape, OpenAPI at /openapi.json."""

from __future__ import annotations

from fastapi import FastAPI

from api.deps import api_lifespan
from api.errors import install_error_handlers
from api.routes import checkpoints, corpora, datasets, health, jobs

DESCRIPTION = """Self-supervised pretraining as a service: upload unlabeled text, submit a job, follow it,
download a Hugging Face checkpoint. Every `/v1` request carries `Authorization: Bearer <key>`.
Errors are `{"error": {"code", "message", "details"}}`."""


def create_app() -> FastAPI:
    """Build the API application."""
    app = FastAPI(title="selfsup", version="1.0.0", description=DESCRIPTION, lifespan=api_lifespan)
    install_error_handlers(app)
    for module in (health, corpora, datasets, jobs, checkpoints):
        app.include_router(module.router)
    return app
