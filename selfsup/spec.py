"""The job spec: what a client submits to `POST /v1/jobs`, validated field by field.

Every section refuses unknown fields, and everything but `corpus_ids` and `objective` has a default,
so `{"corpus_ids": [...], "objective": {"type": "causal_lm"}}` is a complete job.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """A spec section: unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class CausalLMObjective(StrictModel):
    """Next-token prediction: the label of each position is the token after it."""

    type: Literal["causal_lm"]


Objective = Annotated[CausalLMObjective, Field(discriminator="type")]


class CharTokenizerSpec(StrictModel):
    """One token per character seen in the training split, plus the special tokens."""

    type: Literal["char"]


class BPETokenizerSpec(StrictModel):
    """Byte-level BPE (GPT-2 style), trained with Hugging Face `tokenizers` on the training split."""

    type: Literal["bpe"]
    vocab_size: int = Field(default=4096, ge=300, le=262_144, description="Including the special tokens.")


TokenizerSpec = Annotated[CharTokenizerSpec | BPETokenizerSpec, Field(discriminator="type")]

DEFAULT_TOKENIZER_BY_FAMILY: dict[str, dict[str, object]] = {"gpt2": {"type": "bpe", "vocab_size": 4096}}


class ModelSpec(StrictModel):
    """The architecture's shape; weights always start from a random init."""

    family: Literal["gpt2"] = "gpt2"
    layers: int = Field(default=4, ge=1, le=96)
    heads: int = Field(default=4, ge=1, le=128)
    width: int = Field(default=128, ge=8, le=16_384)
    context_length: int = Field(default=64, ge=4, le=32_768)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _width_divides_into_heads(self) -> ModelSpec:
        if self.width % self.heads:
            raise ValueError(
                f"width ({self.width}) must be a multiple of heads ({self.heads}), "
                f"for example width {self.heads * max(1, round(self.width / self.heads))}"
            )
        return self


class TrainingSpec(StrictModel):
    """The optimisation budget and hyperparameters."""

    max_steps: int = Field(default=2000, ge=1, le=10_000_000)
    batch_size: int = Field(default=12, ge=1, le=65_536)
    grad_accum_steps: int = Field(default=1, ge=1, le=1024)
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)
    min_learning_rate: float = Field(default=1e-4, ge=0.0, le=1.0)
    warmup_steps: int | None = Field(
        default=None, ge=0, description="Default: 100, or a tenth of max_steps when that is smaller."
    )
    weight_decay: float = Field(default=0.1, ge=0.0, le=10.0)
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (
        0.9,
        0.99,
    )
    grad_clip: float = Field(default=1.0, ge=0.0, description="Max global gradient norm; 0 disables clipping.")
    seed: int = Field(default=1337, ge=0, le=2**63 - 1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    max_runtime_seconds: float | None = Field(
        default=None, gt=0, description="Checkpoint and fail the job once it has trained this long."
    )
    max_restarts: int = Field(
        default=3, ge=0, le=100, description="Resumes after crashes before the job fails with the last error."
    )

    @model_validator(mode="after")
    def _consistent_schedule(self) -> TrainingSpec:
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(
                f"min_learning_rate ({self.min_learning_rate}) must not exceed learning_rate ({self.learning_rate})"
            )
        if self.warmup_steps is None:
            self.warmup_steps = min(100, self.max_steps // 10)
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed max_steps ({self.max_steps})")
        return self


class EvaluationSpec(StrictModel):
    """How often and on how many fixed validation windows to measure `val_loss`."""

    every_steps: int = Field(default=250, ge=1)
    batches: int = Field(default=20, ge=1, le=10_000)


class CheckpointingSpec(StrictModel):
    """How often to save a checkpoint, and how many ordinary ones to keep."""

    every_steps: int = Field(default=500, ge=1)
    keep_last: int = Field(default=3, ge=1, le=1000)


# The `type` values of each tagged section, so error paths can leave the tag out.
UNION_TAGS: dict[str, set[str]] = {"objective": {"causal_lm"}, "tokenizer": {"char", "bpe"}}


class JobSpec(StrictModel):
    """A pretraining job: which corpora, which exercise, which model, and how long."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    corpus_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1, max_length=64)
    objective: Objective
    tokenizer: TokenizerSpec | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    checkpointing: CheckpointingSpec = Field(default_factory=CheckpointingSpec)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "shakespeare-char",
                    "corpus_ids": ["cor_0123456789abcdef"],
                    "objective": {"type": "causal_lm"},
                    "tokenizer": {"type": "char"},
                    "model": {"family": "gpt2", "layers": 4, "heads": 4, "width": 128, "context_length": 64},
                    "training": {"max_steps": 2000, "batch_size": 12, "learning_rate": 1e-3},
                    "evaluation": {"every_steps": 250, "batches": 20},
                    "checkpointing": {"every_steps": 500, "keep_last": 3},
                }
            ]
        },
    )

    @model_validator(mode="after")
    def _fill_family_defaults(self) -> JobSpec:
        if self.tokenizer is None:
            default = DEFAULT_TOKENIZER_BY_FAMILY[self.model.family]
            self.tokenizer = (CharTokenizerSpec if default["type"] == "char" else BPETokenizerSpec).model_validate(
                default
            )
        if len(set(self.corpus_ids)) != len(self.corpus_ids):
            raise ValueError("corpus_ids must not repeat an id")
        return self

    @property
    def tokens_per_step(self) -> int:
        """Training tokens consumed by one optimizer step."""
        t = self.training
        return t.batch_size * t.grad_accum_steps * self.model.context_length
