"""Unit tests of the training core: batch manufacture, the schedule, one step, and saved state."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from models.build import SpecialTokenIds
from models.windows import MixtureSource
from selfsup.spec import JobSpec, TrainingSpec
from workers.data.token_arrays import TokenArrays
from workers.training.optim import configure_optimizer, learning_rate_at
from workers.training.trainer import Trainer, TrainingDiverged


def _spec(**training: object) -> JobSpec:
    return JobSpec.model_validate(
        {
            "corpus_ids": ["cor_x"],
            "objective": {"type": "causal_lm"},
            "tokenizer": {"type": "char"},
            "model": {"layers": 1, "heads": 2, "width": 32, "context_length": 16},
            "training": {"max_steps": 20, "batch_size": 4, **training},
            "evaluation": {"batches": 2},
        }
    )


def _data(n: int = 5_000) -> TokenArrays:
    tokens = (np.arange(n) % 50).astype(np.uint16)  # a learnable, periodic sequence
    return TokenArrays(train=tokens, validation=tokens[:1000], vocab_size=52, special=SpecialTokenIds(eos=0))


def test_batches_are_a_pure_function_of_seed_and_step() -> None:
    a = Trainer(_spec(seed=7), _data(), device=torch.device("cpu"))
    b = Trainer(_spec(seed=7), _data(), device=torch.device("cpu"))
    c = Trainer(_spec(seed=8), _data(), device=torch.device("cpu"))
    assert torch.equal(a.batch(3, 0)[0], b.batch(3, 0)[0])
    assert not torch.equal(a.batch(3, 0)[0], a.batch(4, 0)[0])
    assert not torch.equal(a.batch(3, 0)[0], a.batch(3, 1)[0])
    assert not torch.equal(a.batch(3, 0)[0], c.batch(3, 0)[0])


def test_learning_rate_warms_up_linearly_then_decays_by_cosine_to_the_floor() -> None:
    t = TrainingSpec(max_steps=1000, learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=100)
    assert learning_rate_at(0, t) == pytest.approx(1e-5)
    assert learning_rate_at(49, t) == pytest.approx(5e-4)
    assert learning_rate_at(99, t) == pytest.approx(1e-3)
    assert learning_rate_at(100, t) == pytest.approx(1e-3)
    assert learning_rate_at(550, t) == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway: cosine at pi/2
    assert learning_rate_at(1000, t) == pytest.approx(1e-4)
    rates = [learning_rate_at(s, t) for s in range(100, 1001)]
    assert all(x >= y for x, y in zip(rates, rates[1:], strict=False))
    assert TrainingSpec(max_steps=50).warmup_steps == 5  # the default scales down for short runs
    flat = TrainingSpec(max_steps=10, warmup_steps=10)
    assert learning_rate_at(9, flat) == pytest.approx(flat.learning_rate)


def test_weight_decay_applies_to_matrices_only() -> None:
    trainer = Trainer(_spec(weight_decay=0.25), _data(), device=torch.device("cpu"))
    optimizer = configure_optimizer(trainer.model, trainer.spec.training, torch.device("cpu"))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.25 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(trainer.model.parameters()))


def test_training_steps_lower_the_loss() -> None:
    trainer = Trainer(_spec(max_steps=60, learning_rate=3e-3), _data(), device=torch.device("cpu"))
    before = trainer.evaluate()
    results = [trainer.train_step() for _ in range(60)]
    assert trainer.step == 60 and trainer.tokens_seen == 60 * 4 * 16
    assert trainer.evaluate() < before - 1.0
    assert all(math.isfinite(r.grad_norm) for r in results)


def test_a_non_finite_loss_fails_instead_of_updating() -> None:
    trainer = Trainer(_spec(), _data(), device=torch.device("cpu"))
    with torch.no_grad():
        trainer.model.transformer.wte.weight.fill_(float("nan"))
    weights = trainer.model.lm_head.weight.clone()
    with pytest.raises(TrainingDiverged, match="loss is nan at step 1"):
        trainer.train_step()
    assert trainer.step == 0 and torch.equal(trainer.model.lm_head.weight.isnan(), weights.isnan())


def test_resuming_from_saved_state_gives_the_same_weights(tmp_path: object) -> None:
    spec = _spec(max_steps=12)
    straight = Trainer(spec, _data(), device=torch.device("cpu"))
    for _ in range(12):
        straight.train_step()

    first = Trainer(spec, _data(), device=torch.device("cpu"))
    for _ in range(5):
        first.train_step()
    path = f"{tmp_path}/state.pt"
    torch.save({"model": first.model.state_dict(), "trainer": first.state_dict()}, path)
    saved = torch.load(path, weights_only=True)  # nothing but tensors and plain containers
    resumed = Trainer(spec, _data(), device=torch.device("cpu"))
    resumed.model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["trainer"])
    for _ in range(7):
        resumed.train_step()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def _mixture_data() -> TokenArrays:
    """Two sources one after the other, mixed 0.7 / 0.3."""
    plain = _data()
    sources = (
        MixtureSource(name="cor_a", weight=0.7, train=(0, 3000), validation=(0, 500)),
        MixtureSource(name="cor_b", weight=0.3, train=(3000, 5000), validation=(500, 1000)),
    )
    return dataclasses.replace(plain, sources=sources)


def test_tokens_drawn_per_source_follow_the_weights() -> None:
    trainer = Trainer(_spec(grad_accum_steps=2), _mixture_data(), device=torch.device("cpu"))
    drawn = {"cor_a": 0, "cor_b": 0}
    for step in range(50):
        for name, tokens in trainer.source_tokens_at(step).items():
            drawn[name] += tokens
    # 400 windows at p = 0.7: the standard error of the share is 0.023; allow about 2.5 of them.
    assert sum(drawn.values()) == 50 * trainer.spec.tokens_per_step
    assert abs(drawn["cor_a"] / sum(drawn.values()) - 0.7) < 0.06
    assert Trainer(_spec(), _data(), device=torch.device("cpu")).source_tokens_at(0) == {}


def test_resuming_a_mixture_continues_its_per_source_counts_and_batches(tmp_path: object) -> None:
    spec = _spec(max_steps=8)
    straight = Trainer(spec, _mixture_data(), device=torch.device("cpu"))
    for _ in range(8):
        straight.train_step()
    assert sum(straight.tokens_by_source.values()) == straight.tokens_seen

    first = Trainer(spec, _mixture_data(), device=torch.device("cpu"))
    for _ in range(3):
        first.train_step()
    path = f"{tmp_path}/state.pt"
    torch.save({"model": first.model.state_dict(), "trainer": first.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    resumed = Trainer(spec, _mixture_data(), device=torch.device("cpu"))
    resumed.model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["trainer"])
    assert resumed.tokens_by_source == first.tokens_by_source
    for step in range(3, 8):
        assert torch.equal(resumed.batch(step, 0)[0], straight.batch(step, 0)[0])
        resumed.train_step()
    assert resumed.tokens_by_source == straight.tokens_by_source
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_held_out_data_is_evaluated_like_a_validation_split_and_leaves_training_alone() -> None:
    cpu = torch.device("cpu")
    data = _data()
    other_tokens = (np.arange(3_000) * 7 % 50).astype(np.uint16)
    other = dataclasses.replace(data, train=other_tokens, validation=other_tokens)
    with_heldout = Trainer(_spec(), data, device=cpu, heldout={"other": other})
    plain = Trainer(_spec(), data, device=cpu)  # the same seed: the same initial weights
    loss = with_heldout.evaluate()
    assert loss == plain.evaluate()
    metrics = with_heldout.last_eval_metrics
    assert set(metrics) == {"val_perplexity", "val_loss/other", "val_perplexity/other"}
    assert metrics["val_loss/other"] == pytest.approx(Trainer(_spec(), other, device=cpu).evaluate())
    assert metrics["val_loss/other"] != pytest.approx(loss)
    assert metrics["val_perplexity/other"] == pytest.approx(math.exp(metrics["val_loss/other"]))
    assert metrics["val_perplexity"] == pytest.approx(math.exp(loss))
    assert with_heldout.train_step().loss == plain.train_step().loss
