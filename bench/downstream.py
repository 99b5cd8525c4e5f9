"""Downstream check: does masked-LM pretraining by selfsup give fine-tuning a better start than random weights?

One command, from the repository root:

    .venv/bin/python bench/downstream.py [--pretrain-steps 800] [--finetune-steps 150] [--seeds 5] [--out FILE]

1. The labelled task, from real text: which of two plays of tiny Shakespeare a speech comes from,
   *Coriolanus* (documents 0-1109) or *Romeo and Juliet* (documents 2780-3599), documents being the
   blank-line-separated speeches. The speaker's name line is removed, so the model reads only what is
   said. A fifth of the speeches (by sha256, as ingest splits) are held out for testing.
2. Pretraining: a small BERT (4 layers, width 128, dropout 0.1, WordPiece 2,048) with the `masked_lm`
   objective (15% masking, 80/10/10) through selfsup's own `Trainer`, on all of tiny Shakespeare except
   the held-out test speeches, for `--pretrain-steps` steps. The checkpoint is written as the service
   writes it (`Trainer.save_pretrained` plus the tokenizer files).
3. Fine-tuning, the same for both starts: `AutoModelForSequenceClassification.from_pretrained(checkpoint,
   num_labels=2)` against the same class built from the same config with random weights; the same
   batches (16 speeches), AdamW at 1e-4 (BERT's fine-tuning range), and `--finetune-steps` steps,
   repeated for `--seeds` seeds. Reported, as the mean over seeds: loss and accuracy on the held-out
   speeches after 25, 50, 100, … steps, and the mean training loss of the last 20 steps.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from selfsup.spec import JobSpec  # noqa: E402
from tests.factories import SHAKESPEARE  # noqa: E402
from workers.data.datasets import TOKENIZER_DIR, open_dataset, write_dataset  # noqa: E402
from workers.data.documents import is_validation  # noqa: E402
from workers.training.trainer import Trainer  # noqa: E402

PLAYS = {"Coriolanus": (0, 1110), "Romeo and Juliet": (2780, 3600)}
MIN_CHARS = 40  # shorter speeches ("Ay.", "Go to.") say nothing about their play
MAX_TOKENS = 64
BATCH_SIZE = 16
FINETUNE_LEARNING_RATE = 1e-4


def documents() -> list[str]:
    """Tiny Shakespeare's documents: runs of lines between blank lines, as ingest splits a `.txt`."""
    return [d.strip("\n") for d in SHAKESPEARE.read_text().split("\n\n") if d.strip()]


def labelled_speeches(docs: list[str]) -> tuple[list[tuple[str, int]], list[tuple[str, int]], set[int]]:
    """(train, test) lists of (speech without its speaker line, play index), and the test document indices."""
    train, test, test_docs = [], [], set()
    for label, (start, end) in enumerate(PLAYS.values()):
        for index in range(start, end):
            speech = docs[index].split("\n", 1)[1] if "\n" in docs[index] else ""
            if len(speech) < MIN_CHARS:
                continue
            if is_validation(docs[index], 0.2):
                test.append((speech, label))
                test_docs.add(index)
            else:
                train.append((speech, label))
    return train, test, test_docs


def pretrain(folder: Path, docs: list[str], test_docs: set[int], steps: int) -> dict[str, Any]:
    """Masked-LM pretraining with selfsup's Trainer; writes a checkpoint as the service does, into `folder`."""
    corpus = [d for i, d in enumerate(docs) if i not in test_docs]
    splits = {
        "train": [d for d in corpus if not is_validation(d, 0.1)],
        "validation": [d for d in corpus if is_validation(d, 0.1)],
    }
    spec = JobSpec.model_validate(
        {
            "corpus_ids": ["cor_tinyshakespeare"],
            "objective": {"type": "masked_lm"},
            "tokenizer": {"type": "wordpiece", "vocab_size": 2048},
            "model": {"layers": 4, "heads": 4, "width": 128, "context_length": MAX_TOKENS, "dropout": 0.1},
            "training": {"max_steps": steps, "batch_size": 32, "learning_rate": 1e-3, "warmup_steps": steps // 10},
            "evaluation": {"batches": 10},
        }
    )
    data_dir = folder / "dataset"
    data_dir.mkdir()
    assert spec.tokenizer is not None
    write_dataset(data_dir, spec.tokenizer, {"tinyshakespeare": lambda split: splits[split]})
    trainer = Trainer(spec, open_dataset(data_dir), device=torch.device("cpu"))
    started = time.perf_counter()
    before = trainer.evaluate()
    losses = []
    for step in range(steps):
        result = trainer.train_step()  # synced: a result every step
        assert result is not None
        losses.append(result.loss)
        if (step + 1) % 100 == 0:
            print(f"  pretrain step {step + 1}: train loss {statistics.mean(losses[-100:]):.3f}", flush=True)
    after = trainer.evaluate()
    checkpoint = folder / "checkpoint"
    trainer.save_pretrained(checkpoint)
    for item in (data_dir / TOKENIZER_DIR).iterdir():
        shutil.copyfile(item, checkpoint / item.name)
    return {
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 1),
        "val_loss_before": round(before, 4),
        "val_loss_after": round(after, 4),
        "val_masked_accuracy_after": round(trainer.last_eval_metrics["val_masked_accuracy"], 4),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
    }


