"""Quotas (each at its limit and one over, `GET /v1/usage`, `selfsup quotas set|show`, the operator's
`/v1/tenants/{name}/quotas`) and the order a free trainer takes waiting jobs in: priority, fair share, age."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import httpx

from tests.factories import api_error, ready_corpus, shakespeare_slice, small_job_spec, submit_job, wait_for_job
from tests.service import REPO, SELFSUP, Service, wait_until

# A job of a few steps: the order of the runs is what is measured, not what they learn.
TINY = {
    "training": {"max_steps": 3, "batch_size": 2, "warmup_steps": 1},
    "evaluation": {"every_steps": 3, "batches": 1},
    "checkpointing": {"every_steps": 3, "keep_last": 1},
}


def _tenant(service: Service, prefix: str) -> tuple[str, httpx.Client]:
    """A fresh tenant (its device-seconds and jobs are this test's alone) and a client with its key."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    service.create_key(name)
    return name, service.client(name)


def _operator(service: Service) -> httpx.Client:
    """A client with an admin key of the operator tenant (SELFSUP_OPERATOR_TENANT, default `operator`)."""
    if "operator" not in service.keys:
        service.keys["operator"] = service.create_key("operator", "--scope", "admin")
    return service.client("operator")


def _quotas(service: Service, *args: str) -> str:
    """`selfsup quotas ...`, as an operator runs it; its output."""
    out = subprocess.run([*SELFSUP, "quotas", *args], env=service.env, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _put_quotas(service: Service, tenant: str, **quotas: Any) -> dict[str, Any]:
    response = _operator(service).put(f"/v1/tenants/{tenant}/quotas", json=quotas)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _usage(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/v1/usage")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _quota_refusal(response: httpx.Response, quota: str, limit: Any, used: Any) -> None:
    error = api_error(response, 403)
    assert error["code"] == "quota_exceeded", error
    assert error["details"] == {"quota": quota, "limit": limit, "used": used}, error
    assert quota in error["message"], error


def _prepared(service: Service, job_id: str) -> bool:
    """Whether the cpu worker tokenized the job's data and woke a trainer for it."""
    return f"selfsup.prepare_job('{job_id}',): dataset" in service.log_path.read_text(errors="replace")


def test_quotas_are_set_and_shown_by_the_cli_and_an_operator_key(embedded_service: Service) -> None:
    name, client = _tenant(embedded_service, "quota-cli")
    shown = _quotas(
        embedded_service,
        "set",
        "--tenant",
        name,
        "--max-running-jobs",
        "2",
        "--max-queued-jobs",
        "10",
        "--max-storage-bytes",
        "10G",
        "--max-upload-bytes",
        "1G",
        "--max-job-tokens",
        "1e9",
    )
    assert "max_queued_jobs: 10, used 0" in shown, shown
    assert "max_storage_bytes: 10000000000, used 0" in shown, shown
    assert "allow_high_priority: no" in shown, shown
    # `set` keeps what it is not given; `none` puts one back to the service default (unlimited here).
    shown = _quotas(embedded_service, "set", "--tenant", name, "--max-upload-bytes", "none", "--allow-high-priority")
    assert "max_upload_bytes: unlimited (service default), used 0" in shown, shown
    assert "max_job_tokens: 1000000000, used 0" in _quotas(embedded_service, "show", "--tenant", name)  # kept

    operator = _operator(embedded_service)
    body = operator.get(f"/v1/tenants/{name}/quotas").json()
    assert body == {
        "tenant": name,
        "max_running_jobs": 2,
        "max_queued_jobs": 10,
        "max_storage_bytes": 10_000_000_000,
        "max_upload_bytes": None,
        "max_job_tokens": 1_000_000_000,
        "allow_high_priority": True,
    }
    usage = _usage(client)
    assert usage["quotas"]["max_running_jobs"] == {"limit": 2, "used": 0}
    assert usage["quotas"]["max_upload_bytes"] == {"limit": None, "used": 0}
    assert usage["allow_high_priority"] is True
    # A tenant's own key is no operator's: it can neither read nor set quotas.
    assert api_error(client.put(f"/v1/tenants/{name}/quotas", json={"max_queued_jobs": 99}), 403)
    assert api_error(client.get(f"/v1/tenants/{name}/quotas"), 403)
    assert api_error(operator.get("/v1/tenants/no-such-tenant/quotas"), 404)
    assert api_error(operator.put(f"/v1/tenants/{name}/quotas", json={"max_queued_jobs": -1}), 422)


def test_job_quotas_queued_running_tokens_and_priority(embedded_service: Service) -> None:
    name, client = _tenant(embedded_service, "quota-jobs")
    corpus = ready_corpus(client, shakespeare_slice(20_000))
    spec = small_job_spec(corpus["id"], **TINY)
    tokens = client.post("/v1/jobs:estimate", json=spec).json()["total_tokens"]
    # No running slot at all: jobs are accepted but stay queued; two may queue, the third is refused.
    _put_quotas(embedded_service, name, max_running_jobs=0, max_queued_jobs=2, max_job_tokens=tokens)
    first, second = submit_job(client, spec), submit_job(client, spec)
    _quota_refusal(client.post("/v1/jobs", json=spec), "max_queued_jobs", 2, 2)
    # One token over the job-size quota is refused (at it, accepted: the two jobs above).
    longer = small_job_spec(corpus["id"], **{**TINY, "training": {**TINY["training"], "max_steps": 4}})
    _quota_refusal(client.post("/v1/jobs", json=longer), "max_job_tokens", tokens, tokens * 4 // 3)
    _quota_refusal(client.post("/v1/jobs", json={**spec, "priority": "high"}), "allow_high_priority", False, True)
    usage = _usage(client)["quotas"]
    assert usage["max_queued_jobs"] == {"limit": 2, "used": 2}
    assert usage["max_running_jobs"] == {"limit": 0, "used": 0}
    assert usage["max_job_tokens"] == {"limit": tokens, "used": 0}

    # Prepared and woken, the jobs still wait: a trainer does not claim a job over its tenant's running quota.
    wait_until(lambda: _prepared(embedded_service, first["id"]), timeout=120, what="the first job prepared")
    wait_until(
        lambda: f"selfsup.train_job('{first['id']}',): not claimed" in embedded_service.log_path.read_text(),
        timeout=60,
        what="a trainer woken for the first job to leave it",
    )
    assert client.get(f"/v1/jobs/{first['id']}").json()["status"] == "queued"
    # (That a job at the running quota's limit runs, and the next when a slot frees, tests/storage/test_claim_order.py
    # shows without training.)
    for job in (first, second):
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202


def test_storage_and_upload_quotas(embedded_service: Service) -> None:
    name, client = _tenant(embedded_service, "quota-bytes")
    _put_quotas(embedded_service, name, max_storage_bytes=1500, max_upload_bytes=1000)
    text = b"to be or not to be\n" * 100  # 2,000 bytes

    def upload(n: int) -> httpx.Response:
        return client.post(
            "/v1/corpora", params={"name": "t.txt"}, content=text[:n], headers={"Content-Type": "text/plain"}
        )

    _quota_refusal(upload(1001), "max_upload_bytes", 1000, 1001)  # one byte over one upload's quota
    assert upload(1000).status_code == 201  # at it
    # 1,000 of 1,500 bytes stored: 600 more would pass the storage quota, 500 reach it.
    _quota_refusal(upload(600), "max_storage_bytes", 1500, 1000)
    assert upload(500).status_code == 201
    assert _usage(client)["quotas"]["max_storage_bytes"] == {"limit": 1500, "used": 1500}
    _quota_refusal(upload(1), "max_storage_bytes", 1500, 1500)  # full: refused before a byte is read
    assert len(client.get("/v1/corpora").json()["data"]) == 2  # nothing of the refused uploads was kept


def test_a_free_trainer_takes_priority_then_fair_share_then_age(embedded_service: Service) -> None:
    service = embedded_service
    _, a = _tenant(service, "share-a")
    _, b = _tenant(service, "share-b")
    c_name, c = _tenant(service, "share-c")
    _put_quotas(service, c_name, allow_high_priority=True)
    corpora = {client: ready_corpus(client, shakespeare_slice(20_000))["id"] for client in (a, b, c)}

    # A's long job holds the one trainer while the queue fills; its seconds count against A's fair share.
    blocker_spec = small_job_spec(
        corpora[a],
        training={"max_steps": 200_000},
        evaluation={"every_steps": 100_000},
        checkpointing={"every_steps": 100_000, "keep_last": 1},
    )
    blocker = submit_job(a, blocker_spec)
    wait_until(lambda: a.get(f"/v1/jobs/{blocker['id']}").json()["status"] == "running", timeout=120, what="blocker")
    a_jobs = [submit_job(a, small_job_spec(corpora[a], **TINY, name=f"a{i}")) for i in range(4)]
    b_job = submit_job(b, small_job_spec(corpora[b], **TINY, name="b"))
    c_job = submit_job(c, small_job_spec(corpora[c], **TINY, name="c", priority="high"))
    waiting = [*a_jobs, b_job, c_job]
    wait_until(lambda: all(_prepared(service, j["id"]) for j in waiting), timeout=180, what="all jobs prepared")
    assert a.post(f"/v1/jobs/{blocker['id']}/cancel").status_code == 202

    clients = {j["id"]: (a if j in a_jobs else b if j is b_job else c) for j in waiting}
    finished = [wait_for_job(clients[j["id"]], j["id"], timeout=300) for j in waiting]
    assert all(j["status"] == "succeeded" for j in finished), [(j["name"], j["status"], j["error"]) for j in finished]
    order = [j["name"] for j in sorted(finished, key=lambda j: j["started_at"])]
    # High priority first; then B, who used no device-seconds, before A, who did; A's own in the order it sent them.
    assert order == ["c", "b", "a0", "a1", "a2", "a3"], order
    assert _usage(a)["device_seconds"] > _usage(b)["device_seconds"] > 0
