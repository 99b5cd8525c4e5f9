"""Blob downloads with `Range`: one range streamed from the store, anything else the whole file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient

from api.downloads import blob_download
from storage.blobs import LocalBlobStore

DATA = bytes(range(256)) * 4


def _client(tmp_path: Path) -> TestClient:
    store = LocalBlobStore(tmp_path)
    with store.writer("c/weights.bin") as out:
        out.write(DATA)
    app = FastAPI()

    @app.get("/file")
    def download(request: Request) -> Response:
        return blob_download(
            request,
            store=store,
            key="c/weights.bin",
            filename="weights.bin",
            size=len(DATA),
            sha256="ab" * 32,
            last_modified=datetime(2024, 1, 2, tzinfo=UTC),
        )

    return TestClient(app)


def test_whole_file_single_ranges_and_refusals(tmp_path: Path) -> None:
    client = _client(tmp_path)
    whole = client.get("/file")
    assert whole.status_code == 200 and whole.content == DATA
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["x-checksum-sha256"] == "ab" * 32
    assert whole.headers["content-disposition"] == 'attachment; filename="weights.bin"'
    for header, start, end in (("bytes=0-9", 0, 10), ("bytes=1000-", 1000, 1024), ("bytes=-4", 1020, 1024)):
        part = client.get("/file", headers={"Range": header})
        assert part.status_code == 206 and part.content == DATA[start:end], header
        assert part.headers["content-range"] == f"bytes {start}-{end - 1}/{len(DATA)}"
    assert client.get("/file", headers={"Range": "bytes=0-1, 4-5"}).content == DATA
    refused = client.get("/file", headers={"Range": "bytes=5000-"})
    assert refused.status_code == 416 and refused.headers["content-range"] == f"bytes */{len(DATA)}"
    assert client.get("/file", headers={"Range": "bytes=0-9", "If-Range": '"stale"'}).status_code == 200
    etag = whole.headers["etag"]
    assert client.get("/file", headers={"Range": "bytes=0-9", "If-Range": etag}).status_code == 206
