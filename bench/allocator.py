"""What the training worker's allocator setting buys: the plain loop with glibc's malloc defaults against
the same loop with `keep_freed_memory()` (what `selfsup worker --queues gpu` applies), each run in a fresh
process, alternating.

One command, from the repository root:

    .venv/bin/python bench/allocator.py [--steps 300] [--threads 2] [--repeat 4] [--out FILE]

The model, data and loop are `train_throughput.py`'s plain loop on tiny Shakespeare (character tokenizer).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.train_throughput import job_spec, machine, run_plain_process  # noqa: E402
from selfsup.spec import JobSpec  # noqa: E402
from tests.factories import SHAKESPEARE  # noqa: E402
from workers.data.datasets import write_dataset  # noqa: E402

SETTINGS = ("glibc-defaults", "keep-freed-memory")


def build_dataset(folder: Path) -> None:
    """The character-level dataset of tiny Shakespeare (paragraphs as documents, the last tenth held out)."""
    documents = [d for d in SHAKESPEARE.read_text().split("\n\n") if d.strip()]
    cut = len(documents) * 9 // 10
    spec = JobSpec.model_validate(job_spec("cor_bench", 10))
    assert spec.tokenizer is not None
    write_dataset(
        folder,
        spec.tokenizer,
        {"tinyshakespeare": lambda split: documents[:cut] if split == "train" else documents[cut:]},
    )


def main(argv: list[str] | None = None) -> int:
    """Alternate fresh processes of each setting; print the medians and their ratio; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=4, help="runs of each setting (default 4)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out: Path = args.out or REPO / "bench" / "results" / f"allocator-{datetime.now():%Y%m%d-%H%M%S}.json"
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="selfsup-bench-") as tmp:
        folder = Path(tmp) / "dataset"
        build_dataset(folder)
        for i in range(args.repeat):
            # Alternate which setting goes first, so a drift of the machine's speed favours neither.
            for setting in SETTINGS if i % 2 == 0 else SETTINGS[::-1]:
                plain = run_plain_process(
                    folder,
                    steps=args.steps,
                    threads=args.threads,
                    keep_memory=setting == "keep-freed-memory",
                    family=None,
                    objective="causal_lm",
                )
                result = {k: v for k, v in asdict(plain).items() if k != "window_rates"}
                runs[setting].append(result)
                print(
                    f"[{i + 1}/{args.repeat}] {setting:18s} {result['tokens_per_second']:8,.0f} tok/s, "
                    f"{result['page_faults_per_step']:7,.0f} page faults per step",
                    flush=True,
                )
    medians = {s: statistics.median(r["tokens_per_second"] for r in runs[s]) for s in SETTINGS}
    ratio = medians["keep-freed-memory"] / medians["glibc-defaults"]
    print(
        f"\nmedian tokens/s: glibc defaults {medians['glibc-defaults']:,.0f}, "
        f"keep freed memory {medians['keep-freed-memory']:,.0f}; ratio {ratio:.3f}"
    )
    report = {
        "benchmark": "allocator",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "steps": args.steps,
        "machine": machine(args.threads),
        "runs": runs,
        "median_tokens_per_second": medians,
        "ratio_keep_over_defaults": ratio,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
