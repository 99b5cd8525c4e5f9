"""Which features a probe should read: every pooling and layer on the checkpoints of a kept `bench/probes.py` run.

    .venv/bin/python bench/probes.py --keep-home ...     # prints nothing of the home; it is under $TMPDIR
    .venv/bin/python bench/probe_variants.py HOME [--seeds 1337 1 2] [--skip "step 800" ...]

For the random-init model of the run's shape (one line per seed) and each checkpoint in HOME's blob store,
one forward pass gives every layer's hidden states (0 the embeddings, k block k); each is pooled as `mean`
(over non-pad tokens) and `cls` (the first token), plus the mean of every layer concatenated, and the probe
of `workers/training/probe.py` (the same deterministic split, standardised features, logistic regression) is
fitted on each, for both tasks of `bench/probes.py` (`play`: which play; `order`: natural or word-shuffled).
Prints one JSON line per (task, model): held-out accuracy per `pooling/layer`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.probes import word_order_examples  # noqa: E402
from tests.factories import play_speeches  # noqa: E402
from workers.training.probe import (  # noqa: E402
    BATCH_SIZE,
    MAX_ITERATIONS,
    LabelledExample,
    load_encoder,
    split_held_out,
)


@torch.no_grad()
def all_features(model: torch.nn.Module, tokenizer: object, texts: list[str]) -> dict[tuple[str, int], np.ndarray]:
    """(pooling, layer) -> one row per text."""
    out: dict[tuple[str, int], list[np.ndarray]] = {}
    for start in range(0, len(texts), BATCH_SIZE):
        batch = tokenizer(texts[start : start + BATCH_SIZE], padding=True, truncation=True, return_tensors="pt")  # type: ignore[operator]
        states = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        ).hidden_states
        mask = batch["attention_mask"].unsqueeze(-1).float()
        for layer, hidden in enumerate(states):
            out.setdefault(("mean", layer), []).append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
            out.setdefault(("cls", layer), []).append(hidden[:, 0].numpy())
    return {key: np.concatenate(rows) for key, rows in out.items()}


def checkpoint_step(folder: Path) -> int:
    """The step a checkpoint folder was saved at (its `selfsup.json`)."""
    return int(json.loads((folder / "selfsup.json").read_text())["checkpoint"]["step"])


def held_out_accuracy(features: np.ndarray, labels: np.ndarray, train: list[int], held_out: list[int]) -> float:
    """The service's probe on these features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITERATIONS))
    classifier.fit(features[train], labels[train])
    return float(classifier.score(features[held_out], labels[held_out]))


def cross_validated(features: np.ndarray, labels: np.ndarray, folds: int) -> tuple[float, float]:
    """Mean held-out accuracy over stratified k folds (shuffled with a fixed seed), and its standard error."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    scores = [
        held_out_accuracy(features, labels, list(train), list(test)) for train, test in splitter.split(features, labels)
    ]
    return float(np.mean(scores)), float(np.std(scores, ddof=1) / np.sqrt(len(scores)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("home", type=Path, help="the SELFSUP_HOME a `bench/probes.py --keep-home` run left")
    parser.add_argument("--per-play", type=int, default=300, help="as the bench run's (default 300)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2], help="random-init seeds")
    parser.add_argument("--skip", nargs="*", default=[], help='models to leave out, e.g. "step 200"')
    parser.add_argument("--folds", type=int, default=10, help="k of the cross-validated accuracy (0: none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    speeches = play_speeches(per_play=args.per_play)
    tasks = {"play": speeches, "order": word_order_examples(speeches)}
    folders = sorted({p.parent for p in (args.home / "blobs" / "checkpoints").rglob("config.json")})
    if not folders:
        parser.error(f"no checkpoint under {args.home}/blobs/checkpoints")
    models: list[tuple[str, Path, int | None]] = [(f"random seed {s}", folders[0], s) for s in args.seeds]
    for folder in sorted(folders, key=checkpoint_step):
        models.append((f"step {checkpoint_step(folder)}", folder, None))
    for label, folder, seed in models:
        if label in args.skip:
            continue
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = load_encoder(folder, random_init_seed=seed)
        for task, rows in tasks.items():
            examples = [LabelledExample(text=r["text"], label=r["label"]) for r in rows]
            features = all_features(model, tokenizer, [e.text for e in examples])
            labels = np.array([e.label for e in examples])
            train, held_out = split_held_out(examples)
            scores = {
                f"{p}/{k}": held_out_accuracy(x, labels, train, held_out) for (p, k), x in sorted(features.items())
            }
            layers = len(features) // 2
            concat = np.concatenate([features[("mean", k)] for k in range(layers)], axis=1)
            scores["mean/all"] = held_out_accuracy(concat, labels, train, held_out)
            line = {"task": task, "model": label, "held_out": len(held_out)}
            line |= {k: round(v, 3) for k, v in scores.items()}
            if args.folds:
                # The one split's accuracy moves by a held-out example or two (~0.9 points each); the mean over
                # k folds of all the examples is steadier (with its standard error over the folds).
                for key in (("mean", layers - 1), ("cls", layers - 1), ("mean", 1), ("cls", 1)):
                    mean, error = cross_validated(features[key], labels, args.folds)
                    line[f"cv {key[0]}/{key[1]}"] = f"{mean:.3f}±{error:.3f}"
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
