"""The peak table and the arithmetic of the `mfu` metric."""

from __future__ import annotations

import pytest

from selfsup.estimate import flops_per_token, parameter_count
from selfsup.hardware import device_peak, model_flops_utilisation, peak_flops
from selfsup.spec import ModelSpec


def test_cuda_names_find_their_dense_peaks() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989.4e12  # the SXM card's name
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756.5e12
    assert peak_flops("NVIDIA H200", "tf32") == 494.7e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert peak_flops("NVIDIA L40S", "bf16") == pytest.approx(362.05e12)
    assert device_peak("NVIDIA L4") is not None and device_peak("NVIDIA L4").bf16 == 121e12  # type: ignore[union-attr]


def test_a_cpu_or_an_unknown_card_has_no_peak_unless_one_is_set() -> None:
    assert peak_flops(None, "tf32") is None
    assert peak_flops("Some Future GPU", "bf16") is None
    assert peak_flops(None, "tf32", override=2.5e11) == 2.5e11
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16", override=1e12) == 1e12


def test_mfu_is_model_flops_per_second_over_the_peak() -> None:
    gpt2 = ModelSpec(family="gpt2", layers=12, heads=12, width=768, context_length=1024)
    per_token = flops_per_token(gpt2, parameter_count(gpt2, vocab_size=50257))
    assert per_token == pytest.approx(6 * 124.4e6 + 6 * 12 * 1024 * 768, rel=0.01)
    # nanoGPT's figure for this shape: about 0.87 GFLOP per token for training (forward and backward).
    assert per_token == pytest.approx(0.8e9, rel=0.1)
    assert model_flops_utilisation(400_000, per_token, 989.4e12) == pytest.approx(400_000 * per_token / 989.4e12)
    assert 0.3 < model_flops_utilisation(400_000, per_token, 989.4e12) < 0.35
