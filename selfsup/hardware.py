"""What a device can do at most: the peak FLOP rates model FLOPs utilisation (`mfu`) is measured against.

The one table of accelerator peaks. Figures are the vendors' dense (no structured sparsity) tensor-core
rates, in FLOP/s: `bf16` for bf16 autocast, `tf32` for fp32 matmuls with TF32 allowed (the trainer allows
it on CUDA). A CPU has no table entry: its peak is `SELFSUP_DEVICE_PEAK_FLOPS` when set (for example the
fp32 matmul ceiling `bench/train_throughput.py` measures), else none and no `mfu` is recorded.
Pure arithmetic and strings: no torch import, so the API can use it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Precision = Literal["bf16", "tf32"]


@dataclass(frozen=True)
class DevicePeak:
    """One accelerator's dense peak FLOP rates."""

    name: str
    bf16: float
    tf32: float


# Matched in order against `torch.cuda.get_device_name()` (lower case): the more specific names first.
# Sources: NVIDIA's H100, H200, A100, L4, and L40S data sheets (dense figures, half the sparse ones).
PEAKS: tuple[tuple[str, DevicePeak], ...] = (
    ("h200", DevicePeak("NVIDIA H200", bf16=989.4e12, tf32=494.7e12)),
    ("h100 nvl", DevicePeak("NVIDIA H100 NVL", bf16=835.5e12, tf32=417.5e12)),
    ("h100 pcie", DevicePeak("NVIDIA H100 PCIe", bf16=756.5e12, tf32=378e12)),
    ("h100", DevicePeak("NVIDIA H100 SXM", bf16=989.4e12, tf32=494.7e12)),  # "NVIDIA H100 80GB HBM3"
    ("gh200", DevicePeak("NVIDIA GH200", bf16=989.4e12, tf32=494.7e12)),
    ("a100", DevicePeak("NVIDIA A100", bf16=312e12, tf32=156e12)),
    ("l40s", DevicePeak("NVIDIA L40S", bf16=362.05e12, tf32=183.2e12)),
    ("l4", DevicePeak("NVIDIA L4", bf16=121e12, tf32=60e12)),
)


def device_peak(device_name: str) -> DevicePeak | None:
    """The table's entry for a CUDA device name, or None for a device it does not know."""
    lowered = device_name.lower()
    for key, peak in PEAKS:
        if key in lowered:
            return peak
    return None


def peak_flops(device_name: str | None, precision: Precision, *, override: float | None = None) -> float | None:
    """The peak FLOP/s to measure against: `override` (SELFSUP_DEVICE_PEAK_FLOPS) when given, else the table's
    figure for a CUDA device at this precision; None for a CPU or an unknown device (no `mfu` then)."""
    if override is not None:
        return override
    if device_name is None:
        return None
    peak = device_peak(device_name)
    if peak is None:
        return None
    return peak.bf16 if precision == "bf16" else peak.tf32


def model_flops_utilisation(tokens_per_second: float, flops_per_token: float, peak: float) -> float:
    """Achieved model FLOP/s (tokens/s × training FLOPs per token, `selfsup.estimate.flops_per_token`) over the
    peak: the share of the device's arithmetic the training actually uses."""
    return tokens_per_second * flops_per_token / peak
