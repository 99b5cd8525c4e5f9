"""Causal language modelling on GPT-2 or Llama: hide the future and ask for it back.

One example: a random window of `context_length + 1` tokens; the inputs are all but its last token, the
labels the same window shifted by one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from models.objectives.base import (
    Batch,
    Forward,
    ObjectiveSpec,
    ObjectiveTraining,
    Split,
    TrainingData,
    deferred,
)
from selfsup.spec_types import ModelFamily

if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import PreTrainedModel

    from models import build
    from selfsup.spec import JobSpec
else:
    F, build = deferred("torch.nn.functional", "models.build")


class CausalLMObjective(ObjectiveSpec):
    """Next-token prediction: the label of each position is the token after it."""

    type: Literal["causal_lm"]

    families: ClassVar[tuple[ModelFamily, ...]] = ("gpt2", "llama")
    checkpoint_class: ClassVar[str] = "AutoModelForCausalLM"
    reports_perplexity: ClassVar[bool] = True

    def training(self, job: JobSpec, data: TrainingData) -> CausalLMTraining:
        """Next-token prediction bound to a job and its data."""
        return CausalLMTraining(job, data)

    def describe(self) -> str:
        """The model card's sentence."""
        return "**causal language modelling**: predict each next token from the ones before it"

    def usage_example(self) -> list[str]:
        """Generate a few tokens."""
        return [
            'out = model.generate(**tokenizer("ROMEO:", return_tensors="pt"), max_new_tokens=50, do_sample=True)',
            "print(tokenizer.decode(out[0]))",
        ]


class CausalLMTraining(ObjectiveTraining):
    """Next-token prediction on GPT-2 or Llama."""

    def build_model(self) -> PreTrainedModel:
        """A GPT-2 or Llama decoder with random weights."""
        return build.build_causal_lm(self.job.model, vocab_size=self.data.vocab_size, special=self.data.special)

    def sample(self, split: Split, rng: np.random.Generator, count: int) -> Batch:
        """Windows of `context_length + 1` tokens, split into inputs and next-token labels."""
        batch = self.sample_windows(split, rng, count, window=self.context_length + 1)
        return manufacture_causal_lm_batch(batch)

    def loss(
        self, forward: Forward, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy of the next tokens; no metrics besides the loss."""
        logits = forward(input_ids=inputs, use_cache=False).logits
        return causal_lm_loss(logits, labels), {}


def manufacture_causal_lm_batch(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split windows of `context_length + 1` tokens into inputs (all but the last) and labels (shifted by one)."""
    return windows[:, :-1], windows[:, 1:]


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the predicted next tokens."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1))
