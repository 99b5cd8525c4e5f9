"""What a job spec costs before it runs: exact parameter counts, training FLOPs, tokens per parameter, ETA.

Pure arithmetic on the spec, so the API answers `POST /v1/jobs:estimate` without importing torch. The
parameter counts are written out per family from the stock `transformers` classes that `models/build.py`
builds (tied embeddings counted once, as `models.build.count_parameters` does); tests/api/test_estimate.py
checks them against models built by `models/build.py` and against a trained checkpoint's `selfsup.json`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from models.objectives.span_corruption import SpanCorruptionObjective, span_corruption_lengths
from selfsup.spec import JobSpec, ModelSpec
from selfsup.spec_types import SpecialTokens

# Hoffmann et al. 2022 ("Chinchilla"): compute-optimal training uses about 20 tokens per parameter.
COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER = 20.0
# Within this factor of 20 tokens per parameter a run counts as compute-optimal.
COMPUTE_OPTIMAL_BAND = 2.0

FLOPS_FORMULA = (
    "training FLOPs = (6·N + 6·n_layer·n_ctx·d_model) · D  (Kaplan et al. 2020: forward 2·N + 2·n_layer·n_ctx·d_model "
    "per token, backward twice the forward); N = parameters (tied embeddings once: they are the output "
    "projection), D = total tokens (max_steps × tokens_per_step), n_ctx = model.context_length, d_model = "
    "model.width, n_layer = model.layers. contrastive: twice that (each sentence is encoded twice), N without "
    "the token embedding (a lookup: a bare encoder has no output projection), a sentence counted at its "
    "context_length budget. span_corruption (t5): per example, the encoder's half of the body on the I corrupted "
    "input tokens and the decoder's half and the tied output projection on the T target tokens, "
    "6·(N_body/2·(I + T) + vocab·d_model·T) + 6·n_layer·d_model·(I² + T² + T·I), over the W raw text tokens "
    "that tokens_per_step counts"
)
ETA_METHOD = (
    "eta_seconds = training FLOPs / R, where R is the median over the reference jobs of (median of the job's "
    "recorded tokens_per_second windows × its FLOPs per token): throughput in tokens/s is scaled by the ratio "
    "of FLOPs per token between the reference job's model and this one"
)

# The special tokens each convention puts in a vocabulary (models.tokenization's sets; `gpt2` gains an
# unknown token for char tokenizers, which need one), and where the padding token sits.
_SPECIAL_TOKEN_COUNT: dict[str, int] = {"gpt2": 1, "bert": 5, "roberta": 5, "t5": 3 + 100}
_ROBERTA_PAD_ID = 1  # <s> <pad> </s> <unk> <mask>: the specials come first
# A char vocabulary is the distinct characters of the training split; before any job has tokenized the
# corpora, assume printable ASCII, newline and tab.
ASSUMED_CHARACTERS = 97

Verdict = Literal["under-trained", "compute-optimal", "over-trained"]


def special_token_count(convention: SpecialTokens, *, char: bool) -> int:
    """How many special tokens a vocabulary of this convention holds."""
    return _SPECIAL_TOKEN_COUNT[convention] + (1 if char and convention == "gpt2" else 0)


@dataclass(frozen=True)
class Vocabulary:
    """The vocabulary size a spec's model gets, and whether it is known or assumed."""

    size: int
    approximate: bool
    note: str | None = None


def spec_vocabulary(spec: JobSpec, *, tokenized_size: int | None) -> Vocabulary:
    """The vocabulary: a tokenized dataset's size when one exists for these corpora and tokenizer, else the spec's."""
    tokenizer = spec.tokenizer
    assert tokenizer is not None and tokenizer.special_tokens is not None
    if tokenized_size is not None:
        return Vocabulary(tokenized_size, approximate=False)
    if tokenizer.type == "char":
        size = ASSUMED_CHARACTERS + special_token_count(tokenizer.special_tokens, char=True)
        return Vocabulary(
            size,
            approximate=True,
            note=f"a char vocabulary is the distinct characters of the training split, unknown until a job has "
            f"tokenized these corpora; assumed {ASSUMED_CHARACTERS} (printable ASCII, newline, tab) plus "
            f"{size - ASSUMED_CHARACTERS} special tokens, so the embedding's share of the parameters is approximate",
        )
    vocab_size: int = tokenizer.vocab_size  # type: ignore[union-attr]
    return Vocabulary(
        vocab_size,
        approximate=True,
        note=f"the {tokenizer.type} tokenizer is trained up to vocab_size {vocab_size}; a small corpus can yield "
        "fewer tokens, so the embedding's share of the parameters is an upper bound until a job has tokenized "
        "these corpora",
    )


