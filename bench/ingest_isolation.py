"""Training while the same machine ingests: a job's tokens/s alone against while a large corpus is uploaded,
ingested and tokenized by the service's cpu worker, through the real service.

One command, from the repository root:

    .venv/bin/python bench/ingest_isolation.py            # --documents 40000 --repeat 2 --threads 2 --nice 10
    .venv/bin/python bench/ingest_isolation.py --documents 4000 --repeat 1     # a quick run

It starts `selfsup up` (embedded default, production-like settings of bench/train_throughput.py, the cpu worker
at `--nice`: SELFSUP_CPU_WORKER_NICE; `--nice 0` shows what the machine does without it; on the cores the
trainer leaves unless `--cpu-worker-threads` says how many: SELFSUP_CPU_WORKER_THREADS), trains the
bench/train_throughput.py job shape (character GPT-2, 4 layers, width 128, `--threads` torch threads) for as
long as the benchmark runs, and measures its tokens/s (from the job's `tokens_seen`) in windows:

- **ingest**: upload a fresh corpus of `--documents` documents (5-60 consecutive lines of tinyshakespeare.txt
  from seeded random places, JSON lines), wait for its ingest, then submit a job on it with a byte-level BPE
  tokenizer (vocab 8192) and wait until the cpu worker has trained the tokenizer and tokenized the corpus
  (the prepare task's log line); that job then waits behind the running one and is cancelled.
- **alone**: nothing else runs, for as long as the ingest window before it took (at least 30 s).

Windows come in the order alone, ingest, ingest, alone, … (so a drift of the machine's speed favours neither);
the verdict is the ratio of pooled tokens/s (goal ≥ 0.8), with each pair's ratio for the spread. The machine's
load average is recorded before and after: other work on the machine makes both sides slower, unevenly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from train_throughput import job_spec, machine, service_env  # noqa: E402

from tests.factories import SHAKESPEARE, ready_corpus, submit_job  # noqa: E402
from tests.service import Service, start_service, wait_until  # noqa: E402

MIN_ALONE_SECONDS = 30.0
POLL_SECONDS = 2.0
TRAIN_STEPS = 10_000_000  # stopped by cancelling it when the benchmark ends


def corpus_bytes(documents: int, seed: int) -> bytes:
    """`documents` JSON lines, each 5-60 consecutive lines of the play from a seeded random place."""
    lines = SHAKESPEARE.read_text().splitlines(keepends=True)
    rng = random.Random(seed)
    out = []
    for _ in range(documents):
        start = rng.randrange(len(lines))
        out.append(json.dumps({"text": "".join(lines[start : start + rng.randint(5, 60)])}))
    return ("\n".join(out) + "\n").encode()


def tokens_seen(client: Any, job_id: str) -> tuple[float, int]:
    """(monotonic time, the training job's tokens_seen) now."""
    body = client.get(f"/v1/jobs/{job_id}").json()
    if body["status"] != "running":
        raise RuntimeError(f"the training job is {body['status']}: {body.get('error')}")
    return time.monotonic(), int(body["tokens_seen"])


def ingest_window(service: Service, client: Any, job_id: str, *, documents: int, seed: int) -> dict[str, Any]:
    """Upload, ingest and tokenize a fresh corpus; the training job's tokens/s meanwhile."""
    data = corpus_bytes(documents, seed)
    t0, n0 = tokens_seen(client, job_id)
    corpus = ready_corpus(client, data, name=f"bench-{seed}.jsonl", content_type="application/jsonl", timeout=3600)
    ingested = time.monotonic()
    spec = job_spec(corpus["id"], 10)
    spec["name"] = "bench-ingest-isolation-tokenize"
    spec["tokenizer"] = {"type": "bpe", "vocab_size": 8192}
    second = submit_job(client, spec)["id"]
    prepared = f"{second}',): dataset "  # the prepare task's log line once the dataset is built

    def tokenized() -> bool:
        log = service.log_path.read_text(errors="replace")
        if f"{second}',): failed" in log:
            raise RuntimeError(f"tokenizing job {second} failed:\n{log[-3000:]}")
        return prepared in log

    wait_until(tokenized, timeout=3600, interval=1.0, what=f"job {second} tokenized")
    t1, n1 = tokens_seen(client, job_id)
    client.post(f"/v1/jobs/{second}/cancel")
    return {
        "kind": "ingest",
        "seconds": t1 - t0,
        "tokens": n1 - n0,
        "tokens_per_second": (n1 - n0) / (t1 - t0),
        "corpus_mb": len(data) / 1e6,
        "ingest_seconds": ingested - t0,
        "tokenize_seconds": t1 - ingested,
    }


def alone_window(client: Any, job_id: str, seconds: float) -> dict[str, Any]:
    """The training job's tokens/s with nothing else to do."""
    t0, n0 = tokens_seen(client, job_id)
    time.sleep(seconds)
    t1, n1 = tokens_seen(client, job_id)
    return {"kind": "alone", "seconds": t1 - t0, "tokens": n1 - n0, "tokens_per_second": (n1 - n0) / (t1 - t0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=2, help="pairs of (alone, ingest) windows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nice", type=int, default=10, help="SELFSUP_CPU_WORKER_NICE")
    parser.add_argument(
        "--cpu-worker-threads",
        type=int,
        default=None,
        help="SELFSUP_CPU_WORKER_THREADS (default: unset, so `selfsup up` gives the cores the trainer leaves)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    env = service_env(args.threads)
    env["SELFSUP_MAX_UPLOAD_BYTES"] = str(1024**3)
    env["SELFSUP_CPU_WORKER_NICE"] = str(args.nice)
    if args.cpu_worker_threads:
        env["SELFSUP_CPU_WORKER_THREADS"] = str(args.cpu_worker_threads)
    env["SELFSUP_LOG_FORMAT"] = "text"
    windows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="selfsup-bench-") as tmp:
        service = start_service(Path(tmp) / "home", extra_env=env, timeout=900)  # a busy machine starts slowly
        try:
            with service.client("alice") as client:
                corpus = ready_corpus(client, SHAKESPEARE.read_bytes(), timeout=600)
                job_id = submit_job(client, job_spec(corpus["id"], TRAIN_STEPS))["id"]
                wait_until(
                    lambda: client.get(f"/v1/jobs/{job_id}").json()["step"] >= 50,
                    timeout=1800,
                    interval=POLL_SECONDS,
                    what="the training job to pass its warm-up",
                )
                last_ingest = MIN_ALONE_SECONDS
                order = ["alone", "ingest", "ingest", "alone"] * ((args.repeat + 1) // 2)
                for i, kind in enumerate(order[: 2 * args.repeat]):
                    if kind == "ingest":
                        window = ingest_window(service, client, job_id, documents=args.documents, seed=i)
                        last_ingest = max(MIN_ALONE_SECONDS, window["seconds"])
                    else:
                        window = alone_window(client, job_id, last_ingest)
                    window["load"] = os.getloadavg()[0]
                    windows.append(window)
                    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in window.items()}))
                client.post(f"/v1/jobs/{job_id}/cancel")
        finally:
            service.stop()

    def pooled(kind: str) -> float:
        chosen = [w for w in windows if w["kind"] == kind]
        return sum(w["tokens"] for w in chosen) / sum(w["seconds"] for w in chosen)

    pairs = [
        windows[i + 1]["tokens_per_second"] / windows[i]["tokens_per_second"]
        if windows[i]["kind"] == "alone"
        else windows[i]["tokens_per_second"] / windows[i + 1]["tokens_per_second"]
        for i in range(0, len(windows) - 1, 2)
    ]
    report = {
        "machine": machine(args.threads),
        "documents": args.documents,
        "cpu_worker_nice": args.nice,
        "cpu_worker_threads": args.cpu_worker_threads or "selfsup up's rule",
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "windows": windows,
        "alone_tokens_per_second": pooled("alone"),
        "ingest_tokens_per_second": pooled("ingest"),
        "ratio": pooled("ingest") / pooled("alone"),
        "pair_ratios": pairs,
        "pair_ratio_median": statistics.median(pairs),
    }
    print(
        f"training tokens/s alone {report['alone_tokens_per_second']:,.0f}, while ingesting "
        f"{report['ingest_tokens_per_second']:,.0f}: ratio {report['ratio']:.3f} (pairs "
        f"{', '.join(f'{p:.3f}' for p in pairs)}); cpu worker nice {args.nice}, "
        f"threads {args.cpu_worker_threads or 'default'}; load "
        f"{load_before[0]:.1f} -> {report['load_after'][0]:.1f}"
    )
    out = args.out or REPO / "bench" / "results" / f"ingest_isolation-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
