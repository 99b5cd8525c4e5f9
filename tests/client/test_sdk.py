"""The Python SDK against the real service: round trip, paging, errors, retries, resumed and verified downloads."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from pathlib import Path

import pytest

from selfsup_client import (
    AsyncClient,
    AuthenticationError,
    Client,
    Conflict,
    ConnectionFailed,
    InvalidRequest,
    Job,
    NotFound,
    PermissionDenied,
    ProbeRun,
    ServiceUnavailable,
)
from tests.client.conftest import Trained, Wiretap
from tests.factories import labelled_set_jsonl, play_speeches, small_job_spec
from tests.service import Service, free_port

pytestmark = pytest.mark.integration


def test_round_trip_metrics_checkpoints_download_and_load(sdk: Client, trained: Trained, tmp_path: Path) -> None:
    corpus, job = trained.corpus, trained.job
    assert sdk.corpora.get(corpus.id) == corpus
    assert corpus.documents and corpus.name == "sdk-shakespeare" and corpus.format == "txt"
    assert job.status == "succeeded" and job.step == job.max_steps == 40 and job.finished
    assert {"train_loss", "val_loss", "tokens_per_second"} <= set(job.metrics)

    losses = sdk.jobs.metrics(job.id, name="train_loss")
    assert [p.step for p in losses] == [1, 10, 20, 30, 40] and {p.name for p in losses} == {"train_loss"}
    assert losses[-1].value < losses[0].value
    assert [p.step for p in sdk.jobs.metrics(job.id, name="train_loss", after_step=20)] == [30, 40]
    events = sdk.jobs.events(job.id)
    assert events[0].type == "queued" and events[-1].type == "finished"
    assert [e.id for e in sdk.jobs.events(job.id, after_id=events[-2].id)] == [events[-1].id]

    checkpoints = sdk.jobs.checkpoints(job.id)
    assert [c.step for c in checkpoints] == [20, 40]
    final = checkpoints[-1]
    assert sdk.checkpoints.get(final.id) == final and "final" in final.aliases

    folder = sdk.checkpoints.download(final.id, to=tmp_path / "ckpt")
    assert folder == tmp_path / "ckpt"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f.name for f in final.files)
    for entry in final.files:
        assert hashlib.sha256((folder / entry.name).read_bytes()).hexdigest() == entry.sha256
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # nothing staged is left behind

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    output = model.generate(**tokenizer("ROMEO:\n", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert tokenizer.decode(output[0]).startswith("ROMEO:\n")


def test_idempotent_create_returns_the_same_job(sdk: Client, trained: Trained) -> None:
    again = sdk.jobs.create(trained.spec, idempotency_key=trained.idempotency_key)
    assert again.id == trained.job.id
    with pytest.raises(Conflict) as conflict:
        sdk.jobs.create({**trained.spec, "name": "other"}, idempotency_key=trained.idempotency_key)
    assert conflict.value.code == "conflict" and "different request body" in conflict.value.message


def test_lists_iterate_over_every_page(sdk: Client, trained: Trained, failing_job: Job) -> None:
    everything = [j.id for j in sdk.jobs.list(limit=200)]
    assert {trained.job.id, failing_job.id} <= set(everything)
    assert [j.id for j in sdk.jobs.list(limit=1)] == everything  # one job per page, every page
    assert [j.id for j in sdk.jobs.list(status="failed", limit=1)] == [failing_job.id]
    corpora = [c.id for c in sdk.corpora.list(limit=1)]
    assert trained.corpus.id in corpora and len(corpora) == len(set(corpora)) >= 2


def test_api_errors_carry_code_message_and_details(embedded_service: Service, sdk: Client, trained: Trained) -> None:
    with pytest.raises(NotFound) as missing:
        sdk.jobs.get("job_doesnotexist")
    assert missing.value.status_code == 404 and missing.value.code == "not_found"
    assert "job_doesnotexist" in missing.value.message

    with pytest.raises(InvalidRequest) as invalid:
        sdk.jobs.create(small_job_spec(trained.corpus.id, model={"heads": 3}))
    assert invalid.value.code == "invalid_request"
    assert any(d["field"].startswith("model") for d in invalid.value.details), invalid.value.details

    with pytest.raises(Conflict) as finished:
        sdk.jobs.cancel(trained.job.id)
    assert "already finished" in finished.value.message

    with pytest.raises(AuthenticationError) as unauthorized, Client(embedded_service.base_url, "ss_wrong") as wrong:
        wrong.jobs.get(trained.job.id)
    assert unauthorized.value.code == "unauthorized"

    # Another tenant's job does not exist for this one.
    with Client(embedded_service.base_url, embedded_service.keys["bob"]) as bob, pytest.raises(NotFound):
        bob.jobs.get(trained.job.id)

    # A read-only key may look but not act: 403 names the scope it lacks.
    read_key = embedded_service.create_key("sdk-reader", "--scopes", "read")
    with Client(embedded_service.base_url, read_key) as reader, pytest.raises(PermissionDenied) as denied:
        reader.jobs.cancel("job_doesnotexist")
    assert denied.value.code == "forbidden" and denied.value.details["required_scope"] == "write"


def test_transient_failures_are_retried_and_a_lost_create_answer_makes_one_job(
    embedded_service: Service, sdk_key: str, trained: Trained
) -> None:
    wire = Wiretap()
    job_path = f"/v1/jobs/{trained.job.id}"
    wire.refuse[("GET", job_path)] = 2  # 503 + Retry-After twice, then through
    wire.lose[("POST", "/v1/jobs")] = 1  # the server creates the job, the client never hears
    with Client(embedded_service.base_url, sdk_key, transport=wire, max_retries=3) as client:
        assert client.jobs.get(trained.job.id).id == trained.job.id
        assert len(wire.to(job_path)) == 3

        spec = small_job_spec(trained.corpus.id, name="sdk-retried-create", training={"max_steps": 100_000})
        job = client.jobs.create(spec)
        posts = [r for r in wire.requests if r.method == "POST" and r.url.path == "/v1/jobs"]
        keys = {r.headers["Idempotency-Key"] for r in posts}
        assert len(posts) == 2 and len(keys) == 1 and keys.pop().startswith("sdk-")
        assert [j.id for j in client.jobs.list(limit=200) if j.name == "sdk-retried-create"] == [job.id]
        client.jobs.cancel(job.id)

    wire = Wiretap()
    wire.refuse[("GET", job_path)] = 5
    with (
        Client(embedded_service.base_url, sdk_key, transport=wire, max_retries=1) as client,
        pytest.raises(ServiceUnavailable) as unavailable,
    ):
        client.jobs.get(trained.job.id)
    assert unavailable.value.code == "unavailable" and len(wire.to(job_path)) == 2

    with Client(f"http://127.0.0.1:{free_port()}", sdk_key, max_retries=1) as nobody, pytest.raises(ConnectionFailed):
        nobody.jobs.get(trained.job.id)


def _staged(tmp_path: Path, name: str) -> Path:
    (partial,) = tmp_path.glob(f".{name}.*.partial")
    return partial


def test_a_broken_download_resumes_with_range(
    embedded_service: Service, sdk_key: str, trained: Trained, tmp_path: Path
) -> None:
    final = Client(embedded_service.base_url, sdk_key).jobs.checkpoints(trained.job.id)[-1]
    weights = next(f for f in final.files if f.name == "model.safetensors")
    cut_at = weights.size_bytes // 3

    broken = Wiretap()
    broken.cut["/model.safetensors"] = (1, cut_at)
    with Client(embedded_service.base_url, sdk_key, transport=broken, max_retries=0) as client:
        with pytest.raises(ConnectionFailed):
            client.checkpoints.download(final.id, to=tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()  # nothing appears until everything is verified
    assert (_staged(tmp_path, "ckpt") / "model.safetensors").stat().st_size == cut_at

    wire = Wiretap()
    with Client(embedded_service.base_url, sdk_key, transport=wire) as client:
        folder = client.checkpoints.download(final.id, to=tmp_path / "ckpt")
    assert [r.headers.get("Range") for r in wire.to("/model.safetensors")] == [f"bytes={cut_at}-"]
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == weights.sha256
    assert not list(tmp_path.glob(".ckpt.*"))

    # Within one call, a broken transfer is retried from where it stopped.
    wire = Wiretap()
    wire.cut["/model.safetensors"] = (2, cut_at)
    with Client(embedded_service.base_url, sdk_key, transport=wire) as client:
        folder = client.checkpoints.download(final.id, to=tmp_path / "again")
    ranges = [r.headers.get("Range") for r in wire.to("/model.safetensors")]
    assert ranges == [None, f"bytes={cut_at}-", f"bytes={2 * cut_at}-"], ranges
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == weights.sha256


def test_a_corrupt_partial_file_is_detected_and_fetched_again(
    embedded_service: Service, sdk_key: str, trained: Trained, tmp_path: Path
) -> None:
    final = Client(embedded_service.base_url, sdk_key).jobs.checkpoints(trained.job.id)[-1]
    weights = next(f for f in final.files if f.name == "model.safetensors")
    cut_at = weights.size_bytes // 2
    broken = Wiretap()
    broken.cut["/model.safetensors"] = (1, cut_at)
    with Client(embedded_service.base_url, sdk_key, transport=broken, max_retries=0) as client:
        with pytest.raises(ConnectionFailed):
            client.checkpoints.download(final.id, to=tmp_path / "ckpt")
    partial = _staged(tmp_path, "ckpt") / "model.safetensors"
    with open(partial, "r+b") as fh:  # a disk error in what was already fetched
        fh.write(b"\0" * 64)

    wire = Wiretap()
    with Client(embedded_service.base_url, sdk_key, transport=wire) as client:
        folder = client.checkpoints.download(final.id, to=tmp_path / "ckpt")
    # Resumed first, found not to match its sha256, then fetched whole.
    assert [r.headers.get("Range") for r in wire.to("/model.safetensors")] == [f"bytes={cut_at}-", None]
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == weights.sha256


def test_async_client(
    embedded_service: Service, sdk_key: str, trained: Trained, failing_job: Job, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with AsyncClient(embedded_service.base_url, sdk_key) as client:
            job = await client.jobs.get(trained.job.id)
            assert job == trained.job
            ids = [j.id async for j in client.jobs.list(limit=1)]
            assert {trained.job.id, failing_job.id} <= set(ids) and len(ids) == len(set(ids))
            assert len(await client.jobs.metrics(job.id, name="val_loss")) == 2
            with pytest.raises(NotFound):
                await client.corpora.get("cor_nope")
            again = await client.jobs.create(trained.spec, idempotency_key=trained.idempotency_key)
            assert again.id == job.id
            messages = [m async for m in client.jobs.stream(job.id)]
            assert messages[0].event == "status" and messages[-1].event == "end"
            assert [m.data for m in messages if m.event == "event"] == await client.jobs.events(job.id)

            final = (await client.jobs.checkpoints(job.id))[-1]
            folder = await client.checkpoints.download(final.id, to=tmp_path / "ckpt")
            for entry in final.files:
                assert hashlib.sha256((folder / entry.name).read_bytes()).hexdigest() == entry.sha256
            text = b"Hark.\n\nWho goes there?\n"
            uploaded = await client.corpora.upload(io.BytesIO(text), name="hark.txt")
            assert uploaded.status == "processing" and uploaded.name == "hark.txt"
            assert uploaded.sha256 == hashlib.sha256(text).hexdigest()
            assert (await client.corpora.wait(uploaded.id, timeout=120, poll_interval=0.3)).status == "ready"

    asyncio.run(scenario())


def test_labelled_sets_and_probes_sync_and_async(
    embedded_service: Service, sdk: Client, sdk_key: str, probed: Trained, tmp_path: Path
) -> None:
    path = tmp_path / "plays.jsonl"
    path.write_bytes(labelled_set_jsonl(play_speeches(per_play=15)))
    uploaded = sdk.labelled_sets.upload(path)
    assert uploaded.name == "plays.jsonl" and uploaded.examples == 30 and set(uploaded.label_counts.values()) == {15}
    assert uploaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sdk.labelled_sets.get(uploaded.id) == uploaded
    assert uploaded.id in [s.id for s in sdk.labelled_sets.list(limit=1)]
    with pytest.raises(InvalidRequest):  # validated at once: a line without a label names itself
        sdk.labelled_sets.upload(io.BytesIO(b'{"text": "no label"}\n'), name="bad")

    final = sdk.jobs.checkpoints(probed.job.id)[-1]
    queued = sdk.checkpoints.probe(final.id, uploaded.id, name="sdk-play")
    assert {(r.random_init, r.step, r.name) for r in queued} == {(False, final.step, "sdk-play"), (True, 0, "sdk-play")}

    def finished() -> list[ProbeRun]:
        deadline = time.monotonic() + 300
        while True:
            runs = [r for r in sdk.jobs.probes(probed.job.id) if r.name == "sdk-play"]
            if runs and all(r.finished for r in runs):
                return runs
            assert time.monotonic() < deadline, runs
            time.sleep(0.5)

    runs = finished()
    assert {r.id for r in runs} == {r.id for r in queued}
    assert all(r.status == "succeeded" and r.accuracy is not None and 0 <= r.accuracy <= 1 for r in runs), runs
    metric = [m for m in sdk.jobs.metrics(probed.job.id, name="probe_accuracy/sdk-play") if m.step == final.step]
    assert metric[0].value == next(r.accuracy for r in runs if not r.random_init)

    async def scenario() -> None:
        async with AsyncClient(embedded_service.base_url, sdk_key) as client:
            assert await client.labelled_sets.get(uploaded.id) == uploaded
            assert uploaded.id in [s.id async for s in client.labelled_sets.list(limit=1)]
            assert {r.id for r in await client.jobs.probes(probed.job.id) if r.name == "sdk-play"} == {
                r.id for r in runs
            }
            again = await client.checkpoints.probe(final.id, probes=[{"labelled_set_id": uploaded.id, "name": "again"}])
            assert [(r.name, r.checkpoint_id) for r in again if not r.random_init] == [("again", final.id)]
            other = await client.labelled_sets.upload(io.BytesIO(path.read_bytes()), name="async-plays")
            assert other.name == "async-plays" and other.sha256 == uploaded.sha256
            await client.labelled_sets.delete(other.id)
            with pytest.raises(NotFound):
                await client.labelled_sets.get(other.id)

    asyncio.run(scenario())
    sdk.labelled_sets.delete(uploaded.id)
    with pytest.raises(NotFound):
        sdk.labelled_sets.get(uploaded.id)


def test_stream_replays_a_finished_job_and_resumes_with_last_event_id(
    embedded_service: Service, sdk: Client, sdk_key: str, trained: Trained
) -> None:
    job_id = trained.job.id
    messages = list(sdk.jobs.stream(job_id))
    assert messages[0].event == "status" and messages[-1].event == "end"
    assert messages[-1].job is not None and messages[-1].job.status == "succeeded" and messages[-1].job.step == 40
    assert [m.data for m in messages if m.event == "event"] == sdk.jobs.events(job_id)
    streamed_metrics = sorted((m.data.step, m.data.name) for m in messages if m.event == "metric")  # type: ignore[union-attr]
    assert streamed_metrics == sorted((p.step, p.name) for p in sdk.jobs.metrics(job_id))
    assert len({m.id for m in messages}) == len(messages)

    # The connection drops mid-stream: the SDK reconnects with Last-Event-ID, missing and repeating nothing.
    wire = Wiretap()
    wire.cut["/stream"] = (1, 2_000)
    with Client(embedded_service.base_url, sdk_key, transport=wire) as client:
        resumed = list(client.jobs.stream(job_id))
    assert resumed == messages
    first, second = wire.to(f"/v1/jobs/{job_id}/stream")
    assert "Last-Event-ID" not in first.headers
    last_seen = second.headers["Last-Event-ID"]
    assert last_seen in [m.id for m in messages[1:-1]], last_seen

    with pytest.raises(NotFound):
        next(iter(sdk.jobs.stream("job_doesnotexist")))
