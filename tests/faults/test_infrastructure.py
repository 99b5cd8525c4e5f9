"""Faults outside the trainer: crash loops, torn checkpoint writes, duplicate delivery, broker and API restarts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from storage.blobs import BlobStore, LocalBlobStore
from tests.factories import ready_corpus, shakespeare_slice, submit_job, wait_for_job
from tests.faults.conftest import (
    CRASH_LOOP,
    TORN_CHECKPOINT,
    assert_clean_history,
    event_types,
    final_weights_sha,
    kill,
    resumable_spec,
)
from tests.service import REPO, SELFSUP, Service, wait_until

pytestmark = pytest.mark.integration
BACKENDS = ["embedded", "postgres"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_crash_loop_runs_max_restarts_plus_one_times_then_fails(
    shared_fault_service: Callable[[str], Service], backend: str
) -> None:
    service = shared_fault_service(backend)  # raises at step 30 in every run of a job called CRASH_LOOP
    client = service.client()
    corpus = ready_corpus(client)
    job = submit_job(client, dict(resumable_spec(corpus["id"], max_restarts=2), name=CRASH_LOOP))
    done = wait_for_job(client, job["id"], timeout=180)
    assert done["status"] == "failed", done
    assert "gave up after 2 restarts" in done["error"] and "injected fault at step 30" in done["error"]
    events = event_types(client, job["id"])
    assert events.count("started") + events.count("resumed") == 3  # max_restarts + 1 runs
    assert events.count("crashed") == 2 and events[-1] == "failed"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_usable(
    shared_fault_service: Callable[[str], Service], backend: str
) -> None:
    # The worker of a job called TORN_CHECKPOINT dies once, after checkpoint v3's files are written, before the rename.
    service = shared_fault_service(backend)
    client = service.client()
    corpus = ready_corpus(client)
    spec = resumable_spec(corpus["id"], max_steps=150)
    clean = submit_job(client, spec)
    job = submit_job(client, dict(spec, name=TORN_CHECKPOINT))
    done = wait_for_job(client, job["id"], timeout=240)
    assert done["status"] == "succeeded" and done["restarts"] == 1, (done, service.log())
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    resumed = [e["message"] for e in events if e["type"] == "resumed"]
    assert len(resumed) == 1 and "checkpoint v2 at step 50" in resumed[0], resumed
    assert_clean_history(client, job["id"], 150)
    stored = service.blobs().list_children(f"checkpoints/{job['id']}")
    assert not [k for k in stored if k.rsplit("/", 1)[-1].startswith(".tmp")], "a partial checkpoint was left behind"
    recorded = {c["version"] for c in client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]}
    assert len(stored) == len(recorded)

    assert wait_for_job(client, clean["id"])["status"] == "succeeded"
    assert final_weights_sha(client, job["id"]) == final_weights_sha(client, clean["id"])


# Redelivery comes a second or two after the first delivery; the job trains several times longer than that.
MAX_STEPS_REDELIVERED = 600


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_delivery_never_runs_two_trainers(make_fault_service: Callable[..., Service], backend: str) -> None:
    # Redis redelivers an unacknowledged message after the visibility timeout: here, after one second,
    # to a second gpu worker while the first still trains. (A service of its own: every task is redelivered.)
    extras: list[subprocess.Popen[bytes]] = []

    def start_second_worker(service: Service) -> None:
        # As soon as the service's broker is known (the embedded one's address is written once it runs), so the
        # second worker imports torch while the service starts.
        broker = service.home / "broker" / "url"

        def known() -> bool:
            assert service.process.poll() is None, service.log()
            return "SELFSUP_REDIS_URL" in service.env or broker.is_file()

        wait_until(known, timeout=120, what="the broker")
        extras.append(
            subprocess.Popen(
                [*SELFSUP, "worker", "--queues", "gpu"],
                env=service.env,
                cwd=REPO,
                stdout=open(service.home / "extra-worker.log", "wb"),
                stderr=subprocess.STDOUT,
            )
        )

    try:
        service = make_fault_service(backend, beside=start_second_worker, SELFSUP_BROKER_VISIBILITY_TIMEOUT="1")
        client = service.client()
        corpus = ready_corpus(client)
        wait_until(
            lambda: "ready." in (service.home / "extra-worker.log").read_text(),
            timeout=120,
            what="the second gpu worker",
        )
        job = submit_job(client, resumable_spec(corpus["id"], max_steps=MAX_STEPS_REDELIVERED))
        refused = f"selfsup.train_job('{job['id']}',): not claimed"

        def redelivered() -> bool:
            logs = service.log_path.read_text() + (service.home / "extra-worker.log").read_text()
            return refused in logs

        # The duplicate must come while the first trainer trains (a job that has ended is refused as well).
        wait_until(redelivered, timeout=120, interval=0.1, what="Redis to redeliver the job's message")
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running", "redelivered only after the job"
        done = wait_for_job(client, job["id"], timeout=300)
        assert done["status"] == "succeeded" and done["restarts"] == 0, done
        events = event_types(client, job["id"])
        assert events.count("started") == 1 and "resumed" not in events and "crashed" not in events
        assert_clean_history(client, job["id"], MAX_STEPS_REDELIVERED)
    finally:
        for extra in extras:
            extra.send_signal(signal.SIGTERM)
            extra.wait(60)


def _api_pid(service: Service) -> int:
    port = service.base_url.rsplit(":", 1)[1]
    out = subprocess.run(
        ["pgrep", "-f", f"selfsup.cli api --host 127.0.0.1 --port {port}"], capture_output=True, text=True
    )
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1, out
    return pids[0]


def _wait_ready(service: Service) -> None:
    def ready() -> bool:
        try:
            return httpx.get(f"{service.base_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout=120, interval=0.3, what="the API to come back")


@pytest.mark.parametrize("backend", BACKENDS)
def test_killing_the_api_mid_job_and_mid_upload_loses_nothing(
    shared_fault_service: Callable[[str], Service], backend: str
) -> None:
    service = shared_fault_service(backend)  # sweeps temporary blobs untouched for 2 s
    client = service.client()
    corpus = ready_corpus(client)
    job = submit_job(client, resumable_spec(corpus["id"], max_steps=300))

    def slow_body() -> Iterator[bytes]:
        text = shakespeare_slice(400_000)
        for i in range(0, len(text), 16_384):
            yield text[i : i + 16_384]
            time.sleep(0.05)

    failures: list[BaseException] = []
    streaming = threading.Event()

    def upload_body() -> Iterator[bytes]:
        for i, chunk in enumerate(slow_body()):
            if i == 4:
                streaming.set()  # the API has been sent bytes it must be holding somewhere
            yield chunk

    def upload() -> None:
        try:
            client.post("/v1/corpora", params={"name": "interrupted.txt"}, content=upload_body())
        except httpx.HTTPError as exc:
            failures.append(exc)

    uploader = threading.Thread(target=upload)
    uploader.start()
    store = service.blobs()
    wait_until(streaming.is_set, timeout=30, what="the upload to start streaming")
    if isinstance(store, LocalBlobStore):  # on S3 the first 8 MiB wait in the API's memory: no object yet
        wait_until(lambda: _unfinished_uploads(store), timeout=30, what="the upload's temporary file")
    kill(_api_pid(service), signal.SIGKILL)
    uploader.join(60)
    assert failures, "the upload should have broken off"
    _wait_ready(service)

    done = wait_for_job(client, job["id"], timeout=240)
    assert done["status"] == "succeeded", done
    names = [c["name"] for c in client.get("/v1/corpora").json()["data"]]
    assert "interrupted.txt" not in names  # nothing claims to be ready, nothing half-written
    wait_until(lambda: not _unfinished_uploads(store), timeout=60, what="the reconciler to sweep the orphan")
    assert sorted(store.list_children("corpora")) == sorted(f"corpora/{c}" for c in _corpus_ids(client))


def _unfinished_uploads(store: BlobStore) -> list[str]:
    """What a killed upload can leave: a temporary file (a folder), an unfinished multipart upload (S3)."""
    if isinstance(store, LocalBlobStore):
        return [str(p) for p in (store.root / "corpora").rglob(".tmp-*")]
    answer = store.client.list_multipart_uploads(Bucket=store.bucket)  # type: ignore[attr-defined]
    return [u["Key"] for u in answer.get("Uploads", [])]


def _corpus_ids(client: httpx.Client) -> list[str]:
    return [c["id"] for c in client.get("/v1/corpora").json()["data"]]


def _stop_machine_redis() -> None:
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True)


def _start_machine_redis() -> None:
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ],
        check=True,
        capture_output=True,
    )
    wait_until(lambda: _pings("redis://127.0.0.1:6379"), timeout=30, what="Redis to answer")


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def machine_redis() -> Iterator[None]:
    """This machine's Redis, restarted by the test; guaranteed running again afterwards."""
    if not shutil.which("redis-server") or not _pings("redis://127.0.0.1:6379"):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("this machine's Redis is required in CI")
        pytest.skip("no local redis-server to restart")
    try:
        yield
    finally:
        if not _pings("redis://127.0.0.1:6379"):
            _start_machine_redis()


