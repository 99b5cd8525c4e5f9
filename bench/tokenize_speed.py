"""Tokenization speed: our path (`workers.data.tokenization.TokenArrayWriter`, what a job's dataset build runs:
ids into a flat array file) against the `tokenizers` library's own batch encoder (`Tokenizer.encode_batch`) on
the same texts with the same trained tokenizer, alone, in the same run. Ours is timed twice: ids alone (a
causal, masked or span job's dataset: the writer uses the library's offset-free `encode_batch_fast`), and with
each sentence's token offsets (a contrastive job's: offsets needed, so `encode_batch`).

The corpus (`--mb`, default 100 MB) is documents of 5-60 consecutive lines of tinyshakespeare.txt from seeded
random places; the tokenizer is byte-level BPE (`--vocab`, default 8192) trained on the play by our trainer.
Both sides use every core this process may run on (the library's Rayon pool); repetitions alternate which
side goes first. Goal: ours ≥ 0.9× the library's tokens/s (`encode_batch`'s).

    .venv/bin/python bench/tokenize_speed.py              # --mb 100 --repeat 3
    .venv/bin/python bench/tokenize_speed.py --mb 5       # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

from workers.data.tokenization import TokenArrayWriter, train_bpe_tokenizer  # noqa: E402

SIDES = ("library", "ours", "ours_with_sentences")
LIBRARY_BATCH = 4096  # documents per encode_batch call: enough for every core, bounded memory


def documents(mb: float, seed: int = 0) -> list[str]:
    """About `mb` MB of documents: runs of 5-60 consecutive lines of the play (deterministic)."""
    lines = SHAKESPEARE.read_text().splitlines(keepends=True)
    rng = random.Random(seed)
    docs: list[str] = []
    size, target = 0, int(mb * 1e6)
    while size < target:
        start = rng.randrange(len(lines))
        doc = "".join(lines[start : start + rng.randint(5, 60)])
        docs.append(doc)
        size += len(doc.encode())
    return docs


def library(tokenizer, docs: list[str]) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """tokens and seconds of `encode_batch` alone (special-token text read as text, as ours does)."""
    backend = tokenizer.backend_tokenizer
    backend.encode_special_tokens = True
    tokens = 0
    start = time.perf_counter()
    for i in range(0, len(docs), LIBRARY_BATCH):
        tokens += sum(len(e) for e in backend.encode_batch(docs[i : i + LIBRARY_BATCH], add_special_tokens=False))
    seconds = time.perf_counter() - start
    backend.encode_special_tokens = False
    return tokens, seconds


def ours(tokenizer, docs: list[str], folder: Path, *, sentences: bool) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """tokens (end-of-text separators left out) and seconds of our dataset writer: ids alone (what a causal,
    masked or span job's dataset holds) or with each sentence's token offsets (a contrastive job's)."""
    start = time.perf_counter()
    sentences_path = folder / "train.sentences.npy" if sentences else None
    writer = TokenArrayWriter(tokenizer, folder / "train.bin", sentences_path=sentences_path)
    written = writer.add(docs)
    writer.close()
    return written - len(docs), time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100.0)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()
    docs = documents(args.mb)
    mb = sum(len(d.encode()) for d in docs) / 1e6
    tokenizer = train_bpe_tokenizer([SHAKESPEARE.read_text()], vocab_size=args.vocab)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{len(docs)} documents, {mb:.1f} MB, BPE vocab {len(tokenizer)}, {cores} cores", flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        library(tokenizer, docs[:200])  # warm all three (Rayon pool, caches)
        ours(tokenizer, docs[:200], Path(tmp), sentences=True)
        for rep in range(args.repeat):
            order = SIDES if rep % 2 == 0 else SIDES[::-1]
            result: dict[str, Any] = {}
            for side in order:
                if side == "library":
                    tokens, seconds = library(tokenizer, docs)
                else:
                    tokens, seconds = ours(tokenizer, docs, Path(tmp), sentences=side == "ours_with_sentences")
                result[side] = {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}
            if len({result[side]["tokens"] for side in SIDES}) != 1:
                raise SystemExit(f"token counts differ: {result}")
            result["ratio"] = result["ours"]["tokens_per_second"] / result["library"]["tokens_per_second"]
            result["ratio_with_sentences"] = (
                result["ours_with_sentences"]["tokens_per_second"] / result["library"]["tokens_per_second"]
            )
            result["order"] = "/".join(order)
            runs.append(result)
            print(
                f"rep {rep + 1} ({result['order']}): library {result['library']['tokens_per_second']:,.0f} tok/s, "
                f"ours {result['ours']['tokens_per_second']:,.0f} (ratio {result['ratio']:.3f}), with sentence "
                f"offsets {result['ours_with_sentences']['tokens_per_second']:,.0f} "
                f"(ratio {result['ratio_with_sentences']:.3f})",
                flush=True,
            )
    ratios = [r["ratio"] for r in runs]
    with_sentences = [r["ratio_with_sentences"] for r in runs]
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cores": cores},
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "documents": len(docs),
        "mb": mb,
        "vocab": len(tokenizer),
        "tokens": runs[0]["library"]["tokens"],
        "runs": runs,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratio_with_sentences_median": statistics.median(with_sentences),
        "ratio_with_sentences_min": min(with_sentences),
        "ratio_with_sentences_max": max(with_sentences),
    }
    print(
        f"ours/library: median {report['ratio_median']:.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}); "
        f"with sentence offsets: median {report['ratio_with_sentences_median']:.3f} "
        f"(min {min(with_sentences):.3f}, max {max(with_sentences):.3f}); "
        f"load {load_before[0]:.1f} -> {report['load_after'][0]:.1f}"
    )
    out = args.out or ROOT / "bench" / "results" / f"tokenize-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
