"""Representation probes over a masked-LM run: does held-out probe accuracy rise over the checkpoints, above the
same probe of the random-init model?

One command, from the repository root:

    .venv/bin/python bench/probes.py [--steps 400] [--checkpoints 5] [--per-play 300] [--layers 4] [--width 128]
                                     [--batch 16] [--threads 2] [--keep-home] [--out FILE]

1. The labelled task, from real text: which of two plays of tiny Shakespeare a speech comes from, *Romeo and
   Juliet* or *The Taming of the Shrew* (`tests/factories.py: play_speeches`: the speeches of each play's main
   speakers, at least 80 characters, the speaker's name line removed), `--per-play` of each. Uploaded with
   `POST /v1/labelled-sets`.
2. Through the real service (`selfsup up`, embedded, in a fresh temporary home): all of tiny Shakespeare as
   the corpus, and a masked-LM job (BERT, `--layers` 4, 4 heads, `--width` 128, context 64, WordPiece 2,048,
   `--batch` 16, lr 1e-3) of `--steps` steps with `--checkpoints` evenly spaced checkpoints and
   `"probes": [{"labelled_set_id": ..., "name": "play"}]`.
3. The service probes each checkpoint on its cpu queue (mean-pooled last hidden states, scikit-learn's
   logistic regression on 80% of the speeches, accuracy on the other 20%, split by a hash of each text per
   label), plus the random-init model of the job's shape and seed at step 0. The bench waits for every probe
   run and prints `probe_accuracy/play` per step, with the held-out count and the job's val_loss there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.train_throughput import machine  # noqa: E402
from tests.factories import (  # noqa: E402
    SHAKESPEARE,
    labelled_set_jsonl,
    play_speeches,
    ready_corpus,
    upload_labelled_set,
)
from tests.service import Service, start_service, wait_until  # noqa: E402


def word_order_examples(speeches: list[dict[str, str]]) -> list[dict[str, str]]:
    """`--task order`: every other speech as written ("natural"), the rest with their words shuffled ("shuffled").

    The two classes draw their words from the same speeches, so a bag of words (which a random-init model's
    mean-pooled features largely are) tells them apart no better than chance; a model that learned how words
    follow each other can. Each speech appears once (a speech and its shuffled twin on both sides of the
    probe's split would let a classifier match twins by their words and score below chance)."""
    import random

    examples = []
    for i, speech in enumerate(speeches):
        words = speech["text"].split()
        if i % 2:
            random.Random(i).shuffle(words)
        examples.append({"text": " ".join(words), "label": "shuffled" if i % 2 else "natural"})
    return examples


def job_spec(
    corpus_id: str,
    labelled_set_id: str,
    *,
    steps: int,
    checkpoints: int,
    layers: int = 4,
    width: int = 128,
    batch: int = 16,
    probe: str = "play",
) -> dict[str, Any]:
    """The probed masked-LM job."""
    every = max(1, steps // checkpoints)
    return {
        "name": "probes-bench",
        "corpus_ids": [corpus_id],
        "objective": {"type": "masked_lm"},
        "tokenizer": {"type": "wordpiece", "vocab_size": 2048},
        "model": {"layers": layers, "heads": 4, "width": width, "context_length": 64},
        "training": {"max_steps": steps, "batch_size": batch, "learning_rate": 1e-3},
        "evaluation": {"every_steps": every, "batches": 8},
        "checkpointing": {"every_steps": every, "keep_last": checkpoints + 1},
        "probes": [{"labelled_set_id": labelled_set_id, "name": probe}],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the job, wait for its probes, print and write the per-checkpoint accuracies."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="masked-LM steps (default 400)")
    parser.add_argument("--checkpoints", type=int, default=5, help="evenly spaced checkpoints (default 5)")
    parser.add_argument("--per-play", type=int, default=300, help="labelled speeches per play (default 300)")
    parser.add_argument("--layers", type=int, default=4, help="BERT layers (default 4)")
    parser.add_argument("--width", type=int, default=128, help="BERT width, 4 heads (default 128)")
    parser.add_argument("--batch", type=int, default=16, help="masked-LM batch size (default 16)")
    parser.add_argument(
        "--task",
        choices=("play", "order"),
        default="play",
        help="play: which of two plays a speech is from; order: natural or word-shuffled speech (default play)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the training worker")
    parser.add_argument("--keep-home", action="store_true", help="keep the SELFSUP_HOME (service log, DB)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default bench/results/probes-<time>.json)")
    args = parser.parse_args(argv)
    if args.steps < args.checkpoints or args.checkpoints < 1 or args.per_play < 5:
        parser.error("--steps must be at least --checkpoints (at least 1), --per-play at least 5")
    out: Path = args.out or REPO / "bench" / "results" / f"probes-{datetime.now():%Y%m%d-%H%M%S}.json"
    examples = play_speeches(per_play=args.per_play)
    if args.task == "order":
        examples = word_order_examples(examples)
    tmp = Path(tempfile.mkdtemp(prefix="selfsup-probes-bench-"))
    began = time.monotonic()
    # Production-like settings (the test defaults, a 10 s lease among them, are tuned for the tests' speed).
    env = {
        "SELFSUP_TORCH_THREADS": str(args.threads),
        "SELFSUP_CONTROL_INTERVAL_SECONDS": "1.0",
        # Long enough that a trainer on a busy shared machine is not taken for dead.
        "SELFSUP_LEASE_SECONDS": "300",
        "SELFSUP_RECONCILE_INTERVAL_SECONDS": "15",
    }
    try:
        service: Service = start_service(tmp / "home", extra_env=env)
        try:
            with service.client("alice") as client:
                uploaded = upload_labelled_set(client, labelled_set_jsonl(examples), name=f"probe-{args.task}")
                uploaded.raise_for_status()
                labelled_set = uploaded.json()
                corpus = ready_corpus(client, SHAKESPEARE.read_bytes(), name="tinyshakespeare.txt", timeout=600)
                spec = job_spec(
                    corpus["id"],
                    labelled_set["id"],
                    steps=args.steps,
                    checkpoints=args.checkpoints,
                    layers=args.layers,
                    width=args.width,
                    batch=args.batch,
                    probe=args.task,
                )
                job = client.post("/v1/jobs", json=spec).raise_for_status().json()

                def probes_done() -> list[dict[str, Any]] | None:
                    current = client.get(f"/v1/jobs/{job['id']}").json()
                    status = current["status"]
                    if status in ("failed", "cancelled"):
                        raise RuntimeError(f"job {status}: {current.get('error')}")
                    if status != "succeeded":
                        return None
                    # One run per checkpoint, and the random-init baseline.
                    expected = len(client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]) + 1
                    runs: list[dict[str, Any]] = client.get(f"/v1/jobs/{job['id']}/probes").json()["data"]
                    finished = all(r["status"] in ("succeeded", "failed") for r in runs)
                    return runs if len(runs) >= expected and finished else None

                runs = wait_until(probes_done, timeout=7200, interval=2.0, what="the job and its probes")
                metrics = client.get(f"/v1/jobs/{job['id']}/metrics", params={"limit": 10_000}).json()["data"]
                events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
        finally:
            service.stop()
    finally:
        if not args.keep_home:
            shutil.rmtree(tmp, ignore_errors=True)
    val_loss = {m["step"]: m["value"] for m in metrics if m["name"] == "val_loss"}
    rows = [
        {
            "step": r["step"],
            "model": "random init" if r["random_init"] else "checkpoint",
            "status": r["status"],
            "probe_accuracy": r["accuracy"],
            "val_loss": val_loss.get(r["step"]),
            "error": r["error"],
        }
        for r in sorted(runs, key=lambda r: r["step"])
    ]
    report: dict[str, Any] = {
        "spec": spec,
        "labelled_set": {k: labelled_set[k] for k in ("examples", "label_counts", "sha256")},
        "rows": rows,
        "probe_events": [e["message"] for e in events if e["type"].startswith("probe")],
        "seconds": round(time.monotonic() - began, 1),
        "machine": machine(args.threads),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"| step | model | probe_accuracy/{args.task} | val_loss |\n| ---: | --- | ---: | ---: |")
    for row in rows:
        acc = f"{row['probe_accuracy']:.3f}" if row["probe_accuracy"] is not None else f"({row['status']})"
        loss = f"{row['val_loss']:.3f}" if row["val_loss"] is not None else ""
        print(f"| {row['step']} | {row['model']} | {acc} | {loss} |")
    print(f"\n{report['probe_events'][0] if report['probe_events'] else ''}")
    print(
        f"{report['seconds']:.0f} s on {report['machine']['cpu']} ({report['machine']['nproc']} cores); report: {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
