"""What one `GET /v1/jobs/{id}` costs the API in CPU time, measured in-process (no sockets, no uvicorn).

    .venv/bin/python bench/api_request_cost.py                  # 2,000 polls, 20 at a time
    .venv/bin/python bench/api_request_cost.py --code /path/to/other/checkout   # the same, with other code

Starts `selfsup up` (embedded default) in a temporary folder for its database, broker and a finished job, then
builds the API application in this process and sends it requests through httpx's ASGI transport. It reports CPU
time per request (all of this process's threads: the app, its worker threads and the client) for the job poll
and for `/healthz` (the middleware alone), and the same with rate limiting off (the broker round trip). CPU time
is less disturbed by other work on a shared machine than rates are, so two versions of the code can be
compared on a busy machine: `--code` runs the app from another checkout against the same service.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from train_throughput import job_spec, service_env  # noqa: E402

from tests.factories import ready_corpus, shakespeare_slice, submit_job, wait_for_job  # noqa: E402
from tests.service import start_service  # noqa: E402

# Runs in a child process with the code under test first on the path.
CHILD = r"""
import asyncio, json, os, sys, time
import httpx
from api.app import create_app

async def measure(path, key, n, concurrency):
    app = create_app()
    async with app.router.lifespan_context(app) as state:
        async def with_state(scope, receive, send):
            scope["state"] = dict(state)  # what uvicorn does with the lifespan's state
            await app(scope, receive, send)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state), base_url="http://api",
                                     headers=headers) as client:
            async def poller(count):
                for _ in range(count):
                    response = await client.get(path)
                    assert response.status_code == 200, response.text
            await poller(50)  # warm-up
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(poller(n // concurrency) for _ in range(concurrency)))
            return 1e6 * (time.process_time() - cpu) / n, 1e6 * (time.perf_counter() - wall) / n

path, key, n, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cpu_us, wall_us = asyncio.run(measure(path, key, n, concurrency))
print(json.dumps({"cpu_us": round(cpu_us), "wall_us": round(wall_us)}))
"""


def measure(code: Path, env: dict[str, str], path: str, key: str, n: int, concurrency: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, path, key, str(n), str(concurrency)],
        env={**env, "PYTHONPATH": f"{code}{os.pathsep}{code / 'client'}"},
        cwd=code,
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--code", type=Path, action="append", help="a checkout to measure (default: this one)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="selfsup-bench-cost-") as tmp:
        service = start_service(Path(tmp) / "home", service_env(threads=1))
        try:
            with service.client() as client:
                corpus = ready_corpus(client, shakespeare_slice(100_000))
                job = submit_job(client, job_spec(corpus["id"], 5))
                wait_for_job(client, job["id"], timeout=300)
            env = {k: v for k, v in service.env.items() if k != "PYTHONPATH"}
            results = []
            for code in args.code or [REPO]:
                row: dict[str, object] = {"code": str(code)}
                for name, path, extra in (
                    ("job_poll", f"/v1/jobs/{job['id']}", {}),
                    ("job_poll_no_rate_limit", f"/v1/jobs/{job['id']}", {"SELFSUP_RATE_LIMIT_PER_SECOND": "0"}),
                    ("healthz", "/healthz", {}),
                ):
                    row[name] = measure(
                        code, {**env, **extra}, path, service.keys["alice"], args.requests, args.concurrency
                    )
                print(json.dumps(row), flush=True)
                results.append(row)
        finally:
            service.stop()
    print(json.dumps({"load_average_before": load_before, "load_average_after": os.getloadavg()}))


if __name__ == "__main__":
    main()
