"""The OpenAPI document tells the truth about errors and auth, and `/docs` works offline (issue 11)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from tests.factories import api_error
from tests.service import Service

pytestmark = pytest.mark.integration

ERROR_REF = "#/components/schemas/ErrorResponse"
METHODS = ("get", "put", "post", "delete", "patch")


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def test_every_error_is_documented_with_the_error_shape_the_api_answers(embedded_service: Service) -> None:
    anonymous = httpx.Client(base_url=embedded_service.base_url)
    document = anonymous.get("/openapi.json").json()
    text = json.dumps(document)
    assert "HTTPValidationError" not in text and '"detail"' not in text
    error = document["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    assert {"code", "message", "details"} <= set(document["components"]["schemas"]["ErrorBody"]["properties"])
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["apiKey"]["description"],
    }

    authenticated = 0
    for method, path, operation in _operations(document):
        where = f"{method} {path}"
        responses = operation["responses"]
        errors = {status: r for status, r in responses.items() if status[0] in "45"}
        for status, response in errors.items():
            json_body = response.get("content", {}).get("application/json")
            if path == "/readyz" or json_body is None:
                continue  # /readyz's 503 is a Health; a 416 has no body
            assert json_body["schema"] == {"$ref": ERROR_REF}, (where, status)
            assert response["description"], (where, status)
        if path.startswith("/v1/"):
            authenticated += 1
            assert operation["security"] == [{"apiKey": []}], where
            assert {"401", "503"} <= set(errors), where
            if method != "GET":
                assert "403" in errors, where  # a read key's writes
        else:
            assert "security" not in operation, where
        if "{" in path:
            assert "404" in errors, where
        if "multipart/form-data" in operation.get("requestBody", {}).get("content", {}):
            assert {"400", "413", "415", "422"} <= set(errors), where
    assert authenticated >= 20

    # 422 only where something can be invalid: not for a plain id in the path, but for a query or a body.
    assert "422" not in document["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
    assert "422" in document["paths"]["/v1/jobs"]["get"]["responses"]
    assert "422" in document["paths"]["/v1/jobs"]["post"]["responses"]
    assert "409" in document["paths"]["/v1/jobs"]["post"]["responses"]

    # What the document says is what the API answers.
    api_error(anonymous.get("/v1/jobs"), 401)
    client = embedded_service.client()
    api_error(client.get("/v1/jobs/job_nope"), 404)
    invalid = api_error(client.get("/v1/jobs", params={"limit": 0}), 422)
    assert invalid["details"][0]["field"] == "limit"
    malformed = client.post(
        "/v1/corpora", content=b"--x\r\nnot a part", headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert api_error(malformed, 400)["message"]


def test_docs_authorise_and_load_without_the_internet(embedded_service: Service) -> None:
    anonymous = httpx.Client(base_url=embedded_service.base_url)
    for page in ("/docs", "/redoc"):
        html = anonymous.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html"), page
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html.text), (page, html.text)  # no external host
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
        assert assets, html.text
        for asset in assets:
            assert asset.startswith("/"), (page, asset)
            response = anonymous.get(asset)
            assert response.status_code == 200 and len(response.content) > 1000, (page, asset)
    # Authorize in /docs sends the key as a bearer token; that is what the API reads.
    key = embedded_service.create_key("docs-user")
    authorised = httpx.Client(base_url=embedded_service.base_url, headers={"Authorization": f"Bearer {key}"})
    assert authorised.get("/v1/jobs").status_code == 200
