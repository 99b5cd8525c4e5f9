"""The foundation, as another service uses it: upload → causal LM job → poll → download → transformers."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import httpx
import pytest

from tests.factories import ready_corpus, small_job_spec, submit_job, wait_for_job
from tests.service import Service

pytestmark = pytest.mark.integration


def test_pretrain_poll_download_and_generate(service: Service, tmp_path: Path) -> None:
    client = service.client("alice")
    corpus = ready_corpus(client)
    assert corpus["documents"] > 100 and corpus["characters"] > 50_000
    assert corpus["train_documents"] + corpus["validation_documents"] == corpus["documents"]

    job = submit_job(client, small_job_spec(corpus["id"]))
    assert job["status"] == "queued" and job["max_steps"] == 40
    assert job["spec"]["training"]["grad_accum_steps"] == 1  # defaults filled in

    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded", (done, service.log())
    assert done["step"] == 40 and done["tokens_seen"] == 40 * 8 * 32
    assert done["started_at"] and done["finished_at"] and done["eta_seconds"] is None
    assert {"train_loss", "val_loss", "learning_rate", "grad_norm", "tokens_per_second"} <= set(done["metrics"])

    losses = client.get(f"/v1/jobs/{job['id']}/metrics", params={"name": "train_loss"}).json()["data"]
    steps = [m["step"] for m in losses]
    assert steps == [1, 10, 20, 30, 40]  # the first step, then every 10
    assert losses[-1]["value"] < losses[0]["value"] - 0.3, losses

    events = [e["type"] for e in client.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
    assert events[0] == "queued" and events[-1] == "finished"
    assert {"started", "evaluation", "checkpoint_saved"} <= set(events)

    checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    assert [c["version"] for c in checkpoints] == [1, 2]
    assert [c["step"] for c in checkpoints] == [20, 40]
    final = checkpoints[-1]
    assert {"latest", "final"} <= set(final["aliases"])
    assert "best" in checkpoints[0]["aliases"] + final["aliases"]
    assert client.get(f"/v1/checkpoints/{final['id']}").json() == final

    response = client.get(f"/v1/checkpoints/{final['id']}/archive")
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-tar"
    assert int(response.headers["content-length"]) == len(response.content)
    folder = tmp_path / "checkpoint"
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        archive.extractall(folder, filter="data")
    names = {f["name"] for f in final["files"]}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "README.md",
        "selfsup.json",
    } <= names
    assert {p.name for p in folder.iterdir()} == names  # resume state is not part of the download
    for entry in final["files"]:
        assert hashlib.sha256((folder / entry["name"]).read_bytes()).hexdigest() == entry["sha256"], entry["name"]
    card = (folder / "README.md").read_text()
    assert corpus["id"] in card and corpus["sha256"] in card and "AutoModelForCausalLM" in card

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    prompt = tokenizer("ROMEO:\n", return_tensors="pt")
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert output.shape[1] == prompt["input_ids"].shape[1] + 12
    text = tokenizer.decode(output[0])
    assert text.startswith("ROMEO:\n") and len(text) > len("ROMEO:\n")

    # One file, with Range.
    ranged = client.get(f"/v1/checkpoints/{final['id']}/files/config.json", headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206 and ranged.content == (folder / "config.json").read_bytes()[:10]
    assert client.get(f"/v1/checkpoints/{final['id']}/files/resume").status_code == 404

    # `?redirect=true`: with blobs in S3 (the postgres flavour), a 307 to a presigned URL that serves the same
    # bytes without the API key; with a local folder, the file itself.
    weights = next(f for f in final["files"] if f["name"] == "model.safetensors")
    url = f"/v1/checkpoints/{final['id']}/files/model.safetensors"
    answer = client.get(url, params={"redirect": "true"})
    assert answer.headers["x-checksum-sha256"] == weights["sha256"]
    if service.env.get("SELFSUP_BLOB_URL", "").startswith("s3://"):
        assert answer.status_code == 307, answer.text
        location = answer.headers["location"]
        assert "X-Amz-Signature=" in location and not location.startswith(service.base_url)
        answer = httpx.get(location)  # no Authorization header: the signature is the permission
    assert answer.status_code == 200
    assert hashlib.sha256(answer.content).hexdigest() == weights["sha256"]
    assert answer.content == (folder / "model.safetensors").read_bytes()
