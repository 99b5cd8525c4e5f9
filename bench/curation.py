"""The whole curation pipeline (`workers.data.curation.curate`, every rule on with its defaults) at several
corpus sizes: MB/s at each, and how the time grows with the size (it should be close to linear).

The corpus is built from tinyshakespeare.txt: documents of 5-40 lines (each line 6-16 words drawn at seeded
random positions in the play text, ending in a full stop) so the prose passes C4's and Gopher's rules, with
planted exact duplicates (1%), near duplicates (1%), boilerplate lines (2% of documents), e-mail addresses
and one evaluation passage. Two sources (70% / 30% of the documents).

    .venv/bin/python bench/curation.py                 # --mb 20 50 100 200
    .venv/bin/python bench/curation.py --mb 2 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

from selfsup.curation_spec import CurationSpec  # noqa: E402
from workers.data.curation import CurationSource, curate  # noqa: E402


def documents(mb: float, seed: int = 0) -> Iterator[str]:
    """About `mb` MB of documents (deterministic)."""
    words = [w.strip(".,;:!?'-") for w in SHAKESPEARE.read_text().split()]
    words = [w for w in words if w.isalpha()]
    rng = random.Random(seed)
    recent: list[str] = []
    size, target = 0, int(mb * 1e6)
    while size < target:
        roll = rng.random()
        if recent and roll < 0.01:
            doc = rng.choice(recent)  # exact duplicate
        elif recent and roll < 0.02:
            w = rng.choice(recent).split(" ")
            span = max(1, len(w) // 20)
            start = rng.randrange(0, len(w) - span)
            w[start : start + span] = [rng.choice(words) for _ in range(span)]
            doc = " ".join(w)  # near duplicate
        else:
            lines = []
            for _ in range(rng.randint(5, 40)):
                k = rng.randint(6, 16)
                lines.append(" ".join(rng.choices(words, k=k)) + ".")
            if rng.random() < 0.02:
                lines.append("Sign up for our newsletter to get the latest news.")
            if rng.random() < 0.01:
                lines.append(f"Contact writer{rng.randrange(1000)}@example.net for the rights.")
            doc = "\n".join(lines)
        recent = (recent + [doc])[-50:]
        size += len(doc)
        yield doc


def _read(path: Path) -> Iterator[str]:
    with path.open() as f:
        for line in f:
            yield json.loads(line)


def run(mb: float, tmp: Path, processes: int) -> dict[str, object]:
    """Writes the two sources to files (outside the timing), then times `curate` reading them."""
    docs = list(documents(mb))
    split = int(len(docs) * 0.7)
    paths = [tmp / f"a-{mb}.jsonl", tmp / f"b-{mb}.jsonl"]
    for path, part in zip(paths, (docs[:split], docs[split:]), strict=True):
        path.write_text("".join(json.dumps(d) + "\n" for d in part))
    del docs
    a = CurationSource("a", lambda: _read(paths[0]))
    b = CurationSource("b", lambda: _read(paths[1]))
    evaluation = [" ".join(SHAKESPEARE.read_text().split()[1000:1100])]
    kept = [0]

    def on_kept(source: int, text: str) -> None:
        kept[0] += 1

    start = time.perf_counter()
    report = curate(
        [a, b], CurationSpec(), evaluation=evaluation, workdir=tmp / f"work-{mb}", on_kept=on_kept, processes=processes
    )
    seconds = time.perf_counter() - start
    mb_in = report.characters_in / 1e6
    return {
        "mb": mb,
        "documents_in": report.documents_in,
        "documents_out": report.documents_out,
        "seconds": seconds,
        "mb_per_s": mb_in / seconds,
        "processes": processes,
        "removed": {rule: r.documents_removed for rule, r in report.rules.items()},
        "lines_removed": {rule: r.lines_removed for rule, r in report.rules.items() if r.lines_removed},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, nargs="+", default=[20, 50, 100, 200])
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--processes", type=int, default=os.cpu_count() or 1, help="worker processes for the per-document rules"
    )
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in args.mb:
            load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            res = run(mb, Path(tmp), args.processes)
            res["uptime_before"] = load
            print(json.dumps(res), flush=True)
            runs.append(res)
    base = runs[0]
    for r in runs:
        r["time_ratio_vs_first"] = r["seconds"] / base["seconds"]  # type: ignore[operator]
        r["size_ratio_vs_first"] = r["mb"] / base["mb"]  # type: ignore[operator]
    report = {
        "benchmark": "curation",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "runs": runs,
    }
    out = args.out or ROOT / "bench" / "results" / f"curation-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
