"""The job spec: what a client submits to `POST /v1/jobs`, validated field by field.

Every section refuses unknown fields, and everything but `corpus_ids` and `objective` has a default,
so `{"corpus_ids": [...], "objective": {"type": "masked_lm"}}` is a complete job: the objective picks
the model family, and the family picks the tokenizer and its special tokens.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

ModelFamily = Literal["gpt2", "llama", "bert", "roberta", "t5"]
SpecialTokens = Literal["gpt2", "bert", "roberta", "t5"]


class StrictModel(BaseModel):
    """A spec section: unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class CausalLMObjective(StrictModel):
    """Next-token prediction: the label of each position is the token after it."""

    type: Literal["causal_lm"]


class MaskedLMObjective(StrictModel):
    """BERT's recipe: hide some tokens and predict them from both sides."""

    type: Literal["masked_lm"]
    mask_probability: float = Field(
        default=0.15, ge=0.01, le=0.8, description="Share of the non-special tokens chosen for prediction."
    )
    mask_replace_probability: float = Field(
        default=0.8, ge=0.0, le=1.0, description="Share of the chosen tokens replaced by the mask token."
    )
    random_replace_probability: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Share of the chosen tokens replaced by a random token."
    )
    whole_word: bool = Field(default=False, description="Choose whole words: all pieces of a word together.")

    @model_validator(mode="after")
    def _replacements_fit(self) -> MaskedLMObjective:
        total = self.mask_replace_probability + self.random_replace_probability
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"mask_replace_probability + random_replace_probability is {total:g}; it must not exceed 1 "
                "(BERT uses 0.8 and 0.1, leaving 0.1 of the chosen tokens unchanged)"
            )
        return self


class SpanCorruptionObjective(StrictModel):
    """T5's recipe: drop spans of tokens, each replaced by one sentinel, and predict what they hid."""

    type: Literal["span_corruption"]
    noise_density: float = Field(default=0.15, ge=0.01, le=0.5, description="Share of the tokens dropped.")
    mean_span_length: float = Field(default=3.0, ge=1.0, le=32.0, description="Mean length of a dropped span.")


class ContrastiveObjective(StrictModel):
    """Unsupervised SimCSE: one sentence encoded twice, dropout the only augmentation, in-batch negatives."""

    type: Literal["contrastive"]
    temperature: float = Field(default=0.05, ge=0.001, le=10.0, description="Cosine similarity is divided by it.")
    # Mean by default: from random weights the first position carries little of the sentence for a long
    # while (SimCSE's `cls` assumes a pretrained BERT), so a `cls` run starts with a flat loss.
    pooling: Literal["cls", "mean"] = Field(
        default="mean", description="Sentence embedding: the mean over the tokens, or the first position's state."
    )


Objective = Annotated[
    CausalLMObjective | MaskedLMObjective | SpanCorruptionObjective | ContrastiveObjective,
    Field(discriminator="type"),
]

_SPECIAL_TOKENS_DESCRIPTION = (
    "Which family's special tokens the vocabulary carries (gpt2: <|endoftext|>; bert: [PAD] [UNK] [CLS] [SEP] "
    "[MASK]; roberta: <s> <pad> </s> <unk> <mask>; t5: <pad> </s> <unk> and the sentinels <extra_id_0> … "
    "<extra_id_99>). Default: the model family's."
)


class CharTokenizerSpec(StrictModel):
    """One token per character seen in the training split, plus the special tokens."""

    type: Literal["char"]
    special_tokens: SpecialTokens | None = Field(default=None, description=_SPECIAL_TOKENS_DESCRIPTION)


class BPETokenizerSpec(StrictModel):
    """Byte-level BPE (GPT-2 style), trained with Hugging Face `tokenizers` on the training split."""

    type: Literal["bpe"]
    vocab_size: int = Field(default=4096, ge=300, le=262_144, description="Including the special tokens.")
    special_tokens: SpecialTokens | None = Field(default=None, description=_SPECIAL_TOKENS_DESCRIPTION)


class WordPieceTokenizerSpec(StrictModel):
    """WordPiece (BERT style, cased): words split at whitespace and punctuation, pieces after the first marked ##."""

    type: Literal["wordpiece"]
    vocab_size: int = Field(default=4096, ge=200, le=262_144, description="Including the special tokens.")
    special_tokens: SpecialTokens | None = Field(default=None, description=_SPECIAL_TOKENS_DESCRIPTION)


