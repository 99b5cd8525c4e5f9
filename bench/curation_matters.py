"""Does curation matter? The same small model trained on a heavily duplicated corpus, with and without curation,
evaluated on the same clean held-out text.

One command, from the repository root:

    .venv/bin/python bench/curation_matters.py [--steps 800] [--layers 2] [--width 128] [--threads 2]
                                               [--plain-first] [--out FILE]

What it does (everything deterministic, from ../shared/data/tinyshakespeare.txt):

1. Splits the text at blank lines into speeches. The speeches that start in the last 10% of the characters
   are the **held-out text** (kept as one text, as in the file); the rest is the **clean pool**. Consecutive
   pool speeches are grouped into documents of at least 200 words (tiny Shakespeare's speeches are short, so
   Gopher's 50-word minimum and C4's 5-sentence minimum would drop most of them one by one); a document keeps
   its speeches separated by blank lines, so the corpus is uploaded as JSONL, one document a line.
2. Builds the **duplicated corpus** from the pool: every pool document once, plus, for a seeded 5% of them,
   `--copies` extra copies each (half exact copies, half near copies with `--changed-words` words replaced by
   other words of the pool), plus one of three boilerplate lines (newsletter / rights / cookie notice) appended
   to half of all documents; then shuffled. Its duplication rate (the characters of the extra copies and of
   the boilerplate lines over all characters) is printed; with the defaults about 70%.
3. Starts `selfsup up` in a fresh temporary SELFSUP_HOME, uploads the corpus, and creates two datasets over
   it: **curated** (every rule with its defaults except `c4_lines` and `gopher_quality`, which are tuned for web
   prose and drop a large share of clean verse: on the clean pool, c4_lines removes about 65% of the
   characters, mostly lines without terminal punctuation, and gopher_quality about 26%, as datatrove counts
   punctuation tokens as non-alphabetic words) and **plain** (`curation` absent). Prints the curated report's
   totals per rule.
4. Trains the same job on each dataset, one after the other (curated first unless `--plain-first`): a
   character-level GPT-2 (`--layers` 2, 4 heads, `--width` 128, context 64, batch 12, fp32, AdamW lr 1e-3 with warmup
   and cosine decay, seed 1337), `--steps` steps, `val_loss` on the dataset's own validation split every
   `--steps / 4` steps, one checkpoint at the end.
5. Downloads both final checkpoints (`GET /v1/checkpoints/{id}/archive`), stops the service, loads each with
   `transformers.AutoModelForCausalLM` / `AutoTokenizer` from the unpacked folder (offline), and computes the
   mean next-character loss on the held-out text: windows of 65 characters at a stride of 64, so every
   character but the first is predicted exactly once, from the same windows for both models. Characters
   outside either model's vocabulary are removed from the held-out text before it is cut (their count is
   reported; it is 0 with the defaults: the boilerplate is written in tiny Shakespeare's own alphabet). The
   vocabularies can still differ by a character the held-out text lacks (with the defaults, every '3' of the
   pool is in the speaker label "3 KING HENRY VI", which line dedup removes: 64 against 65 characters), so
   the two models' embedding matrices, and their initial weights, are not identical.
   The held-out loss is also split into the characters of speaker-label lines ("PETRUCHIO:", about 11% of
   the held-out text) and all others: line dedup strips a label of 10 or more characters from training
   documents once it is in more than 3 of them, which costs the curated model on exactly those lines.
6. Prints a table and writes bench/results/curation_matters-<time>.json.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import re
import shutil
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.train_throughput import machine, service_env  # noqa: E402 - the same production-like settings
from tests.factories import (  # noqa: E402
    SHAKESPEARE,
    create_dataset,
    ready_corpus,
    submit_job,
    wait_for_dataset,
)
from tests.service import Service, start_service, wait_until  # noqa: E402

HELD_OUT_FRACTION = 0.1
MIN_DOC_WORDS = 200
SEED = 1337
CONTEXT = 64
EVAL_BATCH_WINDOWS = 64
POLL_INTERVAL_SECONDS = 2.0
SPEAKER_LABEL = re.compile(r"(?m)^[A-Za-z][A-Za-z ']*:$")
JOB_TIMEOUT_SECONDS = 3600.0
# Web boilerplate in tiny Shakespeare's own alphabet (letters and . , ' :), so it adds no characters to the
# vocabulary: both models get the same vocabulary and the same initial weights.
BOILERPLATE = (
    "Sign up for our newsletter to get the latest plays delivered to your inbox.",
    "All rights reserved. No part of this text may be reproduced without permission.",
    "This site uses cookies. By continuing to browse you agree to our use of cookies.",
)
# Every rule with its defaults except the two tuned for web prose, which drop much clean verse (see above).
CURATION: dict[str, Any] = {"c4_lines": {"enabled": False}, "gopher_quality": {"enabled": False}}


@dataclass
class Corpora:
    """The three disjoint parts built from tiny Shakespeare, and what the duplicated corpus is made of."""

    held_out: str
    pool: list[str]
    duplicated: list[str]
    stats: dict[str, Any]


def build_corpora(*, copies: int, dup_fraction: float, changed_words: int, boilerplate_fraction: float) -> Corpora:
    """The held-out text, the clean pool (as documents) and the duplicated corpus (deterministic)."""
    text = SHAKESPEARE.read_text()
    speeches = [s.strip("\n") for s in text.split("\n\n") if s.strip()]
    # Held out: the speeches that start in the last 10% of the characters.
    cut_chars, total, cut = (1 - HELD_OUT_FRACTION) * len(text), 0, len(speeches)
    for i, speech in enumerate(speeches):
        if total >= cut_chars:
            cut = i
            break
        total += len(speech) + 2
    held_out = "\n\n".join(speeches[cut:]) + "\n"
    pool: list[str] = []
    group: list[str] = []
    for speech in speeches[:cut]:
        group.append(speech)
        if sum(len(s.split()) for s in group) >= MIN_DOC_WORDS:
            pool.append("\n\n".join(group))
            group = []
    if group:
        pool.append("\n\n".join(group))

    rng = random.Random(SEED)
    vocabulary = sorted({w for doc in pool for w in doc.split()})
    repeated = sorted(rng.sample(range(len(pool)), max(1, round(dup_fraction * len(pool)))))
    documents: list[tuple[str, int]] = [(doc, 0) for doc in pool]  # (text, characters that are duplicates)
    exact = near = 0
    for index in repeated:
        for k in range(copies):
            if k % 2 == 0:
                documents.append((pool[index], len(pool[index])))
                exact += 1
            else:
                documents.append((_near_copy(pool[index], rng, vocabulary, changed_words), len(pool[index])))
                near += 1
    with_boilerplate = 0
    duplicated: list[str] = []
    duplicate_chars = 0
    for doc, dup_chars in documents:
        if rng.random() < boilerplate_fraction:
            line = rng.choice(BOILERPLATE)
            doc = f"{doc}\n{line}"
            dup_chars += len(line) + 1
            with_boilerplate += 1
        duplicated.append(doc)
        duplicate_chars += dup_chars
    rng.shuffle(duplicated)
    corpus_chars = sum(len(d) for d in duplicated)
    stats = {
        "speeches": len(speeches),
        "held_out_speeches": len(speeches) - cut,
        "held_out_characters": len(held_out),
        "pool_documents": len(pool),
        "pool_characters": sum(len(d) for d in pool),
        "pool_words_per_document_min": min(len(d.split()) for d in pool),
        "repeated_documents": len(repeated),
        "repeated_documents_characters": sum(len(pool[i]) for i in repeated),
        "exact_copies": exact,
        "near_copies": near,
        "changed_words_per_near_copy": changed_words,
        "documents_with_boilerplate_line": with_boilerplate,
        "corpus_documents": len(duplicated),
        "corpus_characters": corpus_chars,
        "duplicate_characters": duplicate_chars,
        "duplication_rate": duplicate_chars / corpus_chars,
    }
    return Corpora(held_out=held_out, pool=pool, duplicated=duplicated, stats=stats)


def _near_copy(doc: str, rng: random.Random, vocabulary: list[str], changed_words: int) -> str:
    """`doc` with `changed_words` of its words (at seeded positions) replaced by other words of the pool."""
    lines = [line.split(" ") for line in doc.split("\n")]
    positions = [(i, j) for i, words in enumerate(lines) for j, w in enumerate(words) if w]
    for i, j in rng.sample(positions, min(changed_words, len(positions))):
        lines[i][j] = rng.choice(vocabulary)
    return "\n".join(" ".join(words) for words in lines)


def job_spec(dataset_id: str, *, name: str, steps: int, layers: int, width: int) -> dict[str, Any]:
    """The same job for both datasets: a character-level GPT-2 in fp32, one checkpoint at the end."""
    return {
        "name": name,
        "dataset_id": dataset_id,
        "objective": {"type": "causal_lm"},
        "tokenizer": {"type": "char"},
        "model": {"family": "gpt2", "layers": layers, "heads": 4, "width": width, "context_length": CONTEXT},
        "training": {
            "max_steps": steps,
            "batch_size": 12,
            "grad_accum_steps": 1,
            "precision": "fp32",
            "learning_rate": 1e-3,
            "min_learning_rate": 1e-4,
            "warmup_steps": min(100, steps // 10),
            "betas": [0.9, 0.99],
            "weight_decay": 0.1,
            "grad_clip": 1.0,
            "seed": SEED,
        },
        "evaluation": {"every_steps": max(1, steps // 4), "batches": 20},
        "checkpointing": {"every_steps": steps, "keep_last": 1},
    }


def _metric(client: httpx.Client, job_id: str, name: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/jobs/{job_id}/metrics", params={"name": name, "limit": 10_000})
    response.raise_for_status()
    return sorted(response.json()["data"], key=lambda p: p["step"])


def _get(client: httpx.Client, path: str) -> Any:
    response = client.get(path)
    response.raise_for_status()
    return response.json()


def train(
    client: httpx.Client, dataset_id: str, *, name: str, steps: int, layers: int, width: int, folder: Path
) -> dict[str, Any]:
    """Run the job on one dataset, download its final checkpoint into `folder`, and return its figures."""
    started = time.monotonic()
    job_id = submit_job(client, job_spec(dataset_id, name=name, steps=steps, layers=layers, width=width))["id"]

    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = _get(client, f"/v1/jobs/{job_id}")
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    job = wait_until(finished, timeout=JOB_TIMEOUT_SECONDS, interval=POLL_INTERVAL_SECONDS, what=f"job {job_id}")
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
    seconds = time.monotonic() - started
    train_loss = _metric(client, job_id, "train_loss")
    val_loss = _metric(client, job_id, "val_loss")
    tokens_per_second = _metric(client, job_id, "tokens_per_second")
    checkpoints = _get(client, f"/v1/jobs/{job_id}/checkpoints")["data"]
    checkpoint = max(checkpoints, key=lambda c: c["step"])
    with client.stream("GET", f"/v1/checkpoints/{checkpoint['id']}/archive") as response:
        response.raise_for_status()
        archive = io.BytesIO(response.read())
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=archive) as tar:
        tar.extractall(folder, filter="data")
    last = train_loss[-5:]
    return {
        "job_id": job_id,
        "checkpoint_id": checkpoint["id"],
        "checkpoint_step": checkpoint["step"],
        "submitted_to_finished_seconds": round(seconds, 1),
        "final_train_loss": train_loss[-1]["value"],
        "final_train_loss_step": train_loss[-1]["step"],
        "mean_train_loss_last_5_records": sum(p["value"] for p in last) / len(last),
        "own_val_loss": val_loss[-1]["value"],
        "own_val_loss_series": [(p["step"], round(p["value"], 4)) for p in val_loss],
        "median_tokens_per_second": sorted(p["value"] for p in tokens_per_second)[len(tokens_per_second) // 2],
    }


def _char_vocabulary(tokenizer: Any) -> set[str]:
    special = set(tokenizer.all_special_tokens)
    return {t for t in tokenizer.get_vocab() if len(t) == 1 and t not in special}


def speaker_label_mask(text: str) -> torch.Tensor:
    """True at the characters of speaker-label lines ("PETRUCHIO:" and its newline), which line dedup strips
    from training documents when a label of 10 or more characters is in more than 3 of them."""
    mask = torch.zeros(len(text), dtype=torch.bool)
    for match in SPEAKER_LABEL.finditer(text):
        mask[match.start() : match.end() + 1] = True
    return mask


def held_out_loss(folder: Path, text: str) -> dict[str, Any]:
    """Mean next-character loss of the checkpoint in `folder` over windows of `text` (65 characters, stride 64);
    also split into the characters of speaker-label lines and all others."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != len(text):
        raise RuntimeError(f"char tokenizer gave {len(ids)} tokens for {len(text)} characters")
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise RuntimeError("the evaluation text still has characters outside the vocabulary")
    tokens = torch.tensor(ids, dtype=torch.long)
    labels = speaker_label_mask(text)
    starts = list(range(0, len(tokens) - CONTEXT, CONTEXT))
    losses: list[torch.Tensor] = []
    is_label: list[torch.Tensor] = []
    with torch.inference_mode():
        for b in range(0, len(starts), EVAL_BATCH_WINDOWS):
            chunk = starts[b : b + EVAL_BATCH_WINDOWS]
            batch = torch.stack([tokens[s : s + CONTEXT + 1] for s in chunk])
            logits = model(input_ids=batch[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="none"
            )
            losses.append(loss)
            is_label.append(torch.cat([labels[s + 1 : s + CONTEXT + 1] for s in chunk]))
    loss_all, label_all = torch.cat(losses).double(), torch.cat(is_label)
    return {
        "held_out_loss": float(loss_all.mean()),
        "held_out_loss_speaker_label_lines": float(loss_all[label_all].mean()),
        "held_out_loss_other_lines": float(loss_all[~label_all].mean()),
        "windows": len(starts),
        "predicted_characters": loss_all.numel(),
        "predicted_characters_in_speaker_labels": int(label_all.sum()),
    }


def report_totals(report: dict[str, Any]) -> dict[str, Any]:
    """The curation report's totals and, per rule, the documents, characters and lines it removed."""
    rules = {
        rule: {k: r[k] for k in ("documents_removed", "characters_removed", "lines_removed", "duplicate_clusters")}
        for rule, r in report["rules"].items()
        if r["documents_removed"] or r["characters_removed"] or r["lines_removed"]
    }
    totals = {k: report[k] for k in ("documents_in", "documents_out", "characters_in", "characters_out")}
    return {**totals, "rules": rules}


def main(argv: list[str] | None = None) -> int:
    """Build the corpora, curate, train both jobs, evaluate both checkpoints, print and write the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps per job (default 800)")
    parser.add_argument("--layers", type=int, default=2, help="GPT-2 layers (default 2)")
    parser.add_argument("--width", type=int, default=128, help="GPT-2 width, 4 heads (default 128)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the trainer and the eval")
    parser.add_argument("--copies", type=int, default=50, help="extra copies of each repeated document")
    parser.add_argument("--dup-fraction", type=float, default=0.05, help="share of pool documents repeated")
    parser.add_argument("--changed-words", type=int, default=3, help="words replaced in a near copy")
    parser.add_argument("--boilerplate-fraction", type=float, default=0.5, help="documents with a boilerplate line")
    parser.add_argument("--plain-first", action="store_true", help="train on the uncurated dataset first")
    parser.add_argument("--keep-home", action="store_true", help="keep the SELFSUP_HOME (service log, DB)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default bench/results/...-<time>.json)")
    args = parser.parse_args(argv)
    if args.steps < 10 or args.threads < 1 or args.copies < 0:
        parser.error("--steps must be at least 10, --threads at least 1, --copies at least 0")
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(args.threads)
    out: Path = args.out or REPO / "bench" / "results" / f"curation_matters-{datetime.now():%Y%m%d-%H%M%S}.json"
    began = time.monotonic()
    loadavg_before = [round(x, 2) for x in os.getloadavg()]

    corpora = build_corpora(
        copies=args.copies,
        dup_fraction=args.dup_fraction,
        changed_words=args.changed_words,
        boilerplate_fraction=args.boilerplate_fraction,
    )
    s = corpora.stats
    print(
        f"corpus: {s['corpus_documents']:,} documents, {s['corpus_characters']:,} characters, "
        f"duplication rate {s['duplication_rate']:.1%} ({s['repeated_documents']} pool documents repeated "
        f"{args.copies}x: {s['exact_copies']} exact + {s['near_copies']} near copies; "
        f"{s['documents_with_boilerplate_line']} boilerplate lines); "
        f"clean pool {s['pool_documents']} documents, {s['pool_characters']:,} characters; "
        f"held out {s['held_out_characters']:,} characters",
        flush=True,
    )
    order = ["plain", "curated"] if args.plain_first else ["curated", "plain"]
    jobs: dict[str, dict[str, Any]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="selfsup-curation-bench-"))
    try:
        service: Service = start_service(tmp / "home", extra_env=service_env(args.threads))
        try:
            with service.client("alice") as client:
                body = "".join(json.dumps({"text": d}) + "\n" for d in corpora.duplicated).encode()
                corpus = ready_corpus(
                    client, body, name="duplicated.jsonl", content_type="application/jsonl", timeout=600
                )
                sources = [{"corpus_id": corpus["id"]}]
                t0 = time.monotonic()
                requests: dict[str, dict[str, Any]] = {
                    "curated": {"name": "duplicated-curated", "sources": sources, "curation": CURATION},
                    "plain": {"name": "duplicated-plain", "sources": sources},
                }
                datasets = {k: create_dataset(client, r)["id"] for k, r in requests.items()}
                for kind, dataset_id in datasets.items():
                    done = wait_for_dataset(client, dataset_id, timeout=1800)
                    if done["status"] != "ready":
                        raise RuntimeError(f"dataset {kind} failed: {done.get('error')}")
                curation_seconds = time.monotonic() - t0
                report = _get(client, f"/v1/datasets/{datasets['curated']}/report")
                totals = report_totals(report)
                print(
                    f"curation ({curation_seconds:.0f} s for both datasets): documents {totals['documents_in']:,} -> "
                    f"{totals['documents_out']:,}, characters {totals['characters_in']:,} -> "
                    f"{totals['characters_out']:,}",
                    flush=True,
                )
                for rule, r in totals["rules"].items():
                    print(
                        f"  {rule:18} documents removed {r['documents_removed']:6,}  characters removed "
                        f"{r['characters_removed']:10,}  lines removed {r['lines_removed']:6,}",
                        flush=True,
                    )
                for kind in order:
                    print(f"training on the {kind} dataset: {args.steps} steps ...", flush=True)
                    jobs[kind] = train(
                        client,
                        datasets[kind],
                        name=f"curation-matters-{kind}",
                        steps=args.steps,
                        layers=args.layers,
                        width=args.width,
                        folder=tmp / "checkpoints" / kind,
                    )
                    j = jobs[kind]
                    print(
                        f"  {j['submitted_to_finished_seconds']:.0f} s, train_loss {j['final_train_loss']:.4f}, "
                        f"own val_loss {j['own_val_loss']:.4f}",
                        flush=True,
                    )
        finally:
            service.stop()

        # Held-out evaluation, after the service stopped (nothing else of ours on the cores).
        from transformers import AutoTokenizer

        vocabularies = {
            kind: _char_vocabulary(AutoTokenizer.from_pretrained(tmp / "checkpoints" / kind, local_files_only=True))
            for kind in order
        }
        common = set.intersection(*vocabularies.values())
        dropped = Counter(ch for ch in corpora.held_out if ch not in common)
        eval_text = "".join(ch for ch in corpora.held_out if ch in common)
        for kind in order:
            jobs[kind].update(held_out_loss(tmp / "checkpoints" / kind, eval_text))
            jobs[kind]["vocabulary_characters"] = len(vocabularies[kind])
    finally:
        if args.keep_home:
            print(f"kept {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    difference = jobs["plain"]["held_out_loss"] - jobs["curated"]["held_out_loss"]
    result: dict[str, Any] = {
        "benchmark": "curation_matters",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(args.threads),
        "loadavg_before": loadavg_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "steps": args.steps,
            "copies": args.copies,
            "dup_fraction": args.dup_fraction,
            "changed_words": args.changed_words,
            "boilerplate_fraction": args.boilerplate_fraction,
            "min_doc_words": MIN_DOC_WORDS,
            "held_out_fraction": HELD_OUT_FRACTION,
            "order": order,
            "curation": CURATION,
            "job_spec": job_spec(
                "<dataset>", name="curation-matters-<kind>", steps=args.steps, layers=args.layers, width=args.width
            ),
        },
        "corpus": corpora.stats,
        "curation_seconds": round(curation_seconds, 1),
        "curated_report_totals": totals,
        "held_out_evaluation": {
            "characters": len(eval_text),
            "characters_dropped_outside_vocabulary": dict(dropped),
            "identical_vocabularies": len({frozenset(v) for v in vocabularies.values()}) == 1,
            "window": CONTEXT + 1,
            "stride": CONTEXT,
        },
        "jobs": jobs,
        "held_out_loss_plain_minus_curated": difference,
        "held_out_perplexity_ratio_plain_over_curated": math.exp(difference),
        "seconds": round(time.monotonic() - began, 1),
    }
    rows = [
        ("duplication rate of the corpus", f"{s['duplication_rate']:.1%}"),
        (
            "curated: documents / characters kept",
            f"{totals['documents_out']:,} of {totals['documents_in']:,} / "
            f"{totals['characters_out']:,} of {totals['characters_in']:,}",
        ),
    ]
    for kind in ("curated", "plain"):
        j = jobs[kind]
        rows += [
            (f"{kind}: final train_loss (step {j['final_train_loss_step']})", f"{j['final_train_loss']:.4f}"),
            (f"{kind}: own-split val_loss", f"{j['own_val_loss']:.4f}"),
            (f"{kind}: held-out loss ({j['predicted_characters']:,} characters)", f"{j['held_out_loss']:.4f}"),
            (
                f"{kind}: held-out loss, speaker-label lines / others",
                f"{j['held_out_loss_speaker_label_lines']:.4f} / {j['held_out_loss_other_lines']:.4f}",
            ),
            (
                f"{kind}: job seconds, median tokens/s",
                f"{j['submitted_to_finished_seconds']:.0f}, {j['median_tokens_per_second']:,.0f}",
            ),
        ]
    rows += [
        ("held-out loss plain - curated", f"{difference:+.4f} (perplexity x{math.exp(difference):.3f})"),
        ("held-out characters dropped (outside a vocabulary)", str(sum(dropped.values()))),
        ("order", " then ".join(order)),
        ("machine", f"{result['machine']['cpu']} (nproc {result['machine']['nproc']}), torch {torch.__version__}"),
        ("load avg before / after", f"{loadavg_before} / {result['loadavg_after']}"),
        ("total seconds", f"{result['seconds']:.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
