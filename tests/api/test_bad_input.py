"""Bad input gets a clear 4xx that says what to fix; nothing half-written is left behind."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
from collections.abc import Iterator

import httpx
import pytest

from storage.blobs import LocalBlobStore
from storage.keys import corpus_upload_key
from tests.factories import (
    api_error,
    ready_corpus,
    shakespeare_slice,
    small_job_spec,
    submit_job,
    upload_corpus,
    wait_for_corpus,
    wait_for_job,
)
from tests.service import Service, wait_until

pytestmark = pytest.mark.integration


def _uploads(service: Service) -> list[str]:
    """Everything stored under corpora/: keys, and on a local folder its folders and temporary files too (a refused
    upload used to leave an empty `corpora/cor_*` folder behind for good)."""
    store = service.blobs()
    if isinstance(store, LocalBlobStore):
        folder = store.root / "corpora"
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []
    return service.blob_keys("corpora")


def test_requests_without_a_valid_key_get_401(embedded_service: Service) -> None:
    anonymous = httpx.Client(base_url=embedded_service.base_url)
    assert "Authorization: Bearer" in api_error(anonymous.get("/v1/jobs"), 401)["message"]
    wrong = httpx.Client(base_url=embedded_service.base_url, headers={"Authorization": "Bearer ss_nope"})
    api_error(wrong.get("/v1/corpora"), 401)
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/readyz").json()["checks"] == {"database": "ok", "broker": "ok"}


def test_invalid_spec_names_each_bad_field(embedded_service: Service) -> None:
    client = embedded_service.client()
    corpus = ready_corpus(client)
    spec = small_job_spec(corpus["id"], model={"heads": 3, "layers": 0}, training={"learning_rate": -1})
    spec["surprise"] = True
    spec["objective"] = {"type": "causal_lm", "mask_probability": 0.2}
    body = api_error(client.post("/v1/jobs", json=spec), 422)
    fields = {d["field"] for d in body["details"]}
    assert {"model.layers", "training.learning_rate", "surprise", "objective.mask_probability"} <= fields, fields
    assert "model.layers" in body["message"]

    body = api_error(client.post("/v1/jobs", json={"corpus_ids": [corpus["id"]], "objective": {"type": "nope"}}), 422)
    assert body["details"][0]["field"] == "objective"

    body = api_error(client.post("/v1/jobs", json={"objective": {"type": "causal_lm"}}), 422)
    assert body["details"][0]["field"] == "corpus_ids"

    # Not JSON at all: 400 with where it broke (issue 14; it was a 422 naming `[1]` as the field).
    body = api_error(client.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}), 400)
    assert body["details"] == {
        "line": 1,
        "column": 2,
        "position": 1,
        "reason": "Expecting property name enclosed in double quotes",
    }


def test_unknown_corpus_id_is_refused(embedded_service: Service) -> None:
    body = api_error(embedded_service.client().post("/v1/jobs", json=small_job_spec("cor_does_not_exist")), 422)
    assert body["details"] == [{"field": "corpus_ids[0]", "message": "no corpus cor_does_not_exist"}]


def test_empty_upload_is_refused_and_nothing_kept(service: Service) -> None:
    client = service.client()
    before = _uploads(service)
    body = api_error(client.post("/v1/corpora", params={"name": "e.txt"}, content=b""), 422)
    assert "empty" in body["message"]
    assert _uploads(service) == before
    assert all(c["name"] != "e.txt" for c in client.get("/v1/corpora").json()["data"])


def test_upload_over_the_limit_gets_413_and_nothing_kept(service: Service) -> None:
    client = service.client()
    before = _uploads(service)
    too_big = b"a" * 3_100_000

    def stream():  # no Content-Length: the limit must hold while streaming
        for i in range(0, len(too_big), 65536):
            yield too_big[i : i + 65536]

    body = api_error(client.post("/v1/corpora", params={"name": "big.txt"}, content=stream()), 413)
    assert "3,000,000" in body["message"]
    api_error(client.post("/v1/corpora", params={"name": "big.txt"}, content=too_big), 413)  # with Content-Length
    assert _uploads(service) == before
    assert all(c["name"] != "big.txt" for c in client.get("/v1/corpora").json()["data"])


def test_an_upload_of_many_batches_keeps_its_bytes_and_a_broken_off_one_nothing(service: Service) -> None:
    # Hashed and written by a worker thread one batch (SELFSUP_UPLOAD_CHUNK_BYTES, 1 MiB) at a time: the stored
    # bytes, their size and sha256 must be the upload's, in order, whatever the pieces the client sent.
    client = service.client()
    data = os.urandom(1_400_000).hex().encode()[:2_900_001]

    def pieces() -> Iterator[bytes]:  # odd sizes, so that batches and pieces never line up
        for i in range(0, len(data), 77_777):
            yield data[i : i + 77_777]

    response = client.post("/v1/corpora", params={"name": "batches.txt"}, content=pieces())
    assert response.status_code == 201, response.text
    corpus = response.json()
    assert corpus["size_bytes"] == len(data) and corpus["sha256"] == hashlib.sha256(data).hexdigest()
    with service.blobs().open(corpus_upload_key(corpus["id"])) as stored:
        assert stored.read() == data

    # A client that goes away mid-body (1 of 2.5 MB sent): nothing stays, and the API goes on serving. Other
    # corpora's folders may change meanwhile (ingest writes its splits next to an upload): only what no known
    # corpus owns counts.
    known = {path.split("/")[0] for path in _uploads(service)} | {corpus["id"]}

    def leftovers() -> list[str]:
        return [path for path in _uploads(service) if path.split("/")[0] not in known]

    host, port = service.base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(
            b"POST /v1/corpora?name=broken.txt HTTP/1.1\r\nHost: selfsup\r\nContent-Type: text/plain\r\n"
            + f"Authorization: Bearer {service.keys['alice']}\r\nContent-Length: 2500000\r\n\r\n".encode()
            + data[:1_000_000]
        )
        if isinstance(service.blobs(), LocalBlobStore):  # on S3 the bytes wait in memory for a first 8 MiB part
            wait_until(leftovers, timeout=30, what="the upload's temporary file")
    wait_until(lambda: not leftovers(), timeout=30, what="the broken-off upload's bytes to go")
    assert all(c["name"] != "broken.txt" for c in client.get("/v1/corpora").json()["data"])


def test_binary_and_undecodable_uploads_fail_with_a_reason(embedded_service: Service) -> None:
    client = embedded_service.client()
    cases = {
        "blob.txt": (b"\x00\x01\x02binary" * 100, "binary"),
        "latin.txt": ("caf\xe9 au lait\n".encode("latin-1") * 10, "not valid UTF-8"),
        "zip.txt": (b"PK\x03\x04" + b"\x00" * 100, "zip archive"),
        "lines.jsonl": (b'{"text": "fine"}\n{"body": "no text field"}\n', 'line 2 has no "text" field'),
    }
    for name, (data, reason) in cases.items():
        corpus = wait_for_corpus(client, upload_corpus(client, data, name=name, content_type="")["id"])
        assert corpus["status"] == "failed" and reason in corpus["error"], corpus


def test_unknown_format_gets_415_and_nothing_kept(service: Service) -> None:
    before = _uploads(service)
    body = api_error(
        service.client().post(
            "/v1/corpora", params={"name": "data.csv"}, content=b"a,b\n", headers={"Content-Type": "text/csv"}
        ),
        415,
    )
    assert ".txt" in body["message"] and ".jsonl" in body["message"]
    assert _uploads(service) == before


def test_gzipped_jsonl_and_multipart_uploads_ingest(embedded_service: Service) -> None:
    client = embedded_service.client()
    lines = [json.dumps({"text": f"Document number {i}.\r\nSecond line."}) for i in range(50)]
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    corpus = upload_corpus(client, data, name="docs.jsonl.gz", content_type="application/octet-stream")
    assert corpus["format"] == "jsonl" and corpus["compression"] == "gzip"
    corpus = wait_for_corpus(client, corpus["id"])
    assert corpus["status"] == "ready" and corpus["documents"] == 50, corpus
    assert corpus["characters"] == sum(len(f"Document number {i}.\nSecond line.") for i in range(50))

    text = shakespeare_slice(20_000)
    response = client.post("/v1/corpora", files={"file": ("plays.txt", text, "text/plain")})
    assert response.status_code == 201, response.text
    corpus = wait_for_corpus(client, response.json()["id"])
    assert corpus["name"] == "plays.txt" and corpus["status"] == "ready" and corpus["size_bytes"] == len(text)
    assert corpus["sha256"] == hashlib.sha256(text).hexdigest()
    api_error(client.post("/v1/corpora", files={"other": ("x.txt", b"abc", "text/plain")}), 422)


def test_cancel_finished_job_is_409_and_idempotency_key_returns_same_job(embedded_service: Service) -> None:
    client = embedded_service.client()
    corpus = ready_corpus(client)
    spec = small_job_spec(corpus["id"], training={"max_steps": 5}, checkpointing={"every_steps": 5})
    first = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "k-1"})
    again = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201 and again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.headers.get("idempotent-replayed") == "true"
    other = dict(spec, name="something else")
    assert (
        "different request body"
        in api_error(client.post("/v1/jobs", json=other, headers={"Idempotency-Key": "k-1"}), 409)["message"]
    )
    ids = [j["id"] for j in client.get("/v1/jobs", params={"limit": 200}).json()["data"]]
    assert ids.count(first.json()["id"]) == 1

    done = wait_for_job(client, first.json()["id"])
    assert done["status"] == "succeeded", done
    body = api_error(client.post(f"/v1/jobs/{done['id']}/cancel"), 409)
    assert "already finished" in body["message"]


def test_job_on_a_corpus_that_fails_fails_with_its_reason(embedded_service: Service) -> None:
    client = embedded_service.client()
    corpus = upload_corpus(client, b"\x00binary\x00" * 1000, name="bad.txt")
    job = client.post("/v1/jobs", json=small_job_spec(corpus["id"]))
    if job.status_code == 422:  # ingest already failed: refused up front, naming the corpus
        assert "failed ingest" in job.json()["error"]["message"]
        return
    done = wait_for_job(client, job.json()["id"])
    assert done["status"] == "failed" and "binary" in done["error"], done


def test_corpus_too_small_for_the_context_fails_the_job_with_a_reason(embedded_service: Service) -> None:
    client = embedded_service.client()
    corpus = ready_corpus(client, b"To be, or not to be.\n\nThat is the question.\n")
    job = submit_job(client, small_job_spec(corpus["id"], model={"context_length": 256}))
    done = wait_for_job(client, job["id"])
    assert done["status"] == "failed" and "context_length" in done["error"], done


def test_corpus_in_use_cannot_be_deleted(embedded_service: Service) -> None:
    client = embedded_service.client()
    corpus = ready_corpus(client)
    job = submit_job(client, small_job_spec(corpus["id"], training={"max_steps": 100_000}))
    body = api_error(client.delete(f"/v1/corpora/{corpus['id']}"), 409)
    assert job["id"] in body["message"]
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    wait_for_job(client, job["id"])
    assert client.delete(f"/v1/corpora/{corpus['id']}").status_code == 204
    api_error(client.get(f"/v1/corpora/{corpus['id']}"), 404)


def test_bad_paging_parameters(embedded_service: Service) -> None:
    client = embedded_service.client()
    assert api_error(client.get("/v1/jobs", params={"cursor": "garbage!"}), 422)["details"][0]["field"] == "cursor"
    assert api_error(client.get("/v1/jobs", params={"limit": 0}), 422)["details"][0]["field"] == "limit"
    assert api_error(client.get("/v1/jobs", params={"status": "sleeping"}), 422)["details"][0]["field"] == "status"


def test_data_an_objective_cannot_use_fails_at_once_without_restarts(embedded_service: Service) -> None:
    client = embedded_service.client()
    # Two documents, one long sentence each: enough tokens for any window, one sentence per split.
    sentence = b"whether tis nobler in the mind to suffer the slings and arrows of outrageous fortune " * 3
    corpus = ready_corpus(client, sentence + b"\n\n" + sentence.replace(b"whether", b"or to take") + b"\n")
    job = submit_job(
        client,
        {
            "corpus_ids": [corpus["id"]],
            "objective": {"type": "contrastive"},
            "model": {"context_length": 16},
            "training": {"max_steps": 5},
        },
    )
    done = wait_for_job(client, job["id"])
    assert done["status"] == "failed" and done["restarts"] == 0, done
    assert done["error"].startswith("cannot start training:"), done["error"]
    assert "crashed" not in [e["type"] for e in client.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
