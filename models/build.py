"""Build a randomly initialised Hugging Face model from a job's model spec.

The model knows nothing of training: it maps token ids to logits. Objectives and the loop live elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from selfsup.spec import ModelSpec


@dataclass(frozen=True)
class SpecialTokenIds:
    """The ids a model config needs to know about."""

    eos: int
    bos: int | None = None
    pad: int | None = None
    unk: int | None = None


def build_causal_lm(spec: ModelSpec, *, vocab_size: int, special: SpecialTokenIds) -> PreTrainedModel:
    """A GPT-2 family decoder of the given shape with random weights."""
    if spec.family != "gpt2":
        raise ValueError(f"unknown causal LM family {spec.family!r}")
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=spec.context_length,
        n_embd=spec.width,
        n_layer=spec.layers,
        n_head=spec.heads,
        resid_pdrop=spec.dropout,
        embd_pdrop=spec.dropout,
        attn_pdrop=spec.dropout,
        bos_token_id=special.bos if special.bos is not None else special.eos,
        eos_token_id=special.eos,
        pad_token_id=special.pad if special.pad is not None else special.eos,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


def count_parameters(model: PreTrainedModel) -> int:
    """Distinct trainable parameters (tied weights counted once)."""
    seen = {p.data_ptr(): p.numel() for p in model.parameters() if p.requires_grad}
    return sum(seen.values())
