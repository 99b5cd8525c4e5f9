"""`GET /v1/jobs/{id}/stream`: a job's status, events and metrics live, resumable with Last-Event-ID."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from tests.factories import api_error, ready_corpus, small_job_spec, submit_job, wait_for_job
from tests.service import Service

pytestmark = pytest.mark.integration

FINISHED = {"succeeded", "failed", "cancelled"}


def _read(
    client: httpx.Client, job_id: str, *, last_event_id: str | None = None, stop_after_metrics: int | None = None
) -> list[ServerSentEvent]:
    """A stream's messages until it closes, or until it has sent `stop_after_metrics` metrics (then hang up)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    messages: list[ServerSentEvent] = []
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/stream", headers=headers) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for message in source.iter_sse():
            messages.append(message)
            if stop_after_metrics and sum(m.event == "metric" for m in messages) >= stop_after_metrics:
                break
    return messages


def _order(message_id: str) -> tuple[int, ...]:
    """The documented order of ids: their three numbers, compared as a tuple."""
    return tuple(int(part) for part in message_id.split(".")[:3])


def _data(messages: list[ServerSentEvent], event: str) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in messages if m.event == event]


def test_stream_resumes_with_last_event_id_and_misses_nothing(embedded_service: Service) -> None:
    alice = embedded_service.client("alice")
    corpus = ready_corpus(alice)
    # Metrics at steps 1, 10, 20, 30, 40 and evaluations at 20 and 40: several points on each side of the cut.
    job = submit_job(alice, small_job_spec(corpus["id"]))

    # The job is queued: this stream follows it through the shared feed. Hang up after the first metrics.
    first = _read(alice, job["id"], stop_after_metrics=3)
    assert first[0].event == "status" and json.loads(first[0].data)["id"] == job["id"]
    assert json.loads(first[0].data)["status"] in ("queued", "running")
    second = _read(alice, job["id"], last_event_id=first[-1].id)

    messages = first + second
    assert all(m.id and m.event in ("status", "event", "metric", "end") for m in messages)
    orders = [_order(m.id) for m in messages]
    assert all(a < b for a, b in zip(orders, orders[1:], strict=False)), [m.id for m in messages]

    assert second[-1].event == "end" and [m.event for m in messages].count("end") == 1
    final = alice.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "succeeded", embedded_service.log()
    assert json.loads(second[-1].data) == final
    statuses = _data(messages, "status")
    assert statuses[-1] == final  # the terminal status, before `end`
    assert all(a["status"] != b["status"] for a, b in zip(statuses, statuses[1:], strict=False))

    # Together the two connections sent every event and every metric exactly once.
    assert _data(messages, "event") == alice.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    metrics = alice.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
    streamed = _data(messages, "metric")
    assert len(streamed) == len(metrics) and len(metrics) > 20
    assert sorted(streamed, key=lambda m: (m["step"], m["name"])) == metrics

    # A stream opened on an ended job replays it and ends; one resumed from `end` sends only `end`.
    replay = _read(alice, job["id"])
    assert [m.event for m in replay][0] == "status" and replay[-1].event == "end"
    assert _data(replay, "event") == _data(messages, "event")
    assert sorted(_data(replay, "metric"), key=lambda m: (m["step"], m["name"])) == metrics
    again = _read(alice, job["id"], last_event_id=replay[-1].id)
    assert [m.event for m in again] == ["end"] and _order(again[0].id) > _order(replay[-1].id)

    # The query parameter works as the header does.
    response = alice.get(f"/v1/jobs/{job['id']}/stream", params={"last_event_id": replay[-1].id})
    assert response.status_code == 200 and response.text.count("event: end") == 1
    assert "event: metric" not in response.text and "event: status" not in response.text


def test_stream_refuses_other_tenants_and_bad_ids(embedded_service: Service) -> None:
    alice, bob = embedded_service.client("alice"), embedded_service.client("bob")
    corpus = ready_corpus(alice)
    job = submit_job(alice, small_job_spec(corpus["id"], training={"max_steps": 5}, checkpointing={"every_steps": 5}))
    assert api_error(bob.get(f"/v1/jobs/{job['id']}/stream"), 404)["code"] == "not_found"
    assert api_error(alice.get("/v1/jobs/job_nope/stream"), 404)["code"] == "not_found"
    assert api_error(httpx.get(f"{embedded_service.base_url}/v1/jobs/{job['id']}/stream"), 401)
    for bad in ("banana", "1.2.3", "1.2.3.exploded", "-1.2.3.running", "1.2.3.running.4", "9" * 40 + ".0.0.queued"):
        error = api_error(alice.get(f"/v1/jobs/{job['id']}/stream", headers={"Last-Event-ID": bad}), 400)
        assert "Last-Event-ID" in error["message"] and "not an id this stream sent" in error["message"], error
        error = api_error(alice.get(f"/v1/jobs/{job['id']}/stream", params={"last_event_id": bad}), 400)
        assert "last_event_id" in error["message"], error
    done = wait_for_job(alice, job["id"])
    assert _read(alice, job["id"])[-1].event == "end", done
