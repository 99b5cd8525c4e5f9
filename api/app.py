"""The FastAPI application: thin routes over storage.crud, one error shape, OpenAPI at /openapi.json."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from api.deps import api_lifespan
from api.errors import install_error_handlers
from api.middleware import JsonBodyMiddleware, RequestIdMiddleware, RequestMetricsMiddleware, SecurityHeadersMiddleware
from api.openapi import install_openapi
from api.ratelimit import RateLimitMiddleware
from api.routes import (
    checkpoints,
    corpora,
    datasets,
    health,
    jobs,
    keys,
    labelled_sets,
    metrics,
    models,
    quotas,
    webhooks,
)
from api.routes.dashboard import mount_dashboard
from selfsup.settings import get_settings

DESCRIPTION = """Self-supervised pretraining as a service: upload unlabeled text, submit a job, follow it,
download a Hugging Face checkpoint. Every `/v1` request carries `Authorization: Bearer <key>`.
Errors are `{"error": {"code", "message", "details"}}`. In `/docs`, press Authorize and paste the key.
Every response carries an `X-Request-ID` (the client's, when it sent a plain one), which the server's log
lines about the request carry too. A web dashboard over this API is served at `/`."""

DOCS_ASSETS_URL = "/docs-assets"


# What a browser page of another origin may send and read, when SELFSUP_CORS_ORIGINS lets it call the API.
CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "X-Request-ID"]
CORS_EXPOSED_HEADERS = ["X-Request-ID", "Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "Location"]


def create_app() -> FastAPI:
    """Build the API application."""
    settings = get_settings()
    if settings.api_docs:
        # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from files the package ships, not a CDN.
        app = FastAPIOffline(
            title="selfsup",
            version="1.0.0",
            description=DESCRIPTION,
            lifespan=api_lifespan,
            static_url=DOCS_ASSETS_URL,
            swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},  # no online validator badge
        )
    else:
        # SELFSUP_API_DOCS=false: no /openapi.json, /docs or /redoc (they answer 404).
        app = FastAPI(
            title="selfsup",
            version="1.0.0",
            description=DESCRIPTION,
            lifespan=api_lifespan,
            openapi_url=None,
            docs_url=None,
            redoc_url=None,
        )
    install_error_handlers(app)
    for module in (
        health,
        metrics,
        corpora,
        datasets,
        models,
        jobs,
        checkpoints,
        labelled_sets,
        webhooks,
        keys,
        quotas,
    ):
        app.include_router(module.router)
    mount_dashboard(app)
    install_openapi(app)
    # The last added runs first. From the outside in: the request id is set before anything is answered or
    # logged; every answer, a refusal included, gets the security headers and (when configured) CORS headers;
    # the metrics count 429s too; a rate-limited request is refused before its body is read or the database
    # is touched; a JSON body is held to its type and size as the route reads it.
    app.add_middleware(JsonBodyMiddleware, max_bytes=settings.max_json_bytes)
    if settings.rate_limited:
        app.add_middleware(RateLimitMiddleware, settings=settings)
    app.add_middleware(RequestMetricsMiddleware)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            allow_credentials=False,  # keys travel in the Authorization header, never in cookies
            max_age=600,
        )
    app.add_middleware(SecurityHeadersMiddleware, hsts_seconds=settings.hsts_seconds)
    app.add_middleware(RequestIdMiddleware)
    return app