class UnigramTokenizerSpec(StrictModel):
    """Unigram language model (SentencePiece/T5 style): whitespace becomes ▁, pieces may span it."""

    type: Literal["unigram"]
    vocab_size: int = Field(default=4096, ge=300, le=262_144, description="Including the special tokens.")
    special_tokens: SpecialTokens | None = Field(default=None, description=_SPECIAL_TOKENS_DESCRIPTION)


TokenizerSpec = Annotated[
    CharTokenizerSpec | BPETokenizerSpec | WordPieceTokenizerSpec | UnigramTokenizerSpec,
    Field(discriminator="type"),
]

DEFAULT_FAMILY_BY_OBJECTIVE: dict[str, ModelFamily] = {
    "causal_lm": "gpt2",
    "masked_lm": "bert",
    "span_corruption": "t5",
    "contrastive": "bert",
}
FAMILIES_BY_OBJECTIVE: dict[str, tuple[ModelFamily, ...]] = {
    "causal_lm": ("gpt2", "llama"),
    "masked_lm": ("bert", "roberta"),
    "span_corruption": ("t5",),
    "contrastive": ("bert", "roberta"),
}
DEFAULT_TOKENIZER_BY_FAMILY: dict[str, dict[str, object]] = {
    "gpt2": {"type": "bpe", "vocab_size": 4096},
    "llama": {"type": "bpe", "vocab_size": 4096},
    "bert": {"type": "wordpiece", "vocab_size": 4096},
    "roberta": {"type": "bpe", "vocab_size": 4096},
    "t5": {"type": "unigram", "vocab_size": 4096},
}
SPECIAL_TOKENS_BY_FAMILY: dict[str, SpecialTokens] = {
    "gpt2": "gpt2",
    "llama": "gpt2",
    "bert": "bert",
    "roberta": "roberta",
    "t5": "t5",
}
# The sentinel tokens a `t5` vocabulary carries, as in transformers' T5 tokenizers.
T5_SENTINELS = 100
# Contrastive training without dropout would compare two identical encodings: SimCSE's default.
CONTRASTIVE_DEFAULT_DROPOUT = 0.1
_TOKENIZER_CLASSES: dict[str, type[StrictModel]] = {
    "char": CharTokenizerSpec,
    "bpe": BPETokenizerSpec,
    "wordpiece": WordPieceTokenizerSpec,
    "unigram": UnigramTokenizerSpec,
}


