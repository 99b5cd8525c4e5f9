"""One error shape for every failure: `{"error": {"code", "message", "details"}}`."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from api.middleware import security_headers
from selfsup.settings import get_settings
from selfsup.spec import UNION_TAGS
from storage.blobs import BlobStoreFull, BlobStoreUnavailable

log = logging.getLogger("selfsup.api")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
    507: "insufficient_storage",
}


class ApiError(Exception):
    """An error a client can fix, with the status, code and message it gets."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.details = details
        self.headers = headers


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {"error": {"code": code, "message": message, "details": details}}


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """`("body", "model", "layers")` → `model.layers`; list indices as `corpus_ids[0]`."""
    parts: list[str] = []
    previous: Any = None
    for item in loc:
        if item in ("body", "query", "header", "path") and not parts:
            continue
        # A discriminated union puts its tag in the path (objective.causal_lm.x): leave it out.
        if previous in UNION_TAGS and item in UNION_TAGS[previous]:
            previous = item
            continue
        previous = item
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "body"


def validation_details(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic errors as `{field, message}` pairs a client can act on."""
    details = []
    for err in errors:
        field = field_path(list(err.get("loc", ())))
        # A check across sections (JobSpec's validator) has no location of its own; it names the field.
        named = (err.get("ctx") or {}).get("field")
        if field == "body" and isinstance(named, str):
            field = named
        details.append({"field": field, "message": err.get("msg", "invalid"), "type": err.get("type")})
    return details


def malformed_json(exc: RequestValidationError) -> ApiError | None:
    """A 400 saying where the JSON broke, if the body was not JSON at all (FastAPI reports it as a validation
    error at `body.<position>`); None for any other validation error."""
    errors = list(exc.errors())
    if len(errors) != 1 or errors[0].get("type") != "json_invalid":
        return None
    loc = errors[0].get("loc") or ()
    position = loc[-1] if loc and isinstance(loc[-1], int) else 0
    document = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body or "")
    line = document.count("\n", 0, position) + 1
    column = position - (document.rfind("\n", 0, position) + 1) + 1
    reason = (errors[0].get("ctx") or {}).get("error") or "invalid JSON"
    return ApiError(
        400,
        f"the body is not valid JSON: {reason} at line {line}, column {column} (character {position})",
        details={"line": line, "column": column, "position": position, "reason": reason},
    )


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route of `app` answers at `path` (Starlette's 405 names only the first route's)."""
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "method_table", None)
    if table is None:
        table = []
        for context in iter_route_contexts(app.routes):
            if context.path and context.methods:
                table.append((compile_path(context.path)[0], set(context.methods)))
        app.state.method_table = table
    return sorted({method for regex, methods in table if regex.match(path) for method in methods})


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through `error_body`."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        malformed = malformed_json(exc)
        if malformed is not None:
            return await _api_error(request, malformed)
        details = validation_details(list(exc.errors()))
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        return JSONResponse(error_body("invalid_request", summary, details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        message = str(exc.detail)
        if exc.status_code == 405:
            # Static files (the dashboard's, the docs' assets) are not routes: they answer GET and HEAD.
            methods = allowed_methods(request.app, request.url.path) or ["GET", "HEAD"]
            headers["Allow"] = ", ".join(methods)
            message = f"{request.method} is not allowed here; this path answers {headers['Allow']}"
        return JSONResponse(
            error_body(_CODES.get(exc.status_code, "error"), message),
            status_code=exc.status_code,
            headers=headers or None,
        )

    @app.exception_handler(BlobStoreFull)
    async def _blob_store_full(_: Request, exc: BlobStoreFull) -> JSONResponse:
        # A full disk is the operator's to fix, not the client's, and not a bug: say so, keep nothing.
        log.error("blob store full: %s", exc)
        body = error_body(
            "insufficient_storage",
            "the server has no room left to store this upload; nothing was kept. Retry once its operator has freed "
            "space in the blob folder",
        )
        return JSONResponse(body, status_code=507)

    @app.exception_handler(BlobStoreUnavailable)
    async def _blob_store_unavailable(_: Request, exc: BlobStoreUnavailable) -> JSONResponse:
        # An object store's outage or throttling is not the client's fault, nor a bug: retry later.
        log.warning("blob store unavailable: %s", exc)
        body = error_body("unavailable", "the blob store is unavailable; nothing was kept, retry shortly")
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Answered from outside the request-id middleware (Starlette's outermost layer), so it names the
        # request itself, in the header and in the log line.
        request_id = getattr(request.state, "request_id", None)
        log.exception("unhandled error on %s %s", request.method, request.url.path, extra={"request_id": request_id})
        headers = {"X-Request-ID": request_id} if request_id else {}
        # Answered outside the security-headers middleware too, so it adds them itself.
        for name, value in security_headers(request.url.path, get_settings().hsts_seconds):
            headers[name.decode()] = value.decode()
        body = error_body("internal_error", f"internal error; see the server log (request {request_id})")
        return JSONResponse(body, status_code=500, headers=headers)
