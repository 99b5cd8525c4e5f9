"""The API under load while a job trains: many pollers of `GET /v1/jobs/{id}`, bounded in time, loopback only.

    .venv/bin/python bench/api_load.py                  # 200 pollers, 30 s, two alternating rounds
    .venv/bin/python bench/api_load.py --clients 100 --seconds 10 --rounds 1
    .venv/bin/python bench/api_load.py --api-nice 10       # the API at nice 10 (SELFSUP_API_NICE)
    .venv/bin/python bench/api_load.py --no-training       # the API alone: a finished job is polled
    .venv/bin/python bench/api_load.py --client httpx      # the earlier generator (25-70x the CPU per request)

Starts `selfsup up` on the embedded default (SQLite, embedded Valkey) in a temporary folder, trains the
throughput benchmark's job (made long), and alternates quiet windows (no clients) with load windows (N async
`aiohttp` clients, or `httpx` ones with `--client httpx`, polling the job as fast as they are answered). Reports
requests/s, latency percentiles, errors,
`/healthz` during the load, and the job's tokens/s in each window (from its own `tokens_per_second`
metric), so the load's cost to training is a ratio measured in the same run. It also reports the CPU time the
API process and the load generator spent per request (from /proc and getrusage: less disturbed by other work on
the machine than rates are), and the load average before and after. Results go to
bench/results/api_load-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from train_throughput import job_spec, service_env  # noqa: E402

from tests.factories import ready_corpus, shakespeare_slice, submit_job, wait_for_job  # noqa: E402
from tests.service import Service, start_service, wait_until  # noqa: E402


def _children(pid: int) -> list[int]:
    """The ids of `pid`'s child processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def api_pid(service: Service) -> int:
    """The API process that `selfsup up` started."""
    assert service.process is not None
    [pid] = [
        p
        for p in _children(service.process.pid)
        if b" api " in Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")
    ]
    return pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class _Clients:
    """One load generator's connection pool: `get(path, timeout)` answers a status code or raises `errors`."""

    errors: tuple[type[BaseException], ...]

    def __init__(self, kind: str, base_url: str, key: str, clients: int) -> None:
        self.kind = kind
        headers = {"Authorization": f"Bearer {key}"}
        if kind == "aiohttp":
            self.errors = (aiohttp.ClientError, asyncio.TimeoutError)
            self.session = aiohttp.ClientSession(
                base_url=base_url,
                headers=headers,
                connector=aiohttp.TCPConnector(limit=clients + 5),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        else:
            self.errors = (httpx.HTTPError,)
            limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
            self.client = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30, limits=limits)

    async def get(self, path: str, timeout: float = 30) -> int:
        if self.kind == "aiohttp":
            async with self.session.get(path, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                await response.read()
                return response.status
        return (await self.client.get(path, timeout=timeout)).status_code

    async def close(self) -> None:
        await (self.session.close() if self.kind == "aiohttp" else self.client.aclose())


async def poll(
    service: Service, key: str, job_id: str, clients: int, seconds: float, kind: str = "aiohttp"
) -> dict[str, Any]:
    """`clients` pollers of one job for `seconds`; `/healthz` probed twice a second meanwhile."""
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    health: list[float] = []
    pool = _Clients(kind, service.base_url, key, clients)
    try:
        start = time.monotonic()
        deadline = start + seconds

        async def poller() -> None:
            while time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    statuses[str(await pool.get(f"/v1/jobs/{job_id}"))] += 1
                except pool.errors as exc:
                    statuses[type(exc).__name__] += 1
                latencies.append(time.monotonic() - sent)

        async def probe() -> None:
            while time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    await pool.get("/healthz", timeout=10)
                    health.append(time.monotonic() - sent)
                except pool.errors:
                    health.append(float("inf"))
                await asyncio.sleep(0.5)

        api_cpu, own_cpu = cpu_seconds(api_pid(service)), own_cpu_seconds()
        await asyncio.gather(*(poller() for _ in range(clients)), probe())
        elapsed = time.monotonic() - start
        api_cpu, own_cpu = cpu_seconds(api_pid(service)) - api_cpu, own_cpu_seconds() - own_cpu
    finally:
        await pool.close()
    ok = statuses.get("200", 0)
    requests = max(1, sum(statuses.values()))
    return {
        "client": kind,
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": sum(statuses.values()),
        "requests_per_second": round(sum(statuses.values()) / elapsed, 1),
        "ok_per_second": round(ok / elapsed, 1),
        "statuses": dict(statuses),
        "errors": sum(v for k, v in statuses.items() if k != "200"),
        "p50_ms": round(1000 * percentile(latencies, 0.50), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "max_ms": round(1000 * max(latencies, default=float("nan")), 1),
        "healthz_max_ms": round(1000 * max(health, default=float("nan")), 1),
        "api_cpu_ms_per_request": round(1000 * api_cpu / requests, 3),
        "api_cpu_share": round(api_cpu / elapsed, 2),
        "client_cpu_ms_per_request": round(1000 * own_cpu / requests, 3),
        "load_average_after": round(os.getloadavg()[0], 2),
    }


def tokens_per_second(client: httpx.Client, job_id: str, since: datetime, until: datetime) -> float:
    """The median of the job's own `tokens_per_second` points recorded between `since` and `until`."""
    points = client.get(f"/v1/jobs/{job_id}/metrics", params={"name": "tokens_per_second"}).json()["data"]
    window = [p["value"] for p in points if since <= datetime.fromisoformat(p["time"]) <= until]
    return statistics.median(window) if window else float("nan")


def quiet(seconds: float) -> None:
    """A window with no clients."""
    time.sleep(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2, help="quiet/load pairs, alternating which goes first")
    parser.add_argument("--api-nice", type=int, default=None, help="SELFSUP_API_NICE for the API (default: its own)")
    parser.add_argument(
        "--client",
        choices=("aiohttp", "httpx"),
        default="aiohttp",
        help="the load generator's HTTP client: aiohttp (default) costs a fraction of httpx's CPU per request, and "
        "the generator shares the machine's cores with the API and the trainer",
    )
    parser.add_argument(
        "--no-training", action="store_true", help="poll a finished job, nothing training: the API's own figures"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()

    env = service_env(threads=2)
    if args.api_nice is not None:
        env["SELFSUP_API_NICE"] = str(args.api_nice)
    with tempfile.TemporaryDirectory(prefix="selfsup-bench-api-") as tmp:
        service = start_service(Path(tmp) / "home", env)
        try:
            with service.client() as client:
                corpus = ready_corpus(client, shakespeare_slice(400_000))
                if args.no_training:
                    rounds = [untrained(service, client, corpus["id"], args) for _ in range(args.rounds)]
                    report(args, load_before, rounds)
                    return
                # The throughput benchmark's job, long enough to outlast the windows (it is cancelled at the end).
                job = submit_job(client, job_spec(corpus["id"], 1_000_000))
                wait_until(
                    lambda: client.get(f"/v1/jobs/{job['id']}/metrics", params={"name": "tokens_per_second"}).json()[
                        "data"
                    ],
                    timeout=300,
                    what="the job's first tokens/s point",
                )
                rounds = []
                for r in range(args.rounds):
                    result: dict[str, Any] = {}
                    order = ("quiet", "load") if r % 2 == 0 else ("load", "quiet")
                    for phase in order:
                        since = datetime.now(UTC)
                        if phase == "quiet":
                            quiet(args.seconds)
                        else:
                            result["load"] = asyncio.run(
                                poll(service, service.keys["alice"], job["id"], args.clients, args.seconds, args.client)
                            )
                        time.sleep(1.5)  # the trainer flushes its metrics every second
                        result[f"{phase}_tokens_per_second"] = tokens_per_second(
                            client, job["id"], since, datetime.now(UTC)
                        )
                    result["training_ratio_under_load"] = round(
                        result["load_tokens_per_second"] / result["quiet_tokens_per_second"], 3
                    )
                    result["order"] = "-".join(order)
                    rounds.append(result)
                    print(json.dumps(result), flush=True)
                client.post(f"/v1/jobs/{job['id']}/cancel")
                wait_for_job(client, job["id"], timeout=120)
        finally:
            service.stop()

    report(args, load_before, rounds)


def untrained(service: Service, client: httpx.Client, corpus_id: str, args: argparse.Namespace) -> dict[str, Any]:
    """One load window on a job that has finished: what the API does with the machine to itself."""
    job = submit_job(client, job_spec(corpus_id, 20))
    wait_for_job(client, job["id"], timeout=300)
    polled = poll(service, service.keys["alice"], job["id"], args.clients, args.seconds, args.client)
    result = {"load": asyncio.run(polled)}
    print(json.dumps(result), flush=True)
    return result


def report(args: argparse.Namespace, load_before: tuple[float, float, float], rounds: list[dict[str, Any]]) -> None:
    """Write the results file."""
    report = {
        "benchmark": "api_load",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "args": vars(args),
        "rounds": rounds,
    }
    out = REPO / "bench" / "results" / f"api_load-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
