"""The optimizer and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from selfsup.spec import TrainingSpec


def learning_rate_at(step: int, training: TrainingSpec) -> float:
    """Linear warmup to `learning_rate`, then cosine decay to `min_learning_rate` at `max_steps`."""
    peak, floor, warmup = training.learning_rate, training.min_learning_rate, training.warmup_steps or 0
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = training.max_steps - warmup
    if decay_steps <= 0:
        return peak
    progress = min(1.0, (step - warmup) / decay_steps)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def configure_optimizer(model: torch.nn.Module, training: TrainingSpec, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D weights only (matrices, embeddings), none on biases and norms.

    The fused kernel on CUDA and on the CPU: one pass over all parameters instead of a chain of
    elementwise ops (measured in bench/README.md).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": training.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=learning_rate_at(0, training),
        betas=tuple(training.betas),  # type: ignore[arg-type]
        fused=device.type in ("cuda", "cpu"),
    )
