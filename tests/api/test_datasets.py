"""`/v1/datasets`: create, list, read, report and delete curated datasets; every 4xx says what to fix."""

from __future__ import annotations

import httpx
import pytest

from tests.factories import (
    api_error,
    create_dataset,
    pending_corpus,
    ready_corpus,
    shakespeare_slice,
    small_job_spec,
    submit_job,
    upload_corpus,
    wait_for_corpus,
    wait_for_dataset,
    wait_for_job,
)
from tests.service import Service

pytestmark = pytest.mark.integration


def _fields(response: httpx.Response) -> set[str]:
    return {d["field"] for d in api_error(response, 422)["details"]}


def _dataset_job(dataset_id: str, **overrides: object) -> dict:
    spec = small_job_spec("unused", **overrides)
    del spec["corpus_ids"]
    return {**spec, "dataset_id": dataset_id}


def test_a_mixture_is_curated_listed_reported_reused_and_deleted(embedded_service: Service) -> None:
    client = embedded_service.client()
    first = ready_corpus(client, shakespeare_slice(40_000))
    second = ready_corpus(client, shakespeare_slice(80_000)[40_000:])
    request = {
        "name": "two-halves",
        "sources": [{"corpus_id": first["id"], "weight": 7}, {"corpus_id": second["id"], "weight": 3}],
    }
    created = create_dataset(client, request)
    assert created["id"].startswith("dst_") and created["status"] == "processing", created
    assert [(s["corpus_id"], s["weight"], s["share"]) for s in created["sources"]] == [
        (first["id"], 7, pytest.approx(0.7)),
        (second["id"], 3, pytest.approx(0.3)),
    ]
    assert created["curation"] is None and created["decontaminate_against"] == [] and created["totals"] is None

    dataset = wait_for_dataset(client, created["id"])
    assert dataset["status"] == "ready", dataset
    # No rules (a plain mixture): every document is kept, and the totals say so.
    totals = dataset["totals"]
    assert totals["documents_in"] == totals["documents_out"] == first["documents"] + second["documents"], totals

    report = client.get(f"/v1/datasets/{dataset['id']}/report")
    assert report.status_code == 200, report.text
    names = [s["name"] for s in report.json()["sources"]]
    # Validation splits are curated first, so dedup drops the training copy of a validation document.
    assert names == ["sources[0].validation", "sources[1].validation", "sources[0].train", "sources[1].train"]

    # The same corpora, weights and rules: the stored curation is reused, not run again.
    again = wait_for_dataset(client, create_dataset(client, {**request, "name": "same-again"})["id"])
    assert again["status"] == "ready" and again["totals"] == totals
    assert "ready: reused curation" in embedded_service.log()
    assert client.get(f"/v1/datasets/{again['id']}/report").json() == report.json()

    page = client.get("/v1/datasets", params={"limit": 1}).json()
    assert [d["id"] for d in page["data"]] == [again["id"]] and page["next_cursor"]
    rest = client.get("/v1/datasets", params={"limit": 200, "cursor": page["next_cursor"]}).json()
    assert dataset["id"] in {d["id"] for d in rest["data"]}

    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    api_error(client.get(f"/v1/datasets/{dataset['id']}"), 404)
    # The kept text is shared: the other dataset with the same curation still has its report.
    assert client.get(f"/v1/datasets/{again['id']}/report").status_code == 200
    assert client.delete(f"/v1/datasets/{again['id']}").status_code == 204


