"""Which gpu workers are connected and how many devices each trains on, so that a job none of them fits says why
it waits.

A gpu worker announces itself in the broker: a key per worker (`selfsup:trainer:<host:pid>`, its device count as
the value) that it renews from a thread and that expires a lease after it stops renewing it (a worker SIGKILLed or
cut off drops out of the fleet on its own). The reconciler reads the fleet to tell a job that needs more devices
than any connected worker has (`workers/tasks.py`); the wake-ups themselves go through the training queues
(`workers/celery_app.training_queue`), which only a worker the job fits consumes.
"""

from __future__ import annotations

import logging
import threading

import redis

from selfsup.broker import broker_url
from selfsup.settings import Settings

log = logging.getLogger(__name__)

_PREFIX = "selfsup:trainer:"


def _client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(broker_url(settings), socket_timeout=5, socket_connect_timeout=5)


def announce(identity: str, devices: int, settings: Settings) -> threading.Event:
    """Keep this gpu worker in the fleet, from a daemon thread, until the returned event is set (then leave it)."""
    key, ttl = f"{_PREFIX}{identity}", max(1, round(settings.lease_seconds))
    stop = threading.Event()

    def renew() -> None:
        client = _client(settings)
        try:
            while True:
                try:
                    client.set(key, devices, ex=ttl)
                except redis.RedisError:  # the broker is away: the key expires, and comes back with the broker
                    log.warning("could not announce this gpu worker to the broker", exc_info=True)
                if stop.wait(ttl / 3):
                    client.delete(key)
                    return
        finally:
            client.close()

    threading.Thread(target=renew, name="fleet-announce", daemon=True).start()
    return stop


def largest_worker_devices(settings: Settings) -> int | None:
    """The most devices any connected gpu worker has, or None when none is connected."""
    client = _client(settings)
    try:
        keys = list(client.scan_iter(match=f"{_PREFIX}*", count=1000))
        values = client.mget(keys) if keys else []
    finally:
        client.close()
    counts = [int(v) for v in values if v is not None]
    return max(counts) if counts else None
