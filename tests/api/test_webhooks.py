"""Webhooks: signed Standard Webhooks deliveries to a real receiver, retried until answered, recorded, tenant-scoped,
stopped by DELETE, and never sent to private addresses unless the operator allows it."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

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
from tests.service import Service, start_service, wait_until

pytestmark = pytest.mark.integration

ALL_EVENTS = ["job.succeeded", "job.failed", "job.cancelled", "checkpoint.created", "corpus.ready", "corpus.failed"]
FAILED_ATTEMPTS = 2  # the receiver answers 500 to this many attempts of each message, then 200
PUBLIC_URL = "http://93.184.215.14/hooks"  # a public address: accepted (nothing is sent to it in these tests)


@dataclass
class Receiver:
    """A webhook receiver on the loopback that checks every signature, as a client's would."""

    secrets: dict[str, str] = field(default_factory=dict)  # path -> the webhook's secret
    always_fail: set[str] = field(default_factory=set)  # paths that answer 500 to every attempt
    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (path, webhook-id) -> attempts seen
    accepted: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # webhook-id -> payloads answered 200
    hits: Counter[str] = field(default_factory=Counter)  # path -> requests
    bad_signatures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            self.hits[path] += 1
            try:
                payload = Webhook(self.secrets[path]).verify(body, headers)
            except (KeyError, WebhookVerificationError) as exc:
                self.bad_signatures.append(f"{path} {headers.get('webhook-id')}: {exc!r}")
                return 400
            message = (path, headers["webhook-id"])
            self.attempts[message] += 1
            if path in self.always_fail or self.attempts[message] <= FAILED_ATTEMPTS:
                return 500
            self.accepted.setdefault(headers["webhook-id"], []).append(payload)
            return 200

    def events(self) -> dict[str, list[dict[str, Any]]]:
        """The accepted payloads, by event type."""
        with self.lock:
            by_type: dict[str, list[dict[str, Any]]] = {}
            for payloads in self.accepted.values():
                by_type.setdefault(payloads[0]["type"], []).append(payloads[0])
            return by_type


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    """The receiver, serving on 127.0.0.1 in a thread, and its base URL."""
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            status = state.handle(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def webhook_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """selfsup on the embedded default with loopback targets allowed, and retries and sweeps fast."""
    service = start_service(
        tmp_path_factory.mktemp("webhooks") / "home",
        {
            "SELFSUP_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
            "SELFSUP_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
            "SELFSUP_WEBHOOK_SWEEP_INTERVAL_SECONDS": "0.3",
        },
    )
    try:
        yield service
    finally:
        service.stop()


def test_urls_that_reach_private_addresses_are_refused_by_default(embedded_service: Service) -> None:
    client = embedded_service.client("alice")
    refused = {
        "http://127.0.0.1:8000/hook": "loopback",
        "http://169.254.169.254/latest/meta-data": "link-local",
        "http://10.0.0.1/hook": "private",
        "http://[::1]/hook": "loopback",
        "http://localhost:8000/hook": "loopback",  # a name that resolves to the loopback
    }
    for url, kind in refused.items():
        error = api_error(client.post("/v1/webhooks", json={"url": url, "event_types": ["job.succeeded"]}), 422)
        assert kind in error["message"] and "SELFSUP_WEBHOOK_ALLOW_PRIVATE_TARGETS" in error["message"], error
        assert error["details"][0]["field"] == "url", error
    assert not {w["url"] for w in client.get("/v1/webhooks").json()["data"]} & set(refused)


def test_bad_webhook_requests_say_what_to_fix(embedded_service: Service) -> None:
    client = embedded_service.client("alice")
    bad_type = api_error(client.post("/v1/webhooks", json={"url": PUBLIC_URL, "event_types": ["job.done"]}), 422)
    assert all(event in bad_type["message"] for event in ALL_EVENTS), bad_type  # lists the valid ones
    for body, says in (
        ({"url": "ftp://93.184.215.14/x", "event_types": ["job.failed"]}, "http:// or https://"),
        ({"url": "http://" + "a" * 2100 + ".com/", "event_types": ["job.failed"]}, "2048"),
        ({"url": PUBLIC_URL, "event_types": []}, "event_types"),
        ({"url": "http://name.invalid/hook", "event_types": ["job.failed"]}, "does not resolve"),
        ({"event_types": ["job.failed"]}, "url"),
    ):
        assert says in api_error(client.post("/v1/webhooks", json=body), 422)["message"], body


def test_webhooks_are_per_tenant_and_the_secret_is_shown_once(embedded_service: Service) -> None:
    alice, bob = embedded_service.client("alice"), embedded_service.client("bob")
    created = alice.post("/v1/webhooks", json={"url": PUBLIC_URL, "event_types": ["job.failed", "job.failed"]})
    assert created.status_code == 201, created.text
    webhook = created.json()
    try:
        assert webhook["id"].startswith("wh_") and webhook["secret"].startswith("whsec_")
        assert webhook["event_types"] == ["job.failed"] and webhook["url"] == PUBLIC_URL
        shown = alice.get(f"/v1/webhooks/{webhook['id']}").json()
        listed = alice.get("/v1/webhooks").json()["data"]
        assert "secret" not in shown and [w["id"] for w in listed] == [webhook["id"]] and "secret" not in listed[0]
        assert webhook["secret"] not in alice.get(f"/v1/webhooks/{webhook['id']}/deliveries").text
        for path in (f"/v1/webhooks/{webhook['id']}", f"/v1/webhooks/{webhook['id']}/deliveries"):
            assert api_error(bob.get(path), 404)["code"] == "not_found"
        assert bob.delete(f"/v1/webhooks/{webhook['id']}").status_code == 404
        assert bob.get("/v1/webhooks").json()["data"] == []
    finally:
        assert alice.delete(f"/v1/webhooks/{webhook['id']}").status_code == 204
    assert alice.get(f"/v1/webhooks/{webhook['id']}").status_code == 404


def test_every_event_arrives_signed_once_after_retries_and_delete_stops_deliveries(
    webhook_service: Service, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    state, base_url = receiver
    client = webhook_service.client("alice")
    webhook = client.post("/v1/webhooks", json={"url": f"{base_url}/all", "event_types": ALL_EVENTS}).json()
    state.secrets["/all"] = webhook["secret"]
    # A second webhook whose receiver never says yes: deleting it must stop its retries.
    doomed = client.post("/v1/webhooks", json={"url": f"{base_url}/doomed", "event_types": ["corpus.ready"]}).json()
    state.secrets["/doomed"] = doomed["secret"]
    state.always_fail.add("/doomed")

    corpus = ready_corpus(client, shakespeare_slice(30_000))
    tiny = ready_corpus(client, b"To be, or not to be.\n\nThat is the question.\n")
    broken = wait_for_corpus(client, upload_corpus(client, b"\x00binary\x00" * 100, name="bad.txt")["id"])
    assert broken["status"] == "failed"

    wait_until(lambda: state.hits["/doomed"] >= 1, timeout=60, what="a first attempt at the doomed webhook")
    assert client.delete(f"/v1/webhooks/{doomed['id']}").status_code == 204
    hits_at_delete = state.hits["/doomed"]

    succeeded = submit_job(
        client,
        small_job_spec(corpus["id"], training={"max_steps": 4, "warmup_steps": 1}, checkpointing={"every_steps": 2}),
    )
    failed = submit_job(client, small_job_spec(tiny["id"], model={"context_length": 256}))
    cancelled = submit_job(client, small_job_spec(corpus["id"], training={"max_steps": 10_000}))
    assert client.post(f"/v1/jobs/{cancelled['id']}/cancel").status_code in (200, 202)
    for job, status in ((succeeded, "succeeded"), (failed, "failed"), (cancelled, "cancelled")):
        assert wait_for_job(client, job["id"])["status"] == status

    def all_delivered() -> list[dict[str, Any]] | None:
        deliveries = client.get(f"/v1/webhooks/{webhook['id']}/deliveries", params={"limit": 200}).json()["data"]
        types = {d["event_type"] for d in deliveries}
        done = types == set(ALL_EVENTS) and all(d["status"] == "delivered" for d in deliveries)
        return deliveries if done else None

    deliveries = wait_until(all_delivered, timeout=120, what="every event delivered")
    assert state.bad_signatures == []
    # Every message arrived, and was accepted exactly once, under its delivery's id; none twice, none unknown.
    assert {d["id"] for d in deliveries} == set(state.accepted)
    assert all(len(payloads) == 1 for payloads in state.accepted.values()), state.accepted
    for delivery in deliveries:
        assert delivery["attempts"] >= FAILED_ATTEMPTS + 1 and delivery["last_response_code"] == 200, delivery
        assert delivery["delivered_at"] and delivery["next_attempt_at"] is None, delivery
        assert state.attempts[("/all", delivery["id"])] == delivery["attempts"], delivery
        assert state.accepted[delivery["id"]][0] == delivery["payload"], delivery

    events = state.events()
    assert {e["data"]["id"] for e in events["job.succeeded"]} == {succeeded["id"]}
    assert {e["data"]["id"] for e in events["job.failed"]} == {failed["id"]}
    assert {e["data"]["id"] for e in events["job.cancelled"]} == {cancelled["id"]}
    assert {e["data"]["id"] for e in events["corpus.ready"]} == {corpus["id"], tiny["id"]}
    assert {e["data"]["id"] for e in events["corpus.failed"]} == {broken["id"]}
    checkpoints = {c["id"] for c in client.get(f"/v1/jobs/{succeeded['id']}/checkpoints").json()["data"]}
    created = {e["data"]["id"] for e in events["checkpoint.created"] if e["data"]["job_id"] == succeeded["id"]}
    assert checkpoints <= created, (checkpoints, created)
    assert events["job.succeeded"][0]["data"]["status"] == "succeeded" and events["job.succeeded"][0]["timestamp"]

    # The doomed webhook got no attempt after its deletion (one already under way may have landed).
    assert state.hits["/doomed"] <= hits_at_delete + 1, (state.hits, hits_at_delete)
    assert client.get(f"/v1/webhooks/{doomed['id']}/deliveries").status_code == 404


def test_the_receiver_rejects_a_tampered_body(receiver: tuple[Receiver, str]) -> None:
    """The receiver's check is real: a body changed after signing fails verification."""
    state, _ = receiver
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    state.secrets["/x"] = secret
    body = json.dumps({"type": "job.succeeded", "data": {"id": "job_1"}})
    now = datetime.now(UTC)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign("msg_1", now, body),
    }
    assert state.handle("/x", headers, body.encode()) == 500  # verified; its first attempt is answered 500
    assert state.handle("/x", headers, body.replace("job_1", "job_2").encode()) == 400
    assert len(state.bad_signatures) == 1
