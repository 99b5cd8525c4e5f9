"""Time from submitting a job to its first training step, with a warm worker and a prepared dataset.

One command, from the repository root:

    .venv/bin/python bench/first_step.py [--jobs 10] [--threads 2] [--out FILE]

Starts `selfsup up` on the embedded default in a fresh SELFSUP_HOME, uploads tiny Shakespeare and trains
one small job to the end (that tokenizes the dataset and warms the training worker: imports, the first
model), then submits `--jobs` more jobs of the same spec (`training.compile: false`) one at a time, each
after the previous has finished. For each: the job's `created_at` (the submit, as the API stamped it),
its `started_at` (claimed by the worker) and the time of its step-1 metric row (written when step 1 has
finished, in the worker's clock; same machine). Reports each and the median; the goal is under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.train_throughput import machine, service_env  # noqa: E402
from tests.factories import SHAKESPEARE, ready_corpus, submit_job, wait_for_job  # noqa: E402
from tests.service import start_service  # noqa: E402


def job_spec(corpus_id: str) -> dict[str, Any]:
    """A short job on the benchmark shape of bench/train_throughput.py, never compiled."""
    return {
        "name": "bench-first-step",
        "corpus_ids": [corpus_id],
        "objective": {"type": "causal_lm"},
        "tokenizer": {"type": "char"},
        "model": {"family": "gpt2", "layers": 4, "heads": 4, "width": 128, "context_length": 64},
        "training": {"max_steps": 5, "batch_size": 12, "precision": "fp32", "compile": False},
        "evaluation": {"every_steps": 100_000, "batches": 1},
        "checkpointing": {"every_steps": 100_000, "keep_last": 1},
    }


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def main(argv: list[str] | None = None) -> int:
    """Run the jobs, print each one's timings and the medians, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out: Path = args.out or REPO / "bench" / "results" / f"first_step-{datetime.now():%Y%m%d-%H%M%S}.json"
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="selfsup-first-step-") as scratch:
        service = start_service(Path(scratch) / "home", extra_env=service_env(args.threads))
        try:
            with service.client("alice") as client:
                corpus = ready_corpus(client, SHAKESPEARE.read_bytes(), timeout=600)
                warm = wait_for_job(client, submit_job(client, job_spec(corpus["id"]))["id"], timeout=600)
                if warm["status"] != "succeeded":
                    raise RuntimeError(f"the warm-up job ended {warm['status']}: {warm.get('error')}")
                for i in range(args.jobs):
                    job = wait_for_job(client, submit_job(client, job_spec(corpus["id"]))["id"], timeout=600)
                    if job["status"] != "succeeded":
                        raise RuntimeError(f"job ended {job['status']}: {job.get('error')}")
                    points = client.get(f"/v1/jobs/{job['id']}/metrics", params={"name": "train_loss"}).json()
                    first = min(points["data"], key=lambda p: p["step"])
                    created = _time(job["created_at"])
                    run = {
                        "submit_to_claimed_seconds": (_time(job["started_at"]) - created).total_seconds(),
                        "submit_to_first_step_seconds": (_time(first["time"]) - created).total_seconds(),
                    }
                    runs.append(run)
                    print(f"[{i + 1}/{args.jobs}] " + ", ".join(f"{k} {v:.3f}" for k, v in run.items()), flush=True)
        finally:
            service.stop()
    report = {
        "benchmark": "first_step",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "job_spec": job_spec("<corpus>"),
        "machine": machine(args.threads),
        "loadavg_before": loadavg_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
        "median_submit_to_claimed_seconds": statistics.median(r["submit_to_claimed_seconds"] for r in runs),
        "median_submit_to_first_step_seconds": statistics.median(r["submit_to_first_step_seconds"] for r in runs),
    }
    print(
        f"\nmedian submit → claimed {report['median_submit_to_claimed_seconds']:.3f} s, submit → first step "
        f"{report['median_submit_to_first_step_seconds']:.3f} s (goal < 2 s); load average "
        f"{report['loadavg_before']} → {report['loadavg_after']}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
