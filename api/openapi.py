"""The OpenAPI document, made to tell the truth about errors.

FastAPI documents every validation error as its own `{"detail": [...]}` (`HTTPValidationError`) and knows
nothing of the errors our dependencies raise. Our API answers every error as `ErrorResponse`
(`{"error": {"code", "message", "details"}}`, see `api/errors.py`), so after FastAPI builds the document
this pass gives each operation the errors it can really answer, all with that schema:

- 401, 403 and 503 on every operation that needs a key (the key may lack the scope the operation needs, and it
  is looked up in the database, which may be busy);
- 404 on every operation with an `{id}` in its path (another tenant's resource is a 404 too);
- 422 where a parameter or body can be invalid (not for a plain string id in the path);
- 400 on every operation with a request body (malformed JSON or `multipart/form-data`, a client that
  disconnected mid-upload), and an upload's bytes are at least one (an empty upload is refused);
- 400 (malformed JSON), 413 (over `SELFSUP_MAX_JSON_BYTES`) and 415 (not sent as JSON) where the body is JSON;
- 507 on every upload (a binary body or form field): the blob folder's disk is full;
- 429 on every `/v1` operation (the key's rate limit; see `api/ratelimit.py`);
- and whatever a route declares itself (409, 413, 415…), its description kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from api.schemas import ErrorResponse

ERROR_SCHEMA = "ErrorResponse"
_ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")

DEFAULT_DESCRIPTIONS = {
    "400": "Malformed request: a body that does not parse (JSON: the message says where; `multipart/form-data`), "
    "or the client disconnected mid-upload",
    "401": "No API key, or an unknown, revoked or expired one: send `Authorization: Bearer <key>`",
    "403": "The API key lacks the scope this operation needs (`read` for GET, `write` for other methods, `admin` "
    "for `/v1/keys`); the message names it",
    "404": "No such resource among the caller's (another tenant's is not found either)",
    "409": "Conflicts with the resource's current state",
    "413": "Over the size limit",
    "415": "Unsupported media type",
    "422": "Invalid request; `details` names each bad field by its path",
    "429": "Rate limit: the key made more requests than its burst and rate allow; retry after `Retry-After` seconds",
    "503": "Busy: no database connection came free in time, or the blob store did not answer; retry after "
    "`Retry-After` seconds",
    "507": "No room left in the server's blob folder (a full disk): nothing was kept; retry once the operator has "
    "freed space",
}


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` (and so `/openapi.json` and `/docs`) return the corrected document."""
    app.openapi = _openapi_builder(app)  # type: ignore[method-assign]  # FastAPI's documented way to extend it


def _openapi_builder(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
                servers=app.servers,
            )
            app.openapi_schema = document_errors(document)
        return app.openapi_schema

    return openapi


def document_errors(document: dict[str, Any]) -> dict[str, Any]:
    """Give every operation of `document` its real error responses (see the module docstring); returns it."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    _, error_schemas = models_json_schema(
        [(ErrorResponse, "serialization")], ref_template="#/components/schemas/{model}"
    )
    schemas.update(error_schemas["$defs"])
    for method, operation in _operations(document):
        responses = operation.setdefault("responses", {})
        for status in _error_statuses(method, operation):
            responses.setdefault(status, {})
        _refuse_empty_uploads(operation)
        if "422" in responses and not _can_be_invalid(operation, responses["422"]):
            del responses["422"]
        for status, response in responses.items():
            if status[0] in "45" and _needs_error_schema(response):
                response["description"] = _description(status, response)
                response["content"] = {"application/json": {"schema": dict(_ERROR_REF)}}
    return document


def _operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    methods = ("get", "put", "post", "delete", "patch", "head", "options")
    return [(m, op) for path in document.get("paths", {}).values() for m, op in path.items() if m in methods]


def _path_parameters(operation: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in operation.get("parameters", []) if p.get("in") == "path"]


def _error_statuses(method: str, operation: dict[str, Any]) -> list[str]:
    statuses = []
    if operation.get("security"):
        statuses += ["401", "403", "429", "503"]
    if _path_parameters(operation):
        statuses.append("404")
    content = operation.get("requestBody", {}).get("content", {})
    if "requestBody" in operation:
        statuses.append("400")
    if "application/json" in content:
        statuses += ["400", "413", "415"]
    if _binary_fields(operation):
        statuses.append("507")
    return statuses


def _binary_fields(operation: dict[str, Any]) -> list[dict[str, Any]]:
    """The request body's file fields: the body itself when it is a binary string, or a multipart form's."""
    fields = []
    for media in operation.get("requestBody", {}).get("content", {}).values():
        schema = media.get("schema", {})
        fields += [
            field
            for field in [schema, *schema.get("properties", {}).values()]
            if field.get("type") == "string" and field.get("format") == "binary"
        ]
    return fields


def _refuse_empty_uploads(operation: dict[str, Any]) -> None:
    """A file upload (a binary string, or a multipart form's binary fields) has at least one byte: say so."""
    for field in _binary_fields(operation):
        field.setdefault("minLength", 1)


def _can_be_invalid(operation: dict[str, Any], response: dict[str, Any]) -> bool:
    """Whether a 422 can happen: the route declared it, or something besides a plain string path id is validated."""
    if not _is_fastapi_validation_error(response):
        return True  # declared by the route itself
    if "requestBody" in operation:
        return True
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        plain_id = parameter.get("in") == "path" and schema.get("type") == "string" and set(schema) <= {"type", "title"}
        if not plain_id:
            return True
    return False


def _is_fastapi_validation_error(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return str(schema.get("$ref", "")).rsplit("/", 1)[-1] in _FASTAPI_VALIDATION_SCHEMAS


def _needs_error_schema(response: dict[str, Any]) -> bool:
    """True unless the route gave this response a schema of its own (`/readyz`'s 503 is a `Health`)."""
    content = response.get("content")
    if not content:
        return True
    if _is_fastapi_validation_error(response):
        return True
    schema = content.get("application/json", {}).get("schema")
    return schema is not None and not schema  # FastAPI's `{}` placeholder for a response without a model


def _description(status: str, response: dict[str, Any]) -> str:
    described = response.get("description")
    if described and described not in ("Validation Error", "Additional Response"):
        return str(described)
    return DEFAULT_DESCRIPTIONS.get(status, "Error")
