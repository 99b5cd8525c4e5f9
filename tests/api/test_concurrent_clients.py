"""Many more concurrent clients than database connections and worker threads: the API keeps answering.

Before database admission (api/deps.py) 150 pollers wedged the API: every worker thread waited for a
pooled connection that only another request's next step, itself waiting for a thread, would give back.
No request was answered, and `/healthz` stayed silent long after the clients had gone.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx

from tests.service import Service

# Far above the API's 10 database slots (its kept pooled connections) and AnyIO's 40 worker threads.
CLIENTS = 150
SECONDS = 5.0
# Generous bounds for "answered at all" (a wedged API never answers); not performance figures.
REQUEST_TIMEOUT = 60.0
HEALTH_TIMEOUT = 15.0


async def _load(service: Service, key: str) -> tuple[Counter[str], list[str], Counter[str]]:
    """Poll `GET /v1/jobs` from CLIENTS clients for SECONDS, probing `/healthz` twice a second meanwhile."""
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    health: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=CLIENTS + 5, max_keepalive_connections=CLIENTS + 5)
    headers = {"Authorization": f"Bearer {key}"}
    client = httpx.AsyncClient(base_url=service.base_url, headers=headers, timeout=REQUEST_TIMEOUT, limits=limits)
    async with client as c:
        deadline = time.monotonic() + SECONDS

        async def poll() -> None:
            while time.monotonic() < deadline:
                try:
                    response = await c.get("/v1/jobs", params={"limit": 5})
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                statuses[str(response.status_code)] += 1
                if response.status_code == 503:
                    assert response.headers.get("retry-after"), "a 503 must say when to retry"
                    assert response.json()["error"]["code"] == "unavailable"

        async def probe_health() -> None:
            while time.monotonic() < deadline:
                try:
                    response = await c.get("/healthz", timeout=HEALTH_TIMEOUT)
                    health[str(response.status_code)] += 1
                except httpx.HTTPError as exc:
                    health[type(exc).__name__] += 1
                await asyncio.sleep(0.5)

        await asyncio.gather(*(poll() for _ in range(CLIENTS)), probe_health())
    return statuses, failures, health


def test_api_answers_many_more_clients_than_connections_and_threads(service: Service) -> None:
    statuses, failures, health = asyncio.run(_load(service, service.keys["alice"]))

    assert not failures, f"{len(failures)} requests got no answer, e.g. {failures[:3]}; answered: {dict(statuses)}"
    assert set(statuses) <= {"200", "503"}, f"every request is answered 200, or refused with 503: {dict(statuses)}"
    assert statuses["200"] >= CLIENTS // 2, f"most pollers were served: {dict(statuses)}"
    assert set(health) == {"200"}, f"/healthz answered during the load: {dict(health)}"

    # And afterwards: nothing is left queued behind the departed clients.
    with service.client() as client:
        assert client.get("/healthz", timeout=HEALTH_TIMEOUT).status_code == 200
        assert client.get("/readyz", timeout=HEALTH_TIMEOUT).status_code == 200
        assert client.get("/v1/jobs", timeout=HEALTH_TIMEOUT).status_code == 200
