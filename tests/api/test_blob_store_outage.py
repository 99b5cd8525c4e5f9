"""An object store that is away: the API says so with a 503 the client can retry, keeps nothing, and goes on
answering everything that only reads the database. A blob folder with no room: 507, nothing kept."""

from __future__ import annotations

import io
import resource
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.factories import labelled_set_jsonl
from tests.service import Service, free_port, running_api


@pytest.fixture
def api_without_its_store(postgres_service: Service, tmp_path: Path) -> Iterator[str]:
    """A second API process on the production-like service's database and broker, whose object store endpoint
    has nothing listening (an outage, a firewall, a wrong address): the base URL."""
    env = {**postgres_service.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    env.pop("AWS_ENDPOINT_URL_S3", None)
    with running_api(env, tmp_path / "api.log", timeout=120) as (url, _):
        yield url


def _model_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = b'{"model_type": "gpt2"}'
        info = tarfile.TarInfo("config.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_uploads_get_a_retryable_503_and_nothing_is_kept_while_reads_go_on(
    postgres_service: Service, api_without_its_store: str
) -> None:
    headers = {"Authorization": f"Bearer {postgres_service.keys['alice']}"}
    with httpx.Client(base_url=api_without_its_store, headers=headers, timeout=60) as client:
        before = {
            path: {item["id"] for item in client.get(path, params={"limit": 200}).raise_for_status().json()["data"]}
            for path in ("/v1/corpora", "/v1/labelled-sets", "/v1/models")
        }
        uploads = {  # path: (body, content type), each valid: only the store is missing
            "/v1/corpora": (b"a line of text to keep\n" * 2000, "text/plain"),
            "/v1/labelled-sets": (
                labelled_set_jsonl([{"text": f"example {i}", "label": "ab"[i % 2]} for i in range(20)]),
                "application/jsonl",
            ),
            "/v1/models": (_model_archive(), "application/x-tar"),
        }
        for path, (body, content_type) in uploads.items():
            answer = client.post(path, params={"name": "outage"}, content=body, headers={"Content-Type": content_type})
            assert answer.status_code == 503, (path, answer.status_code, answer.text)
            assert answer.headers["Retry-After"] == "5"
            error = answer.json()["error"]
            assert error["code"] == "unavailable"
            assert "blob store is unavailable" in error["message"] and "retry" in error["message"]

        # Nothing half-made is listed, and the database-only routes and probes answer as before.
        for path, ids in before.items():
            after = {item["id"] for item in client.get(path, params={"limit": 200}).json()["data"]}
            assert after == ids, path
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/jobs").status_code == 200


def test_an_upload_that_finds_the_disk_full_gets_507_and_nothing_is_kept(
    postgres_service: Service, tmp_path: Path
) -> None:
    """An API on a blob folder with no room (a real limit: RLIMIT_FSIZE on the API process, so a file stops at 4 MiB
    as on a full disk): the upload is answered 507 saying so, nothing is kept or listed, and a small upload and the
    probes still work."""
    blobs = tmp_path / "blobs"
    env = {**postgres_service.env, "SELFSUP_BLOB_URL": f"file://{blobs}", "SELFSUP_MAX_UPLOAD_BYTES": "20000000"}
    key = postgres_service.create_key("tenant-disk-full")
    with running_api(env, tmp_path / "api.log", timeout=120) as (url, api):
        resource.prlimit(api.pid, resource.RLIMIT_FSIZE, (4 * 1024 * 1024, 4 * 1024 * 1024))
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            answer = client.post(
                "/v1/corpora",
                params={"name": "too-big-for-the-disk"},
                content=b"a line of text that will not fit\n" * 300_000,  # about 10 MB
                headers={"Content-Type": "text/plain"},
            )
            assert answer.status_code == 507, answer.text
            error = answer.json()["error"]
            assert error["code"] == "insufficient_storage"
            assert "no room" in error["message"] and "nothing was kept" in error["message"]
            assert client.get("/v1/corpora").json()["data"] == []
            assert not [p for p in blobs.rglob("*") if p.is_file()]

            small = labelled_set_jsonl([{"text": f"example {i}", "label": "ab"[i % 2]} for i in range(20)])
            stored = client.post(
                "/v1/labelled-sets",
                params={"name": "fits"},
                content=small,
                headers={"Content-Type": "application/jsonl"},
            )
            assert stored.status_code == 201, stored.text
            assert client.get("/healthz").status_code == 200
