"""Near dedup on a synthetic corpus: ours (workers/data/curation/near_dedup.py) against datasketch's MinHash +
MinHashLSH with the same parameters (word 5-grams, 14 bands x 8 rows, seed 1) on the same input.

The corpus (default 200 MB) is built from tinyshakespeare.txt: each document draws 300-1200 words from the
play text at random positions (a seeded RNG per document), so documents are unrelated; 1% are planted near
duplicates (a copy of an earlier document with one contiguous 5% of its words replaced). Each side runs in a
fresh subprocess, in alternating order, `--repeat` times; we report documents/s, peak RSS, and how many
planted duplicates each found.

    .venv/bin/python bench/near_dedup.py              # --mb 200 --repeat 2
    .venv/bin/python bench/near_dedup.py --mb 20 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def build_corpus(path: Path, mb: float, seed: int = 0) -> dict[int, int]:
    """Writes one document per line; returns planted duplicate -> original."""
    words = SHAKESPEARE.read_text().split()
    rng = random.Random(seed)
    planted: dict[int, int] = {}
    docs: list[str] = []
    size, target = 0, int(mb * 1e6)
    with path.open("w") as f:
        while size < target:
            i = len(docs)
            if i > 100 and rng.random() < 0.01:
                original = rng.randrange(i - 100, i)
                w = docs[original].split(" ")
                span = max(1, len(w) // 20)
                start = rng.randrange(0, len(w) - span)
                w[start : start + span] = [rng.choice(words) + "x" for _ in range(span)]
                doc = " ".join(w)
                planted[i] = original
            else:
                doc = " ".join(words[rng.randrange(len(words))] for _ in range(rng.randint(300, 1200)))
            docs.append(doc)
            if len(docs) > 200:
                docs[len(docs) - 201] = ""  # keep memory small: plants copy one of the last 100
            f.write(doc + "\n")
            size += len(doc) + 1
    return planted


def run_ours(corpus: Path, workdir: Path) -> dict[int, int]:
    sys.path.insert(0, str(ROOT))
    from selfsup.curation_spec import NearDedup
    from workers.data.curation.near_dedup import NearDedupIndex

    index = NearDedupIndex(NearDedup(), workdir)
    with corpus.open() as f:
        for i, line in enumerate(f):
            index.add(i, line)
    return index.cluster().removed


def run_datasketch(corpus: Path, workdir: Path) -> dict[int, int]:
    sys.path.insert(0, str(ROOT))
    from datasketch import MinHash, MinHashLSH

    from selfsup.curation_spec import NearDedup
    from workers.data.curation.base import normalise

    spec = NearDedup()
    perms, n = spec.bands * spec.rows_per_band, spec.n_grams
    lsh = MinHashLSH(num_perm=perms, params=(spec.bands, spec.rows_per_band))
    removed: dict[int, int] = {}
    with corpus.open() as f:
        for i, line in enumerate(f):
            ws = normalise(line).split()
            m = MinHash(num_perm=perms, seed=spec.seed)
            m.update_batch([" ".join(ws[j : j + n]).encode() for j in range(max(1, len(ws) - n + 1))])
            match = lsh.query(m)
            if match:
                removed[i] = min(match)
            else:
                lsh.insert(i, m)
    return removed


def worker(side: str, corpus: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        removed = (run_ours if side == "ours" else run_datasketch)(corpus, Path(tmp))
        seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_kb / 1024, "removed": list(removed.items())}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=200)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--worker", choices=["ours", "datasketch"])
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.corpus)
        return
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        planted = build_corpus(corpus, args.mb)
        n_docs = sum(1 for _ in corpus.open())
        runs = []
        for r in range(args.repeat):
            order = ["ours", "datasketch"] if r % 2 == 0 else ["datasketch", "ours"]
            for side in order:
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", side, "--corpus", str(corpus)],
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                res = json.loads(out.stdout.strip().splitlines()[-1])
                removed = {int(k): int(v) for k, v in res.pop("removed")}
                res.update(
                    side=side,
                    repeat=r,
                    docs_per_s=n_docs / res["seconds"],
                    planted_found=sum(removed.get(k) == v for k, v in planted.items()),
                    removed=len(removed),
                )
                print(json.dumps(res), flush=True)
                runs.append(res)
    summary = {}
    for side in ("ours", "datasketch"):
        mine = [r for r in runs if r["side"] == side]
        summary[side] = {
            "docs_per_s_best": max(r["docs_per_s"] for r in mine),
            "seconds_best": min(r["seconds"] for r in mine),
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in mine),
            "planted_found": mine[0]["planted_found"],
        }
    report = {
        "benchmark": "near_dedup",
        "mb": args.mb,
        "documents": n_docs,
        "planted": len(planted),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "uptime": _uptime()},
        "summary": summary,
        "runs": runs,
    }
    out_path = args.out or ROOT / "bench" / "results" / f"near_dedup-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out_path.write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))
    print("wrote", out_path)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
