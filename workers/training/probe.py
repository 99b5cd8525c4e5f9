"""A linear probe: how much of a labelled task a checkpoint's frozen representations make linearly readable.

Features are one layer's hidden states (by default the last, `layer=-1`; `layer=k` the output of block k, 0 the
embeddings), pooled per example (the encoder's for an encoder-decoder model such as T5): `mean` over the
non-pad tokens (the default), or `cls`, the first token's state (BERT's [CLS]; the first token of a causal
model, which sees nothing else, so `cls` suits encoders). The labelled set is split into train and held-out
deterministically, by a hash of each text within each label (so the split is stratified and the same for every
checkpoint),
and scikit-learn's `LogisticRegression` is fitted on standardised training features with a fixed iteration
budget. The probe's value is its held-out accuracy. Pure of the database: `workers/probes.py` runs it.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

HELD_OUT_FRACTION = 0.2
MAX_ITERATIONS = 1000  # the fixed budget of the logistic regression (lbfgs iterations)
BATCH_SIZE = 32
Pooling = Literal["mean", "cls"]


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


def hidden_layers(model: PreTrainedModel) -> int:
    """How many blocks the (encoder) model has: `layer` may be -1 or 0 to this."""
    config = model.config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(value := getattr(config, key, None), int):
            return value
    raise ValueError(f"cannot tell how many layers a {config.model_type} model has")


@torch.no_grad()
def pooled_features(
    model: PreTrainedModel, tokenizer: object, texts: Sequence[str], *, pooling: Pooling = "mean", layer: int = -1
) -> np.ndarray:
    """One vector per text: a layer's hidden states, averaged over its non-pad tokens or the first token's
    (truncated to the context); `ValueError` for a layer the model does not have."""
    depth = hidden_layers(model)
    if not -1 <= layer <= depth:
        raise ValueError(f"layer {layer} does not exist: this model has layers 0 (embeddings) to {depth}, or -1")
    rows = []
    for start in range(0, len(texts), BATCH_SIZE):
        batch = tokenizer(  # type: ignore[operator]
            list(texts[start : start + BATCH_SIZE]), padding=True, truncation=True, return_tensors="pt"
        )
        output = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=layer != -1
        )
        hidden = output.last_hidden_state if layer == -1 else output.hidden_states[layer]
        if pooling == "cls":
            rows.append(hidden[:, 0])
            continue
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        rows.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))
    return torch.cat(rows).float().numpy()


def probe_accuracy(
    folder: Path,
    examples: Sequence[LabelledExample],
    *,
    random_init_seed: int | None = None,
    pooling: Pooling = "mean",
    layer: int = -1,
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
    features = pooled_features(model, tokenizer, [e.text for e in examples], pooling=pooling, layer=layer)
    labels = np.array([e.label for e in examples])
    train, held_out = split_held_out(examples)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITERATIONS))
    classifier.fit(features[train], labels[train])
    accuracy = float(classifier.score(features[held_out], labels[held_out]))
    return ProbeResult(accuracy=accuracy, train_examples=len(train), held_out_examples=len(held_out))
