"""A linear probe: how much of a labelled task a checkpoint's frozen representations make linearly readable.

Features are the last hidden states, mean-pooled over the non-pad tokens of each example (the encoder's for
an encoder-decoder model such as T5). The labelled set is split into train and held-out deterministically,
by a hash of each text within each label (so the split is stratified and the same for every checkpoint),
and scikit-learn's `LogisticRegression` is fitted on standardised training features with a fixed iteration
budget. The probe's value is its held-out accuracy. Pure of the database: `workers/probes.py` runs it.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

HELD_OUT_FRACTION = 0.2
MAX_ITERATIONS = 1000  # the fixed budget of the logistic regression (lbfgs iterations)
BATCH_SIZE = 32


@dataclass(frozen=True)
class LabelledExample:
    text: str
    label: str


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float
    train_examples: int
    held_out_examples: int


def split_held_out(examples: Sequence[LabelledExample]) -> tuple[list[int], list[int]]:
    """Indices of (train, held-out): per label, the examples whose text hashes lowest are held out.

    Deterministic (the same split for every checkpoint and every run), stratified, and at least one example
    of each label on each side when the label has two or more.
    """
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        by_label[example.label].append(i)
    train: list[int] = []
    held_out: list[int] = []
    for indices in by_label.values():
        ordered = sorted(indices, key=lambda i: (hashlib.sha256(examples[i].text.encode()).digest(), i))
        count = min(len(ordered) - 1, max(1, round(len(ordered) * HELD_OUT_FRACTION)))
        held_out += ordered[:count]
        train += ordered[count:]
    return sorted(train), sorted(held_out)


def load_encoder(folder: Path, *, random_init_seed: int | None = None) -> PreTrainedModel:
    """The checkpoint's base model (no task head), or with `random_init_seed` an untrained one of its shape."""
    if random_init_seed is None:
        model = AutoModel.from_pretrained(folder, use_safetensors=True)
    else:
        torch.manual_seed(random_init_seed)
        model = AutoModel.from_config(AutoConfig.from_pretrained(folder))
    if model.config.is_encoder_decoder:
        model = model.get_encoder()
    return model.eval()


@torch.no_grad()
def mean_pooled_features(model: PreTrainedModel, tokenizer: object, texts: Sequence[str]) -> np.ndarray:
    """One vector per text: the last hidden states averaged over its non-pad tokens (truncated to the context)."""
    rows = []
    for start in range(0, len(texts), BATCH_SIZE):
        batch = tokenizer(  # type: ignore[operator]
            list(texts[start : start + BATCH_SIZE]), padding=True, truncation=True, return_tensors="pt"
        )
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        rows.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))
    return torch.cat(rows).float().numpy()


def probe_accuracy(
    folder: Path, examples: Sequence[LabelledExample], *, random_init_seed: int | None = None
) -> ProbeResult:
    """Fit a logistic regression on the frozen features of a checkpoint folder; its held-out accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        # A causal LM's tokenizer may have no pad token; the mask leaves padding out of the mean anyway.
        tokenizer.pad_token = tokenizer.eos_token
    model = load_encoder(folder, random_init_seed=random_init_seed)
    features = mean_pooled_features(model, tokenizer, [e.text for e in examples])
    labels = np.array([e.label for e in examples])
    train, held_out = split_held_out(examples)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITERATIONS))
    classifier.fit(features[train], labels[train])
    accuracy = float(classifier.score(features[held_out], labels[held_out]))
    return ProbeResult(accuracy=accuracy, train_examples=len(train), held_out_examples=len(held_out))