def _broker_outage(service: Service, stop: Callable[[], None], start: Callable[[], None]) -> None:
    client = service.client()
    corpus = ready_corpus(client)
    running = submit_job(client, resumable_spec(corpus["id"], max_steps=300))
    queued = [submit_job(client, resumable_spec(corpus["id"], max_steps=60)) for _ in range(2)]
    wait_until(
        lambda: client.get(f"/v1/jobs/{running['id']}").json()["step"] >= 20, timeout=120, what="training to start"
    )
    stop()
    time.sleep(2)
    start()
    for job in [running, *queued]:
        done = wait_for_job(client, job["id"], timeout=300)
        assert done["status"] == "succeeded", (done, service.log()[-5000:])
    statuses = {j["status"] for j in client.get("/v1/jobs").json()["data"]}
    assert "queued" not in statuses


def test_embedded_broker_restart_mid_job_and_with_jobs_queued(shared_fault_service: Callable[[str], Service]) -> None:
    service = shared_fault_service("embedded")
    url = (service.home / "broker" / "url").read_text().strip()
    port = url.rsplit(":", 1)[1].split("/")[0]

    def stop() -> None:
        out = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True)
        for pid in out.stdout.split():
            os.kill(int(pid), signal.SIGKILL)  # the supervisor starts it again on the same port

    def start() -> None:
        wait_until(lambda: _pings(url), timeout=60, what="the supervisor to restart the embedded broker")

    _broker_outage(service, stop, start)


def test_machine_redis_restart_mid_job_and_with_jobs_queued(
    make_fault_service: Callable[..., Service], machine_redis: None
) -> None:
    # This Redis keeps nothing on disk: the queued messages are lost, and the reconciler must notice. (A service
    # of its own: every service on this machine's Redis loses its queues.)
    service = make_fault_service("postgres")
    _broker_outage(service, _stop_machine_redis, _start_machine_redis)
