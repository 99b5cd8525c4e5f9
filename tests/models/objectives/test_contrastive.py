"""Tests for the SimCSE contrastive objective (models/objectives/contrastive.py)."""

from __future__ import annotations

import pytest
import torch

from models.objectives.contrastive import (
    pool_embeddings,
    simcse_loss,
)


def _embeddings(batch_size: int = 32, hidden: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch_size, hidden, generator=torch.Generator().manual_seed(seed))


def test_identical_pairs_have_lower_loss_than_shuffled_pairs() -> None:
    z1 = _embeddings()
    permutation = torch.roll(torch.arange(len(z1)), 1)  # a derangement: no row keeps its partner
    identical_loss, identical_accuracy = simcse_loss(z1, z1.clone())
    shuffled_loss, shuffled_accuracy = simcse_loss(z1, z1[permutation])
    assert float(identical_loss) < float(shuffled_loss)
    assert identical_accuracy == 1.0
    assert shuffled_accuracy == 0.0


def test_accuracy_is_one_for_identical_well_separated_embeddings() -> None:
    z1 = torch.eye(8) * 3.0  # orthogonal, so every row's best match is itself
    _, accuracy = simcse_loss(z1, z1.clone())
    assert accuracy == 1.0


def test_loss_matches_cross_entropy_over_cosine_similarities() -> None:
    z1, z2 = _embeddings(seed=1), _embeddings(seed=2)
    loss, _ = simcse_loss(z1, z2, temperature=0.1)
    similarities = torch.nn.functional.cosine_similarity(z1.unsqueeze(1), z2.unsqueeze(0), dim=-1) / 0.1
    expected = torch.nn.functional.cross_entropy(similarities, torch.arange(len(z1)))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_loss_is_scale_invariant_and_differentiable() -> None:
    z1 = _embeddings(seed=3).requires_grad_()
    z2 = _embeddings(seed=4)
    loss, _ = simcse_loss(z1, z2)
    scaled_loss, _ = simcse_loss(z1 * 7.0, z2 * 0.5)
    assert float(loss.detach()) == pytest.approx(float(scaled_loss.detach()), rel=1e-5)
    loss.backward()
    assert z1.grad is not None and bool(torch.isfinite(z1.grad).all())


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError):
        simcse_loss(_embeddings(), _embeddings(), temperature=0.0)
    with pytest.raises(ValueError):
        simcse_loss(_embeddings(batch_size=4), _embeddings(batch_size=5))


def test_mean_pooling_ignores_padded_positions() -> None:
    hidden = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    attention_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = pool_embeddings(hidden, attention_mask, "mean")
    assert pooled.shape == (2, 3)
    assert torch.allclose(pooled[0], hidden[0, :3].mean(dim=0))
    assert torch.allclose(pooled[1], hidden[1].mean(dim=0))
    # Changing what sits under the padding changes nothing.
    disturbed = hidden.clone()
    disturbed[0, 3:] = 1e6
    assert torch.allclose(pool_embeddings(disturbed, attention_mask, "mean"), pooled)


def test_mean_pooling_of_an_all_padding_row_is_zero_not_nan() -> None:
    hidden = torch.randn(1, 4, 3)
    pooled = pool_embeddings(hidden, torch.zeros(1, 4, dtype=torch.long), "mean")
    assert torch.equal(pooled, torch.zeros(1, 3))


def test_cls_pooling_takes_position_zero() -> None:
    hidden = torch.randn(3, 4, 6)
    attention_mask = torch.ones(3, 4, dtype=torch.long)
    assert torch.equal(pool_embeddings(hidden, attention_mask, "cls"), hidden[:, 0])


def test_unknown_pooling_is_rejected() -> None:
    with pytest.raises(ValueError):
        pool_embeddings(torch.randn(1, 2, 3), torch.ones(1, 2), "max")  # type: ignore[arg-type]
