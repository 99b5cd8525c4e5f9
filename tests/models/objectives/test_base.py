"""Tests for the sampling every objective shares (models/objectives/base.py): plain and weighted mixtures.

The data is synthetic, so what a row came from can be read off its tokens: in the mixture, source
cor_a's text uses ids 6..29 and cor_b's ids 30..59.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import pytest
import torch

from models.build import SpecialTokenIds
from models.objectives.base import IGNORE_INDEX, ObjectiveTraining
from models.windows import MixtureSource
from selfsup.spec import JobSpec
from workers.data.token_arrays import TokenArrays

SPECIAL = SpecialTokenIds(
    eos=0,
    pad=1,
    cls=2,
    sep=3,
    mask=4,
    unk=5,
    sentinels=tuple(range(99, 59, -1)),
    all=(0, 1, 2, 3, 4, 5, *range(60, 100)),
)
FAMILIES = {"causal_lm": "gpt2", "masked_lm": "bert", "span_corruption": "t5", "contrastive": "bert"}
# Random replacements could be any id, hiding which source a masked_lm row came from.
PARAMETERS: dict[str, dict[str, Any]] = {"masked_lm": {"random_replace_probability": 0.0}}
SOURCE_IDS = {"cor_a": range(6, 30), "cor_b": range(30, 60)}
BATCH_SIZE = 8


def _training(objective: str, data: TokenArrays, **parameters: Any) -> ObjectiveTraining:
    spec = JobSpec.model_validate(
        {
            "corpus_ids": ["cor_x"],
            "objective": {"type": objective, **parameters},
            "model": {"family": FAMILIES[objective], "layers": 1, "heads": 2, "width": 32, "context_length": 24},
            "training": {"batch_size": BATCH_SIZE, "max_steps": 10},
        }
    )
    return spec.objective.training(spec, data)


def _plain_data() -> TokenArrays:
    """The data the unweighted fingerprints below were captured on, before mixtures existed."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(6, 60, size=4000).astype(np.uint16)
    tokens[::37] = 0
    starts = np.arange(0, 3900, 13, dtype=np.int64)
    sentences = np.stack([starts, starts + 5 + starts % 7], axis=1)
    return TokenArrays(
        train=tokens,
        validation=tokens[:1500].copy(),
        vocab_size=100,
        special=SPECIAL,
        train_sentences=sentences,
        validation_sentences=sentences[sentences[:, 1] <= 1500],
    )


