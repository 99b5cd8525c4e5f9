"""How a job's numbers are computed on its device (`training.precision`).

- `bf16`, and `auto` on a CUDA GPU that supports it: bf16 autocast.
- On CUDA, fp32 matrix products run as TF32 (10-bit mantissa, fp32 range).
- `auto` on a CPU with AMX (Intel Sapphire Rapids and later): fp32 tensors whose matrix products oneDNN computes from
  bf16-rounded operands with fp32 accumulation (its bf16 math mode, the CPU's counterpart of TF32). Weights,
  activations, gradients and the optimizer state stay fp32; only the products' inputs are rounded.
- `fp32` on a CPU: IEEE fp32 products.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

# `SELFSUP_CPU_BF16_MATMULS`: bf16 products for `precision: auto` jobs on a CPU: always, never, or where AMX is.
CpuBf16Matmuls = bool | Literal["auto"]


def allow_tf32(device: torch.device) -> None:
    """fp32 matmuls and convolutions on CUDA tensor cores as TF32 (10-bit mantissa, fp32 range): several times
    the fp32 rate, and what the `mfu` peak of an fp32 job assumes. Nothing changes on the CPU."""
    if device.type == "cuda":
        # The process-wide setter rather than `torch.backends.cuda.matmul.fp32_precision = "tf32"` alone: that left
        # the old getters (`torch.get_float32_matmul_precision()`, `...matmul.allow_tf32`) raising on a "mix of the
        # legacy and new APIs", and inductor's max-autotune reads them (found on an H200). The setter also sets
        # oneDNN's CPU matmuls, which keep what they had.
        cpu_matmuls = torch.backends.mkldnn.matmul  # type: ignore[attr-defined]
        saved = cpu_matmuls.fp32_precision
        torch.set_float32_matmul_precision("high")
        cpu_matmuls.fp32_precision = saved
        torch.backends.cudnn.conv.fp32_precision = "tf32"  # type: ignore[attr-defined]


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to autocast to bf16: `auto` means on a CUDA GPU that supports it, never on the CPU."""
    if precision == "bf16":
        return True
    return precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, whose bf16 products run several times the fp32 rate."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without the probe: assume not
        return False


def use_bf16_matmuls(
    precision: str, device: torch.device, setting: CpuBf16Matmuls = "auto", *, amx: bool | None = None
) -> bool:
    """Whether a job's fp32 matrix products run in oneDNN's bf16 math mode: `precision: auto` on a CPU, where
    `setting` is true, or `auto` and the CPU has AMX (`amx`, probed when None). There it made the benchmark's
    compiled step about 1.3x faster than IEEE products with the same loss curve (bench/README.md); without AMX it
    was not measured. Never for `fp32` (IEEE products) or `bf16` (autocast) jobs, never on a GPU."""
    if device.type != "cpu" or precision != "auto" or setting is False:
        return False
    return setting is True or (cpu_has_amx() if amx is None else amx)


@contextlib.contextmanager
def cpu_matmul_precision(bf16: bool) -> Iterator[None]:
    """oneDNN's fp32 matmul math mode, bf16 or IEEE, for what runs inside (restored after: it is process-wide
    state, so a trainer sets it around its own steps and evaluations and leaves everything else alone)."""
    matmul = torch.backends.mkldnn.matmul  # type: ignore[attr-defined]  # set when torch.backends.mkldnn loads
    saved = matmul.fp32_precision
    matmul.fp32_precision = "bf16" if bf16 else "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = saved