class ModelSpec(StrictModel):
    """The architecture's shape; weights always start from a random init."""

    family: ModelFamily = Field(default="gpt2", description="Default: the objective's (see the README).")
    layers: int = Field(default=4, ge=1, le=96)
    heads: int = Field(default=4, ge=1, le=128)
    width: int = Field(default=128, ge=8, le=16_384)
    context_length: int = Field(default=64, ge=4, le=32_768)
    dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description=f"Default 0, or {CONTRASTIVE_DEFAULT_DROPOUT} for contrastive."
    )

    @model_validator(mode="after")
    def _width_divides_into_heads(self) -> ModelSpec:
        if self.width % self.heads:
            raise ValueError(
                f"width ({self.width}) must be a multiple of heads ({self.heads}), "
                f"for example width {self.heads * max(1, round(self.width / self.heads))}"
            )
        if self.family == "llama" and (self.width // self.heads) % 2:
            raise ValueError(
                f"llama's rotary positions need an even head width; width / heads is {self.width // self.heads}, "
                f"so try width {self.width + self.heads} or another number of heads"
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
UNION_TAGS: dict[str, set[str]] = {
    "objective": {"causal_lm", "masked_lm", "span_corruption", "contrastive"},
    "tokenizer": {"char", "bpe", "wordpiece", "unigram"},
}


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
    def _fill_defaults_and_check_the_combination(self) -> JobSpec:
        if len(set(self.corpus_ids)) != len(self.corpus_ids):
            raise ValueError("corpus_ids must not repeat an id")
        objective = self.objective.type
        if "family" not in self.model.model_fields_set:
            self.model.family = DEFAULT_FAMILY_BY_OBJECTIVE[objective]
        if objective == "contrastive" and "dropout" not in self.model.model_fields_set:
            self.model.dropout = CONTRASTIVE_DEFAULT_DROPOUT
        family = self.model.family
        if self.tokenizer is None:
            default = DEFAULT_TOKENIZER_BY_FAMILY[family]
            self.tokenizer = _TOKENIZER_CLASSES[str(default["type"])].model_validate(default)  # type: ignore[assignment]
        assert self.tokenizer is not None
        wanted = SPECIAL_TOKENS_BY_FAMILY[family]
        if self.tokenizer.special_tokens is None:
            self.tokenizer.special_tokens = wanted
        self._check_combination(wanted)
        return self

    def _check_combination(self, special_tokens: SpecialTokens) -> None:
        objective, family = self.objective, self.model.family
        families = FAMILIES_BY_OBJECTIVE[objective.type]
        if family not in families:
            raise _invalid(
                "model.family",
                f"objective {objective.type} trains the {_either(families)}, not {family}; "
                f"leave model.family out to get {DEFAULT_FAMILY_BY_OBJECTIVE[objective.type]}",
            )
        assert self.tokenizer is not None
        if self.tokenizer.special_tokens != special_tokens:
            raise _invalid(
                "tokenizer.special_tokens",
                f"the {family} family needs the {special_tokens} special tokens, not "
                f"{self.tokenizer.special_tokens}; leave tokenizer.special_tokens out to get them",
            )
        if isinstance(objective, ContrastiveObjective):
            if self.training.batch_size < 2:
                raise _invalid(
                    "training.batch_size",
                    f"contrastive needs a batch_size of at least 2 for in-batch negatives, not "
                    f"{self.training.batch_size}; SimCSE uses 64",
                )
            if self.model.dropout <= 0:
                raise _invalid(
                    "model.dropout",
                    "contrastive (unsupervised SimCSE) needs model.dropout above 0: dropout is what makes the "
                    f"two encodings of a sentence differ; SimCSE uses {CONTRASTIVE_DEFAULT_DROPOUT}",
                )
        if isinstance(objective, SpanCorruptionObjective):
            spans = span_corruption_spans(
                self.model.context_length, objective.noise_density, objective.mean_span_length
            )
            if spans > T5_SENTINELS:
                raise _invalid(
                    "objective.mean_span_length",
                    f"noise_density {objective.noise_density:g} and mean_span_length {objective.mean_span_length:g} "
                    f"cut {spans} spans from a window of model.context_length {self.model.context_length}, but the "
                    f"vocabulary has {T5_SENTINELS} sentinels; raise mean_span_length, lower noise_density or "
                    "shorten model.context_length",
                )

    @property
    def tokens_per_step(self) -> int:
        """Training tokens consumed by one optimizer step.

        causal_lm and masked_lm: every position of every window. span_corruption: the raw text tokens a
        window covers (more than context_length, since dropped spans shrink to one sentinel).
        contrastive: the token budget, context_length per sentence; sentences are mostly shorter.
        """
        t = self.training
        return t.batch_size * t.grad_accum_steps * self.tokens_per_sequence

    @property
    def tokens_per_sequence(self) -> int:
        """Text tokens one training example reads (see `tokens_per_step`)."""
        objective = self.objective
        if isinstance(objective, SpanCorruptionObjective):
            return span_corruption_raw_length(
                self.model.context_length, objective.noise_density, objective.mean_span_length
            )
        return self.model.context_length


def span_corruption_spans(inputs_length: int, noise_density: float, mean_span_length: float) -> int:
    """Noise spans (each needs a sentinel) in the raw window whose corrupted input fits `inputs_length`."""
    raw = span_corruption_raw_length(inputs_length, noise_density, mean_span_length)
    return _span_counts(raw, noise_density, mean_span_length)[1]


def span_corruption_raw_length(inputs_length: int, noise_density: float, mean_span_length: float) -> int:
    """Longest raw window whose corrupted input (kept tokens, sentinels, EOS) fits `inputs_length`.

    The arithmetic of `models.span_corruption.span_corruption_window_length`, repeated here without
    torch so the API can validate specs; a unit test checks that the two agree.
    """
    window = max(inputs_length - 1, 0)
    while True:
        noise, spans = _span_counts(window + 1, noise_density, mean_span_length)
        if window + 1 - noise + spans + 1 > inputs_length:
            return window
        window += 1


def _span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    if length < 2:
        return 0, 0
    noise = min(max(round(length * noise_density), 1), length - 1)
    spans = min(max(round(noise / mean_span_length), 1), noise, length - noise)
    return noise, spans


def _either(families: tuple[str, ...]) -> str:
    if len(families) == 1:
        return f"family {families[0]}"
    return "families " + ", ".join(families[:-1]) + f" or {families[-1]}"


def _invalid(field: str, reason: str) -> PydanticCustomError:
    """A cross-field error that names the field to fix (`api.errors` puts `field` in the 422's details)."""
    return PydanticCustomError("invalid_combination", "{reason}", {"field": field, "reason": reason})
