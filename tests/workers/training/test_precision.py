"""How a job computes on its device (`training.precision`): bf16 matrix products of fp32 tensors on a CPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from models.build import ATTENTION, SpecialTokenIds
from selfsup.spec import JobSpec
from workers.data.token_arrays import TokenArrays
from workers.training.precision import CpuBf16Matmuls, allow_tf32, use_bf16_matmuls
from workers.training.trainer import Trainer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("precision", "device", "setting", "amx", "expected"),
    [
        ("auto", CPU, "auto", True, True),  # the default where it was measured to pay
        ("auto", CPU, "auto", False, False),  # not measured without AMX: IEEE products
        ("auto", CPU, True, False, True),  # SELFSUP_CPU_BF16_MATMULS=true forces it
        ("auto", CPU, False, True, False),  # ... and false turns it off
        ("fp32", CPU, True, True, False),  # a job that asks for fp32 gets IEEE products, whatever the setting
        ("bf16", CPU, True, True, False),  # autocast already multiplies in bf16
        ("auto", CUDA, True, True, False),  # a GPU has TF32 and autocast instead
    ],
)
def test_bf16_products_for_auto_jobs_on_a_cpu_with_amx_or_when_the_setting_says(
    precision: str, device: torch.device, setting: CpuBf16Matmuls, amx: bool, expected: bool
) -> None:
    assert use_bf16_matmuls(precision, device, setting, amx=amx) is expected


def _spec(precision: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "corpus_ids": ["cor_x"],
            "objective": {"type": "causal_lm"},
            "tokenizer": {"type": "char"},
            "model": {"layers": 2, "heads": 2, "width": 64, "context_length": 32},
            "training": {"max_steps": 40, "batch_size": 8, "learning_rate": 3e-3, "precision": precision},
            "evaluation": {"batches": 2},
        }
    )


def _data() -> TokenArrays:
    rng = np.random.default_rng(0)
    tokens = (np.cumsum(rng.integers(1, 4, 20_000)) % 50).astype(np.uint16)  # learnable, not constant
    return TokenArrays(train=tokens, validation=tokens[:2000], vocab_size=52, special=SpecialTokenIds(eos=0))


def test_bf16_products_train_the_same_curve_inside_the_trainer_only(tmp_path: Path) -> None:
    before = torch.backends.mkldnn.matmul.fp32_precision
    ieee = Trainer(_spec("fp32"), _data(), device=CPU, cpu_bf16_matmuls=True)
    bf16 = Trainer(_spec("auto"), _data(), device=CPU, cpu_bf16_matmuls=True)
    assert (ieee.numerics, bf16.numerics) == ("fp32", "fp32 with bf16 matrix products")
    # PyTorch's CPU SDPA kernel is slow in bf16 math mode: attention is written out instead.
    assert bf16.model.config._attn_implementation == "eager"
    assert ieee.model.config._attn_implementation == ATTENTION

    modes: list[str] = []
    bf16.model.register_forward_pre_hook(lambda *_: modes.append(torch.backends.mkldnn.matmul.fp32_precision))
    ieee_losses = [ieee.train_step().loss for _ in range(30)]  # type: ignore[union-attr]
    bf16_losses = [bf16.train_step().loss for _ in range(30)]  # type: ignore[union-attr]
    val_ieee, val_bf16 = ieee.evaluate(), bf16.evaluate()
    assert set(modes) == {"bf16"} and len(modes) == 30 + 2  # every step and every evaluation batch
    assert torch.backends.mkldnn.matmul.fp32_precision == before  # nothing outside the trainer changed

    # The same numbers within noise at every step, and it learns.
    assert bf16_losses == pytest.approx(ieee_losses, rel=2e-3)
    assert val_bf16 == pytest.approx(val_ieee, rel=2e-3)
    assert bf16_losses[-1] < 0.8 * bf16_losses[0]
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # where oneDNN has bf16 at all, the mode is really on
        assert bf16_losses != ieee_losses

    # The checkpoint is a stock one: the config names no attention implementation, and it loads with SDPA.
    bf16.save_pretrained(tmp_path)
    assert "attn_implementation" not in (tmp_path / "config.json").read_text()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    inputs, _ = bf16.batch(99, 0)
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=inputs).logits, bf16.model.eval()(input_ids=inputs).logits, atol=1e-5)


@pytest.fixture
def restored_matmul_precision() -> Iterator[None]:
    """Put the process-wide precision flags back as they were (the test below changes them for CUDA)."""
    cuda, cpu = torch.backends.cuda.matmul, torch.backends.mkldnn.matmul  # type: ignore[attr-defined]
    saved = cuda.fp32_precision, cpu.fp32_precision, torch.backends.cudnn.conv.fp32_precision  # type: ignore[attr-defined]
    legacy = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(legacy)
    cuda.fp32_precision, cpu.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved  # type: ignore[attr-defined]


def test_tf32_on_cuda_leaves_the_precision_getters_that_inductor_reads_working(restored_matmul_precision: None) -> None:
    cpu_before = torch.backends.mkldnn.matmul.fp32_precision  # type: ignore[attr-defined]

    allow_tf32(CUDA)  # sets flags only: no GPU needed

    # Setting only the new per-backend flag made these raise ("a mix of the legacy and new APIs"), and
    # inductor's max-autotune reads them: it failed to compile on an H200.
    assert torch.get_float32_matmul_precision() == "high"
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # type: ignore[attr-defined]
    assert torch.backends.mkldnn.matmul.fp32_precision == cpu_before  # type: ignore[attr-defined]  # CPU unchanged