def test_bad_requests_name_the_field(embedded_service: Service) -> None:
    client = embedded_service.client()
    corpus = ready_corpus(client, shakespeare_slice(20_000))
    good = {"corpus_id": corpus["id"], "weight": 1}

    assert _fields(client.post("/v1/datasets", json={"sources": [{**good, "weight": 0}]})) == {"sources[0].weight"}
    assert _fields(client.post("/v1/datasets", json={"sources": [{**good, "weight": -1}]})) == {"sources[0].weight"}
    assert _fields(client.post("/v1/datasets", json={"sources": [good, {**good, "weight": 2e9}]})) == {
        "sources[1].weight"
    }
    assert _fields(client.post("/v1/datasets", json={"sources": [good, good]})) == {"sources[1].corpus_id"}
    assert _fields(client.post("/v1/datasets", json={"sources": []})) == {"sources"}
    assert _fields(client.post("/v1/datasets", json={"sources": [good], "curation": {"bogus": {}}})) == {
        "curation.bogus"
    }
    assert _fields(client.post("/v1/datasets", json={"sources": [good], "curation": {"near_dedup": {"bands": 0}}})) == {
        "curation.near_dedup.bands"
    }

    unknown = client.post("/v1/datasets", json={"sources": [good, {"corpus_id": "cor_nope"}]})
    assert api_error(unknown, 422)["details"] == [{"field": "sources[1].corpus_id", "message": "no corpus cor_nope"}]
    unknown = client.post("/v1/datasets", json={"sources": [good], "decontaminate_against": ["cor_nope"]})
    assert _fields(unknown) == {"decontaminate_against[0]"}
    itself = client.post("/v1/datasets", json={"sources": [good], "decontaminate_against": [corpus["id"]]})
    assert _fields(itself) == {"decontaminate_against[0]"}

    broken = wait_for_corpus(client, upload_corpus(client, b"\x00binary\x00" * 1000, name="bad.txt")["id"])
    assert broken["status"] == "failed"
    failed = client.post("/v1/datasets", json={"sources": [good, {"corpus_id": broken["id"]}]})
    body = api_error(failed, 422)
    assert body["details"][0]["field"] == "sources[1].corpus_id" and "failed ingest" in body["message"]

    # A job names exactly one of corpus_ids and dataset_id, and only a dataset of its own.
    both = {**small_job_spec(corpus["id"]), "dataset_id": "dst_nope"}
    assert _fields(client.post("/v1/jobs", json=both)) == {"dataset_id"}
    neither = small_job_spec(corpus["id"])
    del neither["corpus_ids"]
    assert _fields(client.post("/v1/jobs", json=neither)) == {"corpus_ids"}
    missing = api_error(client.post("/v1/jobs", json=_dataset_job("dst_nope")), 422)
    assert missing["details"] == [{"field": "dataset_id", "message": "no dataset dst_nope"}]


def test_a_processing_dataset_has_no_report_and_cannot_be_deleted_while_a_job_waits(
    embedded_service: Service,
) -> None:
    alice, bob = embedded_service.client("alice"), embedded_service.client("bob")
    bob.get("/v1/datasets")  # bob exists
    corpus_id = pending_corpus(embedded_service)  # the dataset waits for its ingest
    dataset = create_dataset(alice, {"sources": [{"corpus_id": corpus_id}], "curation": {}})
    assert alice.get(f"/v1/datasets/{dataset['id']}").json()["status"] == "processing"
    assert "still processing" in api_error(alice.get(f"/v1/datasets/{dataset['id']}/report"), 409)["message"]

    job = submit_job(alice, _dataset_job(dataset["id"], training={"max_steps": 100_000}))
    assert job["status"] == "queued" and job["spec"]["dataset_id"] == dataset["id"] and "corpus_ids" not in job["spec"]
    body = api_error(alice.delete(f"/v1/datasets/{dataset['id']}"), 409)
    assert job["id"] in body["message"] and body["details"] == {"job_ids": [job["id"]]}

    # Another tenant sees nothing of it.
    for response in (
        bob.get(f"/v1/datasets/{dataset['id']}"),
        bob.get(f"/v1/datasets/{dataset['id']}/report"),
        bob.delete(f"/v1/datasets/{dataset['id']}"),
    ):
        api_error(response, 404)
    assert dataset["id"] not in {d["id"] for d in bob.get("/v1/datasets").json()["data"]}
    assert _fields(bob.post("/v1/jobs", json=_dataset_job(dataset["id"]))) == {"dataset_id"}
    assert _fields(bob.post("/v1/datasets", json={"sources": [{"corpus_id": corpus_id}]})) == {"sources[0].corpus_id"}

    assert alice.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    assert wait_for_job(alice, job["id"])["status"] == "cancelled"
    assert alice.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    api_error(alice.get(f"/v1/datasets/{dataset['id']}"), 404)
    assert alice.delete(f"/v1/corpora/{corpus_id}").status_code == 204
