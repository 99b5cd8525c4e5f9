"""Operations: `GET /metrics` (Prometheus), JSON log lines with request and job ids, and `selfsup up`'s start-up.

The session's embedded service logs JSON (tests/service.py); the PostgreSQL one logs text, where the
readable start-up is checked.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from tests.factories import api_error, ready_corpus, small_job_spec, submit_job, wait_for_job
from tests.service import REPO, SELFSUP, Service, free_port, wait_until

pytestmark = pytest.mark.integration

# What the trainer reports for each running job, as the scrape names it.
RUNNING_JOB_SERIES = (
    "selfsup_job_tokens_per_second",
    "selfsup_job_step_seconds",
    "selfsup_job_checkpoint_write_seconds",
    "selfsup_job_checkpoint_bytes",
)
TEXT_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+: ")
CELERY_BANNER_MARKS = ("-------------- ", "[queues]", "[config]", "[tasks]", ".> transport:")


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base_url: str, headers: dict[str, str] | None = None) -> Samples:
    """`GET /metrics`, parsed by prometheus_client's own parser: {(sample name, labels): value}."""
    response = httpx.get(f"{base_url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample with exactly these labels, or None."""
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    """The label sets of a metric's samples."""
    return [dict(labels) for sample, labels in samples if sample == name]


def log_records(service: Service) -> list[dict[str, Any]]:
    """The service log's JSON records (the session's embedded service logs JSON)."""
    records = []
    for line in service.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def test_metrics_report_requests_jobs_queues_a_running_job_and_corpora(service: Service) -> None:
    # Both backends: the scrape's queries (a statement timeout on PostgreSQL, the newest metric rows) differ.
    client = service.client("alice")
    corpus = ready_corpus(client)
    # A job long enough to catch running, with a checkpoint every few steps; a second one waits in the gpu queue.
    spec = small_job_spec(
        corpus["id"],
        training={"max_steps": 200_000},
        evaluation={"every_steps": 100_000},
        checkpointing={"every_steps": 20, "keep_last": 1},
    )
    running = submit_job(client, spec)
    waiting = submit_job(client, spec)
    try:

        def caught_running() -> Samples | None:
            samples = scrape(service.base_url)
            labels = {"job_id": running["id"], "tenant": "alice"}
            have = all(value(samples, name, **labels) is not None for name in RUNNING_JOB_SERIES)
            queued = (value(samples, "selfsup_queue_depth", queue="gpu") or 0) >= 1
            return samples if have and queued else None

        samples = wait_until(caught_running, timeout=180, interval=0.5, what="a running job's series on /metrics")
        labels = {"job_id": running["id"], "tenant": "alice"}
        assert value(samples, "selfsup_job_tokens_per_second", **labels) > 0  # type: ignore[operator]
        assert value(samples, "selfsup_job_step_seconds", **labels) > 0  # type: ignore[operator]
        assert value(samples, "selfsup_job_checkpoint_write_seconds", **labels) > 0  # type: ignore[operator]
        # The newest checkpoint's files as the API lists them, resume state included.
        checkpoint = client.get(f"/v1/jobs/{running['id']}/checkpoints").json()["data"][-1]
        assert value(samples, "selfsup_job_checkpoint_bytes", **labels) >= sum(  # type: ignore[operator]
            f["size_bytes"] for f in checkpoint["files"]
        )
        # The second job's train task waits in the broker while the (solo) gpu worker trains the first.
        assert value(samples, "selfsup_job_tokens_per_second", job_id=waiting["id"], tenant="alice") is None
        assert {s["queue"] for s in series(samples, "selfsup_queue_depth")} == {"cpu", "gpu"}
        assert value(samples, "selfsup_metrics_source_up", source="database") == 1
        assert value(samples, "selfsup_metrics_source_up", source="broker") == 1
    finally:
        for job in (running, waiting):
            client.post(f"/v1/jobs/{job['id']}/cancel")
        for job in (running, waiting):
            wait_for_job(client, job["id"], timeout=120)
    samples = scrape(service.base_url)
    assert not series(samples, "selfsup_job_tokens_per_second") or all(
        s["job_id"] != running["id"] for s in series(samples, "selfsup_job_tokens_per_second")
    ), "a finished job is still reported as running"

    # Jobs by status and corpus bytes match the database, over every tenant of the shared service (other test
    # files make tenants whose keys this test does not hold: the fuzzer's, keys made through /v1/keys).
    database_url = service.env.get("SELFSUP_DATABASE_URL") or f"sqlite:///{service.home.resolve() / 'selfsup.db'}"
    engine = create_engine(database_url)

    def agree() -> bool:
        with engine.connect() as conn:
            jobs = dict(conn.execute(text("SELECT status, COUNT(*) FROM jobs GROUP BY status")).all())
            ready_bytes = conn.execute(
                text("SELECT COALESCE(SUM(size_bytes), 0) FROM corpora WHERE status = 'ready'")
            ).scalar_one()
        samples = scrape(service.base_url)
        statuses = ("queued", "running", "paused", "succeeded", "failed", "cancelled")
        reported = {status: value(samples, "selfsup_jobs", status=status) for status in statuses}
        return reported == {status: float(jobs.get(status, 0)) for status in statuses} and value(
            samples, "selfsup_corpus_ingest_bytes", status="ready"
        ) == float(ready_bytes)

    try:
        wait_until(agree, timeout=30, what="/metrics to agree with the database on jobs by status and corpus bytes")
    finally:
        engine.dispose()
    assert (value(scrape(service.base_url), "selfsup_jobs", status="cancelled") or 0) >= 2


def test_metrics_count_requests_by_route_template_and_status(embedded_service: Service) -> None:
    client = embedded_service.client("alice")
    missing = f"job_{uuid.uuid4().hex[:20]}"
    before = scrape(embedded_service.base_url)
    template = "/v1/jobs/{job_id}"
    for _ in range(3):
        api_error(client.get(f"/v1/jobs/{missing}"), 404)
    assert client.get("/v1/jobs").status_code == 200
    api_error(httpx.get(f"{embedded_service.base_url}/v1/jobs/{missing}"), 401)
    api_error(client.get(f"/v1/no-such-thing/{missing}"), 404)
    after = scrape(embedded_service.base_url)

    def grew(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    assert grew("selfsup_http_requests_total", method="GET", route=template, status="404") == 3
    assert grew("selfsup_http_requests_total", method="GET", route=template, status="401") == 1
    assert grew("selfsup_http_requests_total", method="GET", route="/v1/jobs", status="200") >= 1
    assert grew("selfsup_http_requests_total", method="GET", route="unmatched", status="404") == 1
    # Never the raw path: one series per route template.
    assert not [s for s in series(after, "selfsup_http_requests_total") if missing in s["route"]]

    # The latency histogram of the route: cumulative buckets up to +Inf, which equals the count.
    buckets = {
        labels["le"]: v
        for (name, labels_set), v in after.items()
        if name == "selfsup_http_request_duration_seconds_bucket"
        for labels in [dict(labels_set)]
        if labels["route"] == template and labels["method"] == "GET"
    }
    assert {"0.005", "0.1", "1.0", "+Inf"} <= set(buckets), buckets
    ordered = [buckets[le] for le in sorted(buckets, key=lambda le: float(le))]
    assert ordered == sorted(ordered)
    count = value(after, "selfsup_http_request_duration_seconds_count", method="GET", route=template)
    assert buckets["+Inf"] == count
    assert grew("selfsup_http_request_duration_seconds_count", method="GET", route=template) == 4
    assert (value(after, "selfsup_http_request_duration_seconds_sum", method="GET", route=template) or 0) > 0


def test_request_ids_and_json_logs_with_tenant_and_job_and_no_keys(embedded_service: Service) -> None:
    client = embedded_service.client("alice")
    mine = f"ops-test-{uuid.uuid4().hex}"
    response = client.get("/v1/jobs", headers={"X-Request-ID": mine})
    assert response.status_code == 200 and response.headers["x-request-id"] == mine
    # One is made up when none (or an unusable one) is sent, and errors carry it too.
    made = client.get("/v1/corpora/cor_missing").headers["x-request-id"]
    assert made and made != mine
    odd = client.get("/v1/jobs", headers={"X-Request-ID": "two words " + "x" * 300})
    assert odd.headers["x-request-id"] not in ("", "two words " + "x" * 300)
    unauthorized = httpx.get(f"{embedded_service.base_url}/v1/jobs", headers={"X-Request-ID": mine + "-401"})
    assert api_error(unauthorized, 401) and unauthorized.headers["x-request-id"] == mine + "-401"

    corpus = ready_corpus(client)
    job = submit_job(client, small_job_spec(corpus["id"], training={"max_steps": 10, "warmup_steps": 1}))
    assert wait_for_job(client, job["id"])["status"] == "succeeded"

    text = embedded_service.log_path.read_text(errors="replace")
    for key in embedded_service.keys.values():
        assert key not in text, "an API key was logged"
    assert "Bearer " not in text, "an Authorization header was logged"

    records = log_records(embedded_service)
    # Nothing our set-up formats is written as a text line: every line of a logger is a JSON object.
    text_lines = [line for line in text.splitlines() if TEXT_LOG_LINE.match(line)]
    assert not text_lines, text_lines[:5]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)

    mine_records = [r for r in records if r.get("request_id") == mine]
    assert mine_records and all(r.get("tenant") == "alice" for r in mine_records), mine_records
    assert any(r["logger"] == "uvicorn.access" and "/v1/jobs" in r["message"] for r in mine_records)
    assert any(r.get("request_id") == made for r in records)

    job_records = [r for r in records if r.get("job_id") == job["id"]]
    loggers = {r["logger"] for r in job_records}
    assert {"selfsup.tasks"} <= loggers, loggers
    tasks = {r.get("task") for r in job_records}
    assert {"selfsup.prepare_job", "selfsup.train_job"} <= tasks, tasks
    assert any(r.get("corpus_id") == corpus["id"] and r.get("task") == "selfsup.ingest_corpus" for r in records)

    # `selfsup up` said it was up in one record with the fields a person needs, and no Celery banner.
    up = [r for r in records if r["logger"] == "selfsup.up" and r["message"] == "selfsup is up"]
    assert len(up) == 1, up
    assert up[0]["url"] == embedded_service.base_url and up[0]["data_dir"] == str(embedded_service.home)
    assert up[0]["database"].startswith("SQLite at ") and up[0]["broker"].startswith("embedded Valkey at ")
    assert up[0]["create_key"] == "selfsup keys create --tenant NAME"
    assert not [mark for mark in CELERY_BANNER_MARKS if mark in text]


def test_selfsup_up_prints_a_short_readable_start_up(postgres_service: Service) -> None:
    text = postgres_service.log_path.read_text(errors="replace")
    start = text.index("selfsup is up\n")
    lines = text[start:].splitlines()[:8]
    assert lines[1].split()[:2] == ["API", postgres_service.base_url], lines
    assert lines[2].split() == ["data", str(postgres_service.home)], lines
    assert lines[3].startswith("  database   PostgreSQL at 127.0.0.1"), lines
    assert lines[4].startswith("  broker     Redis at redis://"), lines
    assert lines[5].startswith("  workers    cpu") and lines[5].endswith("ready"), lines
    assert lines[6].split(maxsplit=2) == ["API", "key", "selfsup keys create --tenant NAME"], lines
    assert lines[7] == "press Ctrl-C to stop", lines
    assert not [mark for mark in CELERY_BANNER_MARKS if mark in text], "a Celery banner was printed"
    # The other log lines are readable text too, not JSON.
    assert not [line for line in text.splitlines() if line.startswith('{"')]


@pytest.fixture(scope="module")
def api_with_metrics_token(embedded_service: Service) -> Iterator[tuple[str, str]]:
    """A second API process (`selfsup api`) on the embedded service's database and broker, with a metrics token."""
    token = f"metrics-{uuid.uuid4().hex}"
    port = free_port()
    env = dict(embedded_service.env, SELFSUP_METRICS_TOKEN=token)
    log = open(embedded_service.home / "token-api.log", "wb")
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
        assert process.poll() is None, (embedded_service.home / "token-api.log").read_text()
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=60, what="the API with a metrics token")
        yield url, token
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        log.close()


def test_metrics_token_when_set(api_with_metrics_token: tuple[str, str], embedded_service: Service) -> None:
    url, token = api_with_metrics_token
    missing = api_error(httpx.get(f"{url}/metrics"), 401)
    assert "SELFSUP_METRICS_TOKEN" in missing["message"]
    api_error(httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}x"}), 401)
    api_error(httpx.get(f"{url}/metrics", headers={"Authorization": f"Basic {token}"}), 401)
    # An API key is not the metrics token.
    api_error(httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {embedded_service.keys['alice']}"}), 401)
    samples = scrape(url, headers={"Authorization": f"Bearer {token}"})
    assert value(samples, "selfsup_metrics_source_up", source="database") == 1
    assert series(samples, "selfsup_jobs")
    # Without the setting (the session's service), /metrics is open.
    assert httpx.get(f"{embedded_service.base_url}/metrics").status_code == 200
    # /metrics is documented as text, outside /v1.
    operation = httpx.get(f"{url}/openapi.json").json()["paths"]["/metrics"]["get"]
    assert "text/plain" in next(iter(operation["responses"]["200"]["content"]))
