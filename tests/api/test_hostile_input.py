"""Hostile and careless input (issue 14): body and field limits, unknown fields, control characters, malformed
JSON, wrong media types, NaN, `Allow` on 405, security headers, CORS off by default, per-key rate limits and
the OpenAPI document turned off.

Everything runs against the session's embedded service, except what needs other settings: a second API
process (`selfsup api`) on the same database and broker, with a tiny rate limit, CORS for one origin, HSTS and
the docs off.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.factories import api_error, small_job_spec
from tests.service import REPO, SELFSUP, Service, free_port, wait_until

pytestmark = pytest.mark.integration

EVERY_RESPONSE = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY"}
ORIGIN = "https://app.example"
RATE, BURST = 0.5, 3


def _json(
    client: httpx.Client, path: str, body: bytes, content_type: str | None = "application/json"
) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return client.post(path, content=body, headers=headers)


def _fields(error: dict[str, object]) -> dict[str, str]:
    details = error["details"]
    assert isinstance(details, list), error
    return {d["field"]: d["message"] for d in details}


def test_unknown_fields_are_refused_not_assigned(embedded_service: Service) -> None:
    client = embedded_service.client()
    spec = dict(small_job_spec("cor_x"), tenant_id="ten_other", status="succeeded", step=10_000)
    fields = _fields(api_error(client.post("/v1/jobs", json=spec), 422))
    assert {"tenant_id", "status", "step"} <= set(fields), fields
    body = {"sources": [{"corpus_id": "cor_x"}], "tenant_id": "ten_other"}
    assert "tenant_id" in _fields(api_error(client.post("/v1/datasets", json=body), 422))
    hook = {"url": "https://example.com/hook", "event_types": ["job.succeeded"], "secret": "whsec_mine"}
    assert "secret" in _fields(api_error(client.post("/v1/webhooks", json=hook), 422))


def test_lists_strings_and_pages_have_maximums(embedded_service: Service) -> None:
    client = embedded_service.client()
    spec = small_job_spec("cor_x", corpus_ids=[f"cor_{i}" for i in range(65)])
    assert "64" in _fields(api_error(client.post("/v1/jobs", json=spec), 422))["corpus_ids"]
    hook = {"url": "https://example.com/hook", "event_types": ["job.succeeded"] * 65}
    assert "event_types" in _fields(api_error(client.post("/v1/webhooks", json=hook), 422))
    assert "name" in _fields(api_error(client.post("/v1/jobs", json=small_job_spec("cor_x", name="n" * 201)), 422))
    api_error(client.post("/v1/corpora", params={"name": "n" * 201}, content=b"text\n"), 422)
    assert _fields(api_error(client.get("/v1/corpora", params={"limit": 201}), 422)).keys() == {"limit"}


def test_a_json_body_over_the_limit_gets_413_while_it_streams(embedded_service: Service) -> None:
    client = embedded_service.client()
    big = json.dumps(small_job_spec("cor_x", name="n" * (1024 * 1024))).encode()
    error = api_error(_json(client, "/v1/jobs", big), 413)
    assert error["code"] == "payload_too_large" and "SELFSUP_MAX_JSON_BYTES" in error["message"], error

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while the body arrives
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    response = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert "SELFSUP_MAX_JSON_BYTES" in api_error(response, 413)["message"]


def test_control_characters_in_names_are_refused(embedded_service: Service) -> None:
    client = embedded_service.client()
    for name in ("nul\x00byte", "new\nline", "bell\x07", "right-to-left\u202eoverride", "zero\u200bwidth"):
        message = _fields(api_error(client.post("/v1/jobs", json=small_job_spec("cor_x", name=name)), 422))["name"]
        assert "control or invisible characters" in message and "U+" in message, (name, message)
    error = api_error(client.post("/v1/corpora", params={"name": "evil\x1b[2J.txt"}, content=b"hello\n"), 422)
    assert "U+001B" in _fields(error)["name"], error
    body = {"name": "tab\there", "sources": [{"corpus_id": "cor_x"}]}
    assert "U+0009" in _fields(api_error(client.post("/v1/datasets", json=body), 422))["name"]
    # A multipart file name that would not pass as a name is not used as one: the corpus is named by its id.
    response = client.post("/v1/corpora", files={"file": ("evil\x1b[2J.txt", b"hello world\n", "text/plain")})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == response.json()["id"]
    # Letters of any script, spaces and punctuation are fine.
    named = client.post("/v1/corpora", params={"name": "Ünïcödé 名前 (v2).txt"}, content=b"hello world\n")
    assert named.status_code == 201 and named.json()["name"] == "Ünïcödé 名前 (v2).txt", named.text


def test_malformed_json_is_a_400_that_says_where(embedded_service: Service) -> None:
    document = '{"corpus_ids": ["cor_x"],\n  "objective": {"type" "causal_lm"}}'
    with pytest.raises(json.JSONDecodeError) as parsed:
        json.loads(document)
    error = api_error(_json(embedded_service.client(), "/v1/jobs", document.encode()), 400)
    assert error["code"] == "bad_request", error
    expected = {"line": parsed.value.lineno, "column": parsed.value.colno, "position": parsed.value.pos}
    assert {k: error["details"][k] for k in expected} == expected == {"line": 2, "column": 24, "position": 49}
    assert "Expecting ':' delimiter" in error["message"] and "line 2, column 24" in error["message"], error


def test_a_json_body_sent_as_another_type_gets_415(embedded_service: Service) -> None:
    client = embedded_service.client()
    spec = json.dumps(small_job_spec("cor_x")).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        error = api_error(_json(client, "/v1/jobs", spec, content_type), 415)
        assert error["code"] == "unsupported_media_type" and "application/json" in error["message"], error
    # `application/<something>+json` and a charset are JSON too: the spec is read (its corpus does not exist).
    response = _json(client, "/v1/jobs", spec, "application/vnd.selfsup+json; charset=utf-8")
    assert _fields(api_error(response, 422)) == {"corpus_ids[0]": "no corpus cor_x"}


def test_nan_and_infinity_are_refused_as_not_finite(embedded_service: Service) -> None:
    client = embedded_service.client()
    for constant in ("NaN", "Infinity", "-Infinity", "1e999"):
        body = '{"corpus_ids": ["cor_x"], "objective": {"type": "causal_lm"}, "training": {"learning_rate": %s}}'
        fields = _fields(api_error(_json(client, "/v1/jobs", (body % constant).encode()), 422))
        assert fields == {"training.learning_rate": "Input should be a finite number"}, (constant, fields)


def test_405_lists_every_method_of_the_path(embedded_service: Service) -> None:
    client = embedded_service.client()
    response = client.put("/v1/jobs")
    error = api_error(response, 405)
    assert response.headers["allow"] == "GET, POST", response.headers
    assert error["code"] == "method_not_allowed" and "GET, POST" in error["message"], error
    assert client.patch("/v1/corpora/cor_x").headers["allow"] == "DELETE, GET"


def test_security_headers_on_every_kind_of_response(embedded_service: Service) -> None:
    client = embedded_service.client()
    anonymous = httpx.Client(base_url=embedded_service.base_url)
    responses = {
        "200": client.get("/v1/jobs"),
        "404": client.get("/v1/jobs/job_nope"),
        "401": anonymous.get("/v1/jobs"),
        "422": client.get("/v1/jobs", params={"limit": 0}),
        "static": anonymous.get("/ui/app.js"),
        "page": anonymous.get("/"),
        "health": anonymous.get("/healthz"),
    }
    for what, response in responses.items():
        for name, value in EVERY_RESPONSE.items():
            assert response.headers.get(name) == value, (what, name, response.headers)
        assert "strict-transport-security" not in response.headers, what  # plain http by default
    for what in ("200", "404", "401", "422"):
        assert responses[what].headers["cache-control"] == "no-store", what
        assert "frame-ancestors 'none'" in responses[what].headers["content-security-policy"], what
    # The dashboard keeps its own policy (its scripts and styles load from 'self').
    assert "script-src 'self'" in responses["page"].headers["content-security-policy"]
    assert responses["page"].headers["cache-control"] == "no-cache"
    assert responses["static"].status_code == 200 and "cache-control" not in responses["static"].headers


def test_cors_is_off_unless_configured(embedded_service: Service) -> None:
    client = embedded_service.client()
    preflight = client.options("/v1/jobs", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers, preflight.headers
    simple = client.get("/v1/jobs", headers={"Origin": ORIGIN})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers


@pytest.fixture(scope="module")
def strict_api(embedded_service: Service) -> Iterator[str]:
    """A second API process on the embedded service's database and broker: a tiny rate limit, CORS for
    ORIGIN, HSTS, and no OpenAPI document."""
    port = free_port()
    env = dict(
        embedded_service.env,
        SELFSUP_RATE_LIMIT_PER_SECOND=str(RATE),
        SELFSUP_RATE_LIMIT_BURST=str(BURST),
        SELFSUP_CORS_ORIGINS=f"{ORIGIN}, https://other.example",
        SELFSUP_HSTS_SECONDS="31536000",
        SELFSUP_API_DOCS="false",
    )
    log_path = embedded_service.home / "strict-api.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [*SELFSUP, "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, log_path.read_text()
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=60, what="the strict API")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        log.close()


def test_rate_limit_per_key_with_retry_after_and_refill(strict_api: str, embedded_service: Service) -> None:
    alice = httpx.Client(base_url=strict_api, headers={"Authorization": f"Bearer {embedded_service.keys['alice']}"})
    bob = httpx.Client(base_url=strict_api, headers={"Authorization": f"Bearer {embedded_service.keys['bob']}"})
    first = alice.get("/v1/jobs")
    assert first.status_code == 200 and first.headers["x-ratelimit-limit"] == str(BURST), first.headers
    assert first.headers["x-ratelimit-remaining"] == str(BURST - 1), first.headers
    for _ in range(BURST - 1):
        assert alice.get("/v1/jobs").status_code == 200  # the burst
    # The bucket refills at RATE per second, far slower than requests arrive: one of the next few is refused.
    refused = next((r for r in (alice.get("/v1/jobs") for _ in range(5)) if r.status_code == 429), None)
    assert refused is not None, "no request was rate limited"
    error = api_error(refused, 429)
    assert error["code"] == "rate_limited" and "retry after" in error["message"], error
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 1 / RATE, refused.headers
    assert refused.headers["x-ratelimit-remaining"] == "0"
    # Per key: bob's bucket is his own; the probes and metrics are never limited.
    assert bob.get("/v1/jobs").status_code == 200
    assert all(alice.get(path).status_code == 200 for path in ("/healthz", "/metrics", "/ui/app.js"))
    # Waiting as told is enough: a token is back.
    time.sleep(retry_after)
    assert alice.get("/v1/jobs").status_code == 200


def test_cors_hsts_and_no_docs_when_configured(strict_api: str, embedded_service: Service) -> None:
    anonymous = httpx.Client(base_url=strict_api)
    preflight = anonymous.options(
        "/v1/jobs",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ORIGIN, preflight
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert (
        "access-control-allow-origin"
        not in anonymous.options(
            "/v1/jobs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        ).headers
    )
    bob = httpx.Client(base_url=strict_api, headers={"Authorization": f"Bearer {embedded_service.keys['bob']}"})
    read = bob.get("/v1/jobs", headers={"Origin": ORIGIN})
    assert read.status_code == 200 and read.headers["access-control-allow-origin"] == ORIGIN
    assert "X-Request-ID" in read.headers["access-control-expose-headers"]
    assert anonymous.get("/healthz").headers["strict-transport-security"] == "max-age=31536000"
    for path in ("/openapi.json", "/docs", "/redoc"):
        api_error(anonymous.get(path), 404)
