"""Fixtures for the SDK and CLI tests: a tenant of their own on the embedded service, a trained tiny job,
a job that fails at once, and httpx transports that break connections on the client's side."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from selfsup_client import Client, Corpus, Job
from tests.factories import shakespeare_slice, small_job_spec
from tests.service import Service


@dataclass
class Trained:
    """A corpus uploaded and a tiny job trained through the SDK (shared by the module's tests)."""

    corpus: Corpus
    job: Job
    idempotency_key: str
    spec: dict[str, Any]


@pytest.fixture(scope="session")
def sdk_key(embedded_service: Service) -> str:
    """An API key of a tenant that only these tests use, so its lists hold only their resources."""
    return embedded_service.create_key("sdk-tests")


@pytest.fixture(scope="session")
def sdk(embedded_service: Service, sdk_key: str) -> Iterator[Client]:
    """The SDK's client for that tenant."""
    with Client(embedded_service.base_url, sdk_key) as client:
        yield client


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small slice of tiny Shakespeare as a file, as users upload it."""
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_bytes(shakespeare_slice())
    return path


@pytest.fixture(scope="session")
def trained(sdk: Client, corpus_file: Path) -> Trained:
    """Upload (waiting for ingest), create a tiny job with an idempotency key, wait until it finished."""
    corpus = sdk.corpora.upload(corpus_file, name="sdk-shakespeare", wait=True)
    assert corpus.status == "ready", corpus
    spec = small_job_spec(corpus.id, name="sdk-tiny")
    job = sdk.jobs.create(spec, idempotency_key="sdk-shared-job")
    done = sdk.jobs.wait(job.id, timeout=300, poll_interval=0.3)
    assert done.status == "succeeded", done
    return Trained(corpus=corpus, job=done, idempotency_key="sdk-shared-job", spec=spec)


@pytest.fixture(scope="session")
def probed(sdk: Client, trained: Trained) -> Trained:
    """A second finished job on the same corpus, for the tests that probe its checkpoints after the fact: their
    probe events and metrics stay off `trained`, whose events other tests read to their end."""
    spec = small_job_spec(trained.corpus.id, name="sdk-probed")
    job = sdk.jobs.create(spec, idempotency_key="sdk-probed-job")
    done = sdk.jobs.wait(job.id, timeout=300, poll_interval=0.3)
    assert done.status == "succeeded", done
    return Trained(corpus=trained.corpus, job=done, idempotency_key="sdk-probed-job", spec=spec)


@pytest.fixture(scope="session")
def failing_job(sdk: Client) -> Job:
    """A job that fails as soon as it is prepared: its corpus is shorter than one context window."""
    tiny = sdk.corpora.upload(
        io.BytesIO(b"To be, or not to be.\n\nThat is the question.\n"), name="tiny.txt", wait=True
    )
    job = sdk.jobs.create(small_job_spec(tiny.id, name="sdk-fails", model={"context_length": 256}))
    done = sdk.jobs.wait(job.id, timeout=300, poll_interval=0.3)
    assert done.status == "failed" and "context_length" in (done.error or ""), done
    return done


class _CutStream(httpx.SyncByteStream):
    """A response body that breaks (ReadError) after `limit` bytes, like a dropped connection."""

    def __init__(self, inner: httpx.SyncByteStream, limit: int) -> None:
        self._inner, self._limit = inner, limit

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self._inner:
            if sent + len(chunk) >= self._limit:
                yield chunk[: self._limit - sent]
                raise httpx.ReadError("connection cut by the test after the limit")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class Wiretap(httpx.BaseTransport):
    """The real HTTP transport that records every request and can break chosen responses on the client side.

    `cut[path_suffix] = (times, limit)`: the next `times` responses to a path ending so are cut after `limit`
    body bytes. `lose[(method, path)] = times`: the request reaches the server, but its answer is lost.
    `refuse[(method, path)] = times`: answered 503 + Retry-After: 0 before reaching the server.
    """

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.requests: list[httpx.Request] = []
        self.cut: dict[str, tuple[int, int]] = {}
        self.lose: dict[tuple[str, str], int] = {}
        self.refuse: dict[tuple[str, str], int] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.path)
        if self.refuse.get(key, 0) > 0:
            self.refuse[key] -= 1
            body = {"error": {"code": "unavailable", "message": "busy (test)", "details": None}}
            return httpx.Response(503, json=body, headers={"Retry-After": "0"})
        response = self._inner.handle_request(request)
        if self.lose.get(key, 0) > 0:
            self.lose[key] -= 1
            response.read()
            response.close()
            raise httpx.ReadError("the answer was lost (test)")
        for suffix, (times, limit) in self.cut.items():
            if times > 0 and request.url.path.endswith(suffix):
                self.cut[suffix] = (times - 1, limit)
                assert isinstance(response.stream, httpx.SyncByteStream)
                return httpx.Response(
                    response.status_code,
                    headers=response.headers,
                    stream=_CutStream(response.stream, limit),
                    extensions=response.extensions,
                )
        return response

    def close(self) -> None:
        self._inner.close()

    def to(self, path_suffix: str) -> list[httpx.Request]:
        """The requests recorded to a path ending with `path_suffix`."""
        return [r for r in self.requests if r.url.path.endswith(path_suffix)]