def parameter_count(model: ModelSpec, *, vocab_size: int, head: bool = True) -> int:
    """Distinct trainable parameters of the model `models/build.py` builds (tied weights counted once).

    `head` is False for the bare encoders contrastive training builds (BERT keeps its pooler).
    """
    d, layers, v, ctx = model.width, model.layers, vocab_size, model.context_length
    embeddings = v * d
    if model.family == "gpt2":
        # wpe, then per block: ln_1, c_attn (d→3d), c_proj, ln_2, c_fc (d→4d), c_proj (4d→d), all with biases.
        return embeddings + ctx * d + layers * (12 * d * d + 13 * d) + 2 * d
    if model.family == "llama":
        hidden = swiglu_width(d)  # q, k, v, o without bias; gate, up, down; two RMSNorms; no position table
        return embeddings + layers * (4 * d * d + 3 * d * hidden + 2 * d) + d
    if model.family in ("bert", "roberta"):
        bert = model.family == "bert"
        positions = ctx if bert else ctx + _ROBERTA_PAD_ID + 1
        token_types = 2 if bert else 1
        encoder = layers * (12 * d * d + 13 * d)  # q, k, v, o, two LayerNorms, 4x MLP, all with biases
        total = embeddings + positions * d + token_types * d + 2 * d + encoder
        if head:
            return total + (d * d + d) + 2 * d + v  # transform dense + LayerNorm; the tied decoder's bias
        return total + (d * d + d if bert else 0)  # BERT's pooler; the bare RoBERTa has none
    if model.family == "t5":
        relative_bias = 32 * model.heads  # 32 buckets, in the first layer of each stack
        encoder = layers * (12 * d * d + 2 * d) + relative_bias + d  # attention 4d², FF 8d², 2 RMSNorms; final norm
        decoder = layers * (16 * d * d + 3 * d) + relative_bias + d  # plus cross-attention and its norm
        return embeddings + encoder + decoder
    raise ValueError(f"no parameter count for family {model.family}")


def spec_parameters(spec: JobSpec, *, vocab_size: int) -> int:
    """The parameter count of the model a job spec trains (contrastive training builds a bare encoder)."""
    return parameter_count(spec.model, vocab_size=vocab_size, head=spec.objective.type != "contrastive")


def swiglu_width(width: int) -> int:
    """Llama's feed-forward width, as `models.build.swiglu_width` computes it."""
    return -(-(8 * width // 3) // 8) * 8


def attention_layers(model: ModelSpec) -> int:
    """Layers that attend over the context: both stacks of a T5."""
    return 2 * model.layers if model.family == "t5" else model.layers


def flops_per_token(model: ModelSpec, parameters: int) -> int:
    """Training FLOPs per token of a model that runs every parameter on every position of its context (a decoder,
    an encoder with its masked-LM head; see `FLOPS_FORMULA`). `job_flops_per_token` is the figure for a job."""
    return 6 * parameters + 6 * attention_layers(model) * model.context_length * model.width


def job_flops_per_token(spec: JobSpec, *, parameters: int, vocab_size: int) -> int:
    """Training FLOPs per token that the job's `tokens_per_step` counts (the `mfu` metric's and the ETA's figure).

    causal_lm and masked_lm run every parameter on each counted token. contrastive encodes each sentence twice and
    has no output projection (its token embedding is only a lookup); a sentence counts as its context_length budget.
    span_corruption counts the raw text tokens W of a window, while T5's encoder reads the I tokens of the corrupted
    input and its decoder writes the T tokens of the target (see `FLOPS_FORMULA`)."""
    model, kind = spec.model, spec.objective.type
    if kind == "contrastive":
        return 2 * flops_per_token(model, parameters - vocab_size * model.width)
    if kind == "span_corruption":
        objective = spec.objective
        assert isinstance(objective, SpanCorruptionObjective)
        raw = spec.tokens_per_sequence
        inputs, targets = span_corruption_lengths(raw, objective.noise_density, objective.mean_span_length)
        d, embedding = model.width, vocab_size * model.width
        # The body splits evenly: per layer the encoder holds 12·d² (attention, feed-forward) and the decoder's
        # cross-attention keys and values 2·d² that read the input; the decoder's other 14·d² run on the target.
        body = parameters - embedding
        matmuls = body // 2 * (inputs + targets) + embedding * targets
        attention = model.layers * d * (inputs * inputs + targets * targets + targets * inputs)
        return round(6 * (matmuls + attention) / raw)
    return flops_per_token(model, parameters)


def compute_optimal_verdict(tokens_per_parameter: float) -> Verdict:
    """Where the run sits against ~20 tokens per parameter (within a factor of 2 counts as compute-optimal)."""
    ratio = tokens_per_parameter / COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER
    if ratio < 1 / COMPUTE_OPTIMAL_BAND:
        return "under-trained"
    if ratio > COMPUTE_OPTIMAL_BAND:
        return "over-trained"
    return "compute-optimal"


@dataclass(frozen=True)
class ReferenceRun:
    """A job that ran: its FLOPs per token and the tokens_per_second windows it recorded."""

    job_id: str
    flops_per_token: int
    tokens_per_second: Sequence[float]

    @property
    def flops_per_second(self) -> float:
        """The job's median window throughput, in FLOPs per second."""
        return statistics.median(self.tokens_per_second) * self.flops_per_token


def eta_seconds(training_flops: int, references: Sequence[ReferenceRun]) -> float:
    """Seconds to train `training_flops` at the reference jobs' median FLOP rate (see `ETA_METHOD`)."""
    return round(training_flops / reference_flops_per_second(references), 1)


def reference_flops_per_second(references: Sequence[ReferenceRun]) -> float:
    """The median of the reference jobs' FLOP rates."""
    return statistics.median(r.flops_per_second for r in references)