def finetune(
    checkpoint: Path,
    train: list[tuple[str, int]],
    test: list[tuple[str, int]],
    *,
    pretrained: bool,
    seed: int,
    steps: int,
) -> dict[str, Any]:
    """Fine-tune a sequence classifier from the checkpoint (or from random weights of its shape)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    torch.manual_seed(seed)
    if pretrained:
        model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2, local_files_only=True)
    else:
        config = AutoConfig.from_pretrained(checkpoint, num_labels=2, local_files_only=True)
        model = AutoModelForSequenceClassification.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=FINETUNE_LEARNING_RATE, weight_decay=0.01)
    rng = np.random.default_rng(seed)  # the same batches for both starts
    model.train()
    losses, curve = [], {}
    for step in range(1, steps + 1):
        picks = rng.choice(len(train), size=BATCH_SIZE, replace=False)
        texts, labels = [train[i][0] for i in picks], torch.tensor([train[i][1] for i in picks])
        batch = tokenizer(texts, truncation=True, max_length=MAX_TOKENS, padding=True, return_tensors="pt")
        loss = F.cross_entropy(model(**batch).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step in (25, 50) or step % 50 == 0 or step == steps:
            curve[step] = held_out(model, tokenizer, test)
    return {"train_loss_last_20": statistics.mean(losses[-20:]), "curve": curve}


@torch.no_grad()
def held_out(model: Any, tokenizer: Any, test: list[tuple[str, int]]) -> dict[str, float]:
    """Mean loss and accuracy on the test speeches (dropout off)."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(test), 64):
        chunk = test[start : start + 64]
        texts, labels = [t for t, _ in chunk], torch.tensor([y for _, y in chunk])
        batch = tokenizer(texts, truncation=True, max_length=MAX_TOKENS, padding=True, return_tensors="pt")
        logits = model(**batch).logits
        total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
    model.train()
    return {"test_loss": total_loss / len(test), "test_accuracy": correct / len(test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain-steps", type=int, default=800)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/downstream-<time>.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging

    logging.set_verbosity_error()  # the classifier's "newly initialized" notice, once per run, is expected

    docs = documents()
    train, test, test_docs = labelled_speeches(docs)
    majority = max(sum(y for _, y in test), len(test) - sum(y for _, y in test)) / len(test)
    print(f"task: {len(train)} training and {len(test)} test speeches; majority class {majority:.3f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"pretraining masked_lm for {args.pretrain_steps} steps", flush=True)
        pretraining = pretrain(folder, docs, test_docs, args.pretrain_steps)
        print(f"  {pretraining}", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {"pretrained": [], "random": []}
        for seed in range(args.seeds):
            for start in runs:
                result = finetune(
                    folder / "checkpoint",
                    train,
                    test,
                    pretrained=start == "pretrained",
                    seed=seed,
                    steps=args.finetune_steps,
                )
                runs[start].append(result)
                last = result["curve"][args.finetune_steps]
                print(
                    f"  seed {seed} {start:>10}: test loss {last['test_loss']:.4f}, "
                    f"accuracy {last['test_accuracy']:.3f}",
                    flush=True,
                )

    steps = list(runs["pretrained"][0]["curve"])
    summary = {
        start: {
            "train_loss_last_20": statistics.mean(r["train_loss_last_20"] for r in results),
            "curve": {
                step: {
                    key: statistics.mean(r["curve"][step][key] for r in results)
                    for key in ("test_loss", "test_accuracy")
                }
                for step in steps
            },
        }
        for start, results in runs.items()
    }
    print(f"\nheld-out test loss / accuracy, mean of {args.seeds} seeds")
    print("  step " + "".join(f"{start:>22}" for start in summary))
    for step in steps:
        cells = "".join(
            f"{values['curve'][step]['test_loss']:>14.4f} / {values['curve'][step]['test_accuracy']:.3f}"
            for values in summary.values()
        )
        print(f"  {step:>4} {cells}")
    print(
        "  mean training loss of the last 20 steps: "
        + ", ".join(f"{start} {values['train_loss_last_20']:.4f}" for start, values in summary.items())
    )
    final = {start: values["curve"][args.finetune_steps]["test_loss"] for start, values in summary.items()}
    better = final["pretrained"] < final["random"]
    print(
        f"\npretrained start has the lower held-out loss after {args.finetune_steps} steps: {'yes' if better else 'NO'}"
    )
    record = {
        "benchmark": "downstream",
        "when": datetime.now().isoformat(timespec="seconds"),
        "task": {"plays": PLAYS, "train": len(train), "test": len(test), "majority_class": majority},
        "pretraining": pretraining,
        "finetuning": {
            "steps": args.finetune_steps,
            "batch_size": BATCH_SIZE,
            "learning_rate": FINETUNE_LEARNING_RATE,
            "max_tokens": MAX_TOKENS,
            "seeds": args.seeds,
        },
        "runs": runs,
        "summary": summary,
        "pretrained_is_better": better,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads},
    }
    out = args.out or REPO / "bench" / "results" / f"downstream-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    if not better or math.isnan(final["pretrained"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
