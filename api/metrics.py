"""The Prometheus metrics of `GET /metrics`.

Two kinds: what the API process counts itself (requests by route template and status, their latency,
and the process's own CPU and memory), kept in `REGISTRY`; and what lives in the database and the
broker (jobs and corpora by status, running jobs' throughput and checkpoints, queue depths), read at
scrape time into a snapshot that `SnapshotCollector` turns into metric families.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from storage.crud import OperationsSnapshot

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

REQUESTS = Counter(
    "selfsup_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
REQUEST_LATENCY = Histogram(
    "selfsup_http_request_duration_seconds",
    "Time from a request's arrival to its response's status and headers, by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)

# The metric rows a trainer writes that a scrape reports for each running job: (row name, metric, help).
RUNNING_JOB_METRICS = (
    ("tokens_per_second", "selfsup_job_tokens_per_second", "Training throughput over the last logging window."),
    ("step_seconds", "selfsup_job_step_seconds", "Seconds per optimizer step over the last logging window."),
    (
        "checkpoint_write_seconds",
        "selfsup_job_checkpoint_write_seconds",
        "Seconds the job's newest checkpoint took to write (files, fsync, rename).",
    ),
    ("checkpoint_bytes", "selfsup_job_checkpoint_bytes", "Size of the job's newest checkpoint, resume state included."),
)
METRIC_ROW_NAMES = tuple(row for row, _, _ in RUNNING_JOB_METRICS)


@dataclass(frozen=True)
class Scrape:
    """What one scrape read outside the API process; None where that source did not answer."""

    database: OperationsSnapshot | None
    queue_depths: dict[str, int] | None


class SnapshotCollector(Collector):
    """Metric families of one scrape's snapshot of the database and the broker."""

    def __init__(self, scrape: Scrape) -> None:
        self.scrape = scrape

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "selfsup_metrics_source_up",
            "1 if this scrape could read the source (database, broker), else 0 and its series are missing.",
            labels=["source"],
        )
        up.add_metric(["database"], float(self.scrape.database is not None))
        up.add_metric(["broker"], float(self.scrape.queue_depths is not None))
        yield up
        if self.scrape.queue_depths is not None:
            depth = GaugeMetricFamily(
                "selfsup_queue_depth", "Tasks waiting in the broker, by Celery queue.", labels=["queue"]
            )
            for queue, n in sorted(self.scrape.queue_depths.items()):
                depth.add_metric([queue], n)
            yield depth
        snapshot = self.scrape.database
        if snapshot is None:
            return
        yield _by_status("selfsup_jobs", "Jobs by status.", snapshot.jobs_by_status)
        yield _by_status("selfsup_corpora", "Uploaded corpora by ingest status.", snapshot.corpora_by_status)
        yield _by_status(
            "selfsup_corpus_ingest_bytes",
            "Bytes of uploaded corpora by ingest status (ready: ingested; processing: being ingested).",
            snapshot.corpus_bytes_by_status,
        )
        for row, name, documentation in RUNNING_JOB_METRICS:
            family = GaugeMetricFamily(name, f"Running jobs: {documentation}", labels=["job_id", "tenant"])
            for job in snapshot.running_jobs:
                if row in job.latest:
                    family.add_metric([job.job_id, job.tenant], job.latest[row])
            yield family


def _by_status(name: str, documentation: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["status"])
    for status, value in sorted(values.items()):
        family.add_metric([status], value)
    return family


class _ScrapeCollector(Collector):
    """The process's own metrics, then the scrape's snapshot: one registry for one exposition."""

    def __init__(self, scrape: Scrape) -> None:
        self.snapshot = SnapshotCollector(scrape)

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        yield from self.snapshot.collect()


def render(scrape: Scrape, accept: str) -> tuple[bytes, str]:
    """The exposition (Prometheus text, or OpenMetrics if `accept` asks for it) and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ScrapeCollector(scrape))
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