def _source_text(ids: range, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` tokens drawn from `ids`, documents ended by eos, and sentences that stay inside the source."""
    tokens = rng.integers(ids.start, ids.stop, size=n).astype(np.uint16)
    tokens[36::37] = 0
    starts = np.arange(0, n - 12, 13, dtype=np.int64)
    return tokens, np.stack([starts, starts + 5 + starts % 7], axis=1)


def _mixture_data(weights: tuple[float, float] = (0.7, 0.3), lengths: tuple[int, int] = (3000, 1000)) -> TokenArrays:
    """Two sources one after the other (cor_a then cor_b), mixed by `weights`."""
    rng = np.random.default_rng(1)
    (a, a_sentences), (b, b_sentences) = (
        _source_text(ids, n, rng) for ids, n in zip(SOURCE_IDS.values(), lengths, strict=True)
    )
    plain = _plain_data()
    return dataclasses.replace(
        plain,
        train=np.concatenate([a, b]),
        train_sentences=np.concatenate([a_sentences, b_sentences + len(a)]),
        sources=(
            MixtureSource(name="cor_a", weight=weights[0], train=(0, len(a)), validation=(0, 750)),
            MixtureSource(name="cor_b", weight=weights[1], train=(len(a), len(a) + len(b)), validation=(750, 1500)),
        ),
    )


def _fingerprint(training: ObjectiveTraining) -> str:
    digest = hashlib.sha256()
    for split in ("train", "validation"):
        for seed, step in [(0, 0), (7, 3), (123, 45)]:
            inputs, labels = training.sample(split, np.random.default_rng([seed, step, 0]), BATCH_SIZE)  # type: ignore[arg-type]
            digest.update(inputs.numpy().tobytes())
            digest.update(labels.numpy().tobytes())
    return digest.hexdigest()


def _row_sources(inputs: torch.Tensor, labels: torch.Tensor) -> list[str]:
    """Which source each row's text came from, read off its non-special tokens; fails on a mixed row."""
    found = []
    # Contrastive labels are row indices, not tokens: its rows' text is all in the inputs.
    label_rows = labels.tolist() if labels.dim() == 2 else [[] for _ in range(len(labels))]
    for row_inputs, row_labels in zip(inputs.tolist(), label_rows, strict=True):
        text = {t for t in row_inputs + row_labels if t != IGNORE_INDEX and t not in SPECIAL.all}
        owners = [name for name, ids in SOURCE_IDS.items() if text <= set(ids)]
        assert len(owners) == 1, f"a row mixes sources: {sorted(text)}"
        found.append(owners[0])
    return found


# Captured from the implementation before mixtures (commit cd6a85f) on `_plain_data()`.
UNWEIGHTED_FINGERPRINTS = {
    "causal_lm": "21d27b29b8532e2bda12eff9da9cb966b9576c3318b0f8b8a9e51527c38ef4d7",
    "masked_lm": "dada1bb0bb14322af055132e8a41ec44999809eb513c09626856d1ca197f469b",
    "span_corruption": "2ecb9e4493ecdbde54ec928728e93b9ffaefee65eb100d565d8db032d80b1afd",
    "contrastive": "b5d900f9bcd5c0dd75546a7162cc595780d0a7684aa57284e70d5618334cb11b",
}


@pytest.mark.parametrize("objective", FAMILIES)
def test_unweighted_sampling_is_bit_identical_to_before_mixtures(objective: str) -> None:
    assert _fingerprint(_training(objective, _plain_data())) == UNWEIGHTED_FINGERPRINTS[objective]


@pytest.mark.parametrize("objective", FAMILIES)
def test_each_training_row_comes_whole_from_the_source_drawn_for_it(objective: str) -> None:
    training = _training(objective, _mixture_data(), **PARAMETERS.get(objective, {}))
    for step in range(10):
        picks = training.draw_sources("train", np.random.default_rng([0, step, 0]), BATCH_SIZE)
        inputs, labels = training.sample("train", np.random.default_rng([0, step, 0]), BATCH_SIZE)
        assert picks is not None
        # The trainer counts tokens by replaying `draw_sources`: it names the source each row really has.
        assert _row_sources(inputs, labels) == [("cor_a", "cor_b")[i] for i in picks]


@pytest.mark.parametrize("objective", FAMILIES)
def test_sources_supply_training_rows_in_proportion_to_their_weights(objective: str) -> None:
    training = _training(objective, _mixture_data(), **PARAMETERS.get(objective, {}))
    rows = [
        name
        for step in range(50)
        for name in _row_sources(*training.sample("train", np.random.default_rng([0, step, 0]), BATCH_SIZE))
    ]
    # 400 rows at p = 0.7: the standard error of the share is 0.023; allow about 2.5 of them.
    assert len(rows) == 400 and abs(rows.count("cor_a") / 400 - 0.7) < 0.06


@pytest.mark.parametrize("objective", FAMILIES)
def test_weighted_sampling_is_a_pure_function_of_seed_and_step(objective: str) -> None:
    def batch(objective: str, *seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        training = _training(objective, _mixture_data(), **PARAMETERS.get(objective, {}))
        return training.sample("train", np.random.default_rng(list(seed)), BATCH_SIZE)

    first, again, other = batch(objective, 7, 3, 0), batch(objective, 7, 3, 0), batch(objective, 7, 4, 0)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_a_source_of_weight_zero_is_never_drawn() -> None:
    training = _training("causal_lm", _mixture_data(weights=(1.0, 0.0)))
    rows = _row_sources(*training.sample("train", np.random.default_rng(0), 200))
    assert set(rows) == {"cor_a"}


@pytest.mark.parametrize("objective", FAMILIES)
def test_validation_ignores_the_mixture(objective: str) -> None:
    mixed = _training(objective, _mixture_data(), **PARAMETERS.get(objective, {}))
    plain = _training(objective, dataclasses.replace(_mixture_data(), sources=()), **PARAMETERS.get(objective, {}))
    assert mixed.draw_sources("validation", np.random.default_rng(0), 4) is None
    a, b = (t.sample("validation", np.random.default_rng([1, 2]), 2 * BATCH_SIZE) for t in (mixed, plain))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_source_too_short_for_a_window_is_named() -> None:
    training = _training("causal_lm", _mixture_data(lengths=(3000, 20)))
    with pytest.raises(ValueError, match="source cor_b has 20 training tokens, fewer than one window of 25"):
        training.sample("train", np.random.default_rng(0), BATCH_SIZE)


def test_contrastive_refuses_a_source_without_two_sentences() -> None:
    with pytest.raises(ValueError, match="in source cor_b's training split, found 1"):
        _training("contrastive", _mixture_data(lengths=(3000, 14)))
