"""Build a randomly initialised Hugging Face model from a job's model spec.

The model knows nothing of training: it maps token ids to logits (or hidden states). Objectives and the
loop live elsewhere. Each family is a stock `transformers` class, so a saved checkpoint loads with the
`Auto*` class a fine-tuning script uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import transformers
from transformers import (
    CONFIG_MAPPING,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaModel,
    T5Config,
    T5ForConditionalGeneration,
)

from models import attention
from selfsup.spec import ModelSpec

# PyTorch's fused scaled-dot-product attention (flash / memory-efficient kernels on CUDA) in every family:
# faster than the eager softmax(QK^T)V, and the same function, so a checkpoint loads with any implementation.
# Transformers' own `sdpa`, with a mask function that keeps the flash kernels when compiled (models/attention.py).
ATTENTION = attention.register()


@dataclass(frozen=True)
class SpecialTokenIds:
    """The ids a model config and the objectives need to know about (None where a vocabulary has none)."""

    eos: int  # also the separator between documents in the token arrays
    bos: int | None = None
    pad: int | None = None
    unk: int | None = None
    cls: int | None = None
    sep: int | None = None
    mask: int | None = None
    sentinels: tuple[int, ...] = ()  # `<extra_id_0>`, `<extra_id_1>`, …
    all: tuple[int, ...] = ()  # every special id; never masked, never a random replacement

    @property
    def every(self) -> tuple[int, ...]:
        """Every special id, including the roles above even when `all` was not given."""
        roles = (self.eos, self.bos, self.pad, self.unk, self.cls, self.sep, self.mask, *self.sentinels)
        return tuple(sorted({*self.all, *(i for i in roles if i is not None)}))


def build_causal_lm(spec: ModelSpec, *, vocab_size: int, special: SpecialTokenIds) -> PreTrainedModel:
    """A decoder of the given shape with random weights: GPT-2, or Llama (rotary positions, RMSNorm, SwiGLU)."""
    bos = special.bos if special.bos is not None else special.eos
    pad = special.pad if special.pad is not None else special.eos
    if spec.family == "gpt2":
        return generating_within_context(
            spec,
            GPT2LMHeadModel(
                GPT2Config(  # type: ignore[call-arg]  # attn_implementation: a PretrainedConfig keyword
                    vocab_size=vocab_size,
                    n_positions=spec.context_length,
                    n_embd=spec.width,
                    n_layer=spec.layers,
                    n_head=spec.heads,
                    resid_pdrop=spec.dropout,
                    embd_pdrop=spec.dropout,
                    attn_pdrop=spec.dropout,
                    bos_token_id=bos,
                    eos_token_id=special.eos,
                    pad_token_id=pad,
                    tie_word_embeddings=True,
                    attn_implementation=ATTENTION,
                )
            ),
        )
    if spec.family == "llama":
        return generating_within_context(
            spec,
            LlamaForCausalLM(
                LlamaConfig(  # type: ignore[call-arg]
                    vocab_size=vocab_size,
                    hidden_size=spec.width,
                    intermediate_size=swiglu_width(spec.width),
                    num_hidden_layers=spec.layers,
                    num_attention_heads=spec.heads,
                    num_key_value_heads=spec.heads,
                    max_position_embeddings=spec.context_length,
                    attention_dropout=spec.dropout,
                    rms_norm_eps=1e-5,
                    bos_token_id=bos,
                    eos_token_id=special.eos,
                    pad_token_id=pad,
                    tie_word_embeddings=True,
                    attn_implementation=ATTENTION,
                )
            ),
        )
    raise ValueError(f"{spec.family} is not a causal LM family")


def build_encoder(spec: ModelSpec, *, vocab_size: int, special: SpecialTokenIds, head: bool) -> PreTrainedModel:
    """A BERT or RoBERTa encoder with random weights: with the masked-LM head, or bare (with its pooler)."""
    if special.pad is None:
        raise ValueError(f"the {spec.family} family needs a padding token in the vocabulary")
    shape: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=spec.width,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        intermediate_size=4 * spec.width,
        hidden_dropout_prob=spec.dropout,
        attention_probs_dropout_prob=spec.dropout,
        pad_token_id=special.pad,
        tie_word_embeddings=True,
        attn_implementation=ATTENTION,
    )
    if spec.family == "bert":
        bert = BertConfig(max_position_embeddings=spec.context_length, type_vocab_size=2, **shape)
        # The bare encoder keeps BERT's pooler, so a sequence classifier built on it finds every weight.
        return BertForMaskedLM(bert) if head else BertModel(bert)
    if spec.family == "roberta":
        # RoBERTa numbers positions from pad_token_id + 1, so the table needs that many extra rows.
        roberta = RobertaConfig(
            max_position_embeddings=spec.context_length + special.pad + 1,
            type_vocab_size=1,
            bos_token_id=special.bos if special.bos is not None else special.eos,
            eos_token_id=special.eos,
            **shape,
        )
        return RobertaForMaskedLM(roberta) if head else RobertaModel(roberta, add_pooling_layer=False)
    raise ValueError(f"{spec.family} is not an encoder family")


def build_seq2seq(spec: ModelSpec, *, vocab_size: int, special: SpecialTokenIds) -> PreTrainedModel:
    """A T5 encoder-decoder with random weights (each stack `layers` deep; relative positions)."""
    if spec.family != "t5":
        raise ValueError(f"{spec.family} is not a sequence-to-sequence family")
    if special.pad is None:
        raise ValueError("the t5 family needs a padding token in the vocabulary")
    return generating_within_context(
        spec,
        T5ForConditionalGeneration(
            T5Config(  # type: ignore[call-arg]
                vocab_size=vocab_size,
                d_model=spec.width,
                d_kv=spec.width // spec.heads,
                d_ff=4 * spec.width,
                num_layers=spec.layers,
                num_decoder_layers=spec.layers,
                num_heads=spec.heads,
                dropout_rate=spec.dropout,
                feed_forward_proj="relu",
                pad_token_id=special.pad,
                eos_token_id=special.eos,
                # T5 starts decoding from the padding token; `labels=` shifts right with it.
                decoder_start_token_id=special.pad,
                attn_implementation=ATTENTION,
            )
        ),
    )


def build_from_config(config: dict[str, Any], *, auto_class: str, spec: ModelSpec, vocab_size: int) -> PreTrainedModel:
    """A model with random weights exactly as a base's `config.json` describes it (`init_from.model_id`), as the
    stock `auto_class` (`AutoModelForMaskedLM`, …) builds it; its weights are loaded next.

    Kept whole rather than rebuilt from the job's shape: released models often pad their vocabulary past the
    tokenizer's length (to a multiple of 64 or 128), and may choose a feed-forward width or an epsilon that
    `build_*` would not; the weights fit only the config they were saved with. `ValueError` if the config has
    fewer embedding rows than the tokenizer has tokens."""
    settings = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version", "architectures")}
    hf_config: PretrainedConfig = CONFIG_MAPPING[config["model_type"]](**settings)
    rows = int(getattr(hf_config, "vocab_size", 0))
    if rows < vocab_size:
        raise ValueError(f"config.json has vocab_size {rows}, fewer rows than the tokenizer's {vocab_size} tokens")
    model: PreTrainedModel = getattr(transformers, auto_class).from_config(hf_config)
    return generating_within_context(spec, model) if model.can_generate() else model


def generating_within_context(spec: ModelSpec, model: PreTrainedModel) -> PreTrainedModel:
    """Set the model's default generation length (`generation_config.json` `max_length`) to its context length.

    `generate()` and `pipeline("text-generation")` without a length then stop there, instead of running past
    GPT-2's position table (an index error) or past what the model was trained to see.
    """
    model.generation_config.max_length = spec.context_length
    return model


def swiglu_width(width: int) -> int:
    """Llama's feed-forward width: about 8/3 of the model width (same parameters as a 4x MLP), rounded up to 8."""
    return -(-(8 * width // 3) // 8) * 8


def count_parameters(model: PreTrainedModel) -> int:
    """Distinct trainable parameters (tied weights counted once)."""
    seen = {p.data_ptr(): p.numel() for p in model.parameters() if p.requires_grad}
    return sum(seen.values())
