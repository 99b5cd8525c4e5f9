"""The job spec: what a client submits to `POST /v1/jobs`, validated field by field.

Every section refuses unknown fields, and everything but the data (`corpus_ids`, or `dataset_id` for a
curated dataset) and `objective` has a default, so `{"corpus_ids": [...], "objective": {"type": "masked_lm"}}`
is a complete job: the objective picks the model family, and the family picks the tokenizer and its
special tokens.
"""

from __future__ import annotations

import collections
import functools
import operator
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from models.objectives import OBJECTIVES, objective_type
from models.objectives.base import ObjectiveSpec
from selfsup.spec_types import MAX_DEVICES, ModelFamily, Name, SpecialTokens, StrictModel, invalid_combination

# The objective section: one of the registered objectives, told apart by `type`.
if TYPE_CHECKING:
    AnyObjective = ObjectiveSpec
else:
    AnyObjective = Annotated[functools.reduce(operator.or_, OBJECTIVES), Field(discriminator="type")]

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
_TOKENIZER_CLASSES: dict[str, type[StrictModel]] = {
    "char": CharTokenizerSpec,
    "bpe": BPETokenizerSpec,
    "wordpiece": WordPieceTokenizerSpec,
    "unigram": UnigramTokenizerSpec,
}


_DROPOUT_DESCRIPTION = (
    "Default 0, or "
    + ", ".join(
        f"{section.default_dropout} for {objective_type(section)}"
        for section in OBJECTIVES
        if section.default_dropout is not None
    )
    + "."
)


class ModelSpec(StrictModel):
    """The architecture's shape; weights start from a random init unless the job names `init_from`."""

    family: ModelFamily = Field(default="gpt2", description="Default: the objective's (see the README).")
    layers: int = Field(default=4, ge=1, le=96)
    heads: int = Field(default=4, ge=1, le=128)
    width: int = Field(default=128, ge=8, le=16_384)
    context_length: int = Field(default=64, ge=4, le=32_768)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description=_DROPOUT_DESCRIPTION)

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
    compile: bool | Literal["auto"] = Field(
        default="auto",
        description="torch.compile the model's forward: true, false, or auto (on once the first steps show the "
        "rest of the run would take long enough to pay back the warm-up; see workers/training/compiling.py).",
    )
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


# --- issue 13, evalstop: held-out corpora, early stopping, the metric `best` follows ---------------------

MetricMode = Literal["min", "max"]
_METRIC_NAME_PATTERN = r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)?$"
# Held-out metric suffixes are cut so the longest name (`val_retrieval_accuracy/<name>`) fits a metric row.
HELDOUT_NAME_LENGTH = 40


def default_metric_mode(metric: str) -> MetricMode:
    """Accuracies are better higher, everything else (losses, perplexities) lower."""
    return "max" if "accuracy" in metric else "min"


def heldout_metric_names(corpora: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The `<name>` of each held-out corpus's metrics (`val_loss/<name>`), by corpus id, from (id, name) pairs.

    The corpus name with every character outside `A-Z a-z 0-9 _ . -` made `_`, cut to 40 characters; corpora
    whose names come out the same (or empty) are named by their ids instead, so no two share a metric.
    """
    cleaned = {cid: re.sub(r"[^A-Za-z0-9_.\-]", "_", name)[:HELDOUT_NAME_LENGTH] for cid, name in corpora}
    counts = collections.Counter(cleaned.values())
    return {cid: name if name and counts[name] == 1 else cid for cid, name in cleaned.items()}


class EarlyStoppingSpec(StrictModel):
    """End the job (succeeded, with a final checkpoint) once a validation metric stops improving."""

    metric: str = Field(
        default="val_loss",
        max_length=64,
        pattern=_METRIC_NAME_PATTERN,
        description="A validation metric the job records: val_loss, val_perplexity (causal_lm), the objective's "
        "val_ metrics (val_masked_accuracy, val_retrieval_accuracy), or any of these for a held-out corpus "
        "(`val_loss/<name>`).",
    )
    patience: int = Field(ge=1, le=100_000, description="Evaluations in a row without improvement before stopping.")
    min_delta: float = Field(default=0.0, ge=0.0, description="The least change that counts as an improvement.")
    mode: MetricMode | None = Field(
        default=None, description="Whether lower or higher is better. Default: max for accuracies, else min."
    )


class BestCheckpointSpec(StrictModel):
    """Which checkpoint the `best` alias names: the one whose step has the best value of `metric`."""

    metric: str = Field(
        default="val_loss",
        max_length=64,
        pattern=_METRIC_NAME_PATTERN,
        description="Any metric recorded at checkpoint steps: a validation metric, or one written later "
        "(`probe_accuracy/<name>`).",
    )
    mode: MetricMode | None = Field(default=None, description="Default: max for accuracies, else min.")


# --- end of issue 13 evalstop block ---------------------------------------------------------------


class EvaluationSpec(StrictModel):
    """How often and on how many fixed validation windows to measure `val_loss`, on what, and when to stop."""

    every_steps: int = Field(default=250, ge=1)
    batches: int = Field(default=20, ge=1, le=10_000)
    corpus_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list,
        max_length=16,
        description="Held-out corpora (the tenant's own), tokenized with the job's tokenizer and evaluated at every "
        "evaluation as `val_loss/<name>` (and `val_perplexity/<name>` for causal_lm), besides the training data's "
        "validation split. <name> is the corpus name (characters outside A-Z a-z 0-9 _ . - become _, at most 40), "
        "or the corpus id where two names would be the same.",
    )
    early_stopping: EarlyStoppingSpec | None = None


class CheckpointingSpec(StrictModel):
    """How often to save a checkpoint, how many ordinary ones to keep, and which the `best` alias names."""

    every_steps: int = Field(default=500, ge=1)
    keep_last: int = Field(default=3, ge=1, le=1000)
    best: BestCheckpointSpec | None = Field(
        default=None,
        description="Default: early stopping's metric and mode when evaluation.early_stopping is given, else "
        "val_loss, lowest.",
    )


# --- init_from (issue 13, continued pretraining) ---
# The shape a job takes from the checkpoint or model it starts from; `dropout` stays the job's own.
INHERITED_MODEL_FIELDS = ("family", "layers", "heads", "width", "context_length")


class InitFromSpec(StrictModel):
    """Start from trained weights instead of a random init: one of the tenant's checkpoints or uploaded models.

    The job takes the weights, the model shape and the tokenizer from it (leave `model` and `tokenizer` out, or
    give values that agree), and trains with a fresh optimizer and schedule from step 0."""

    checkpoint_id: str | None = Field(default=None, min_length=1, max_length=64, description="A checkpoint (`ckpt_…`).")
    model_id: str | None = Field(default=None, min_length=1, max_length=64, description="An uploaded model (`mdl_…`).")

    @model_validator(mode="after")
    def _exactly_one(self) -> InitFromSpec:
        if (self.checkpoint_id is None) == (self.model_id is None):
            raise invalid_combination("init_from", "name exactly one of checkpoint_id and model_id")
        return self


def parent_conflicts(spec: JobSpec, model: dict[str, Any], tokenizer: dict[str, Any]) -> list[dict[str, str]]:
    """`{field, message}` for each `model` or `tokenizer` field the client gave that contradicts the parent's."""
    source = "the checkpoint or model in init_from"
    problems = []
    for name in INHERITED_MODEL_FIELDS:
        given = getattr(spec.model, name)
        if name in spec.given_model_fields and given != model[name]:
            problems.append(
                {"field": f"model.{name}", "message": f"{source} has {name} {model[name]}, not {given}; leave it out"}
            )
    if spec.given_tokenizer_fields and spec.tokenizer is not None:
        mine = spec.tokenizer.model_dump(mode="json")
        for name in sorted(spec.given_tokenizer_fields):
            if mine.get(name) != tokenizer.get(name):
                problems.append(
                    {
                        "field": f"tokenizer.{name}",
                        "message": f"{source} has tokenizer {name} {tokenizer.get(name)}, not {mine.get(name)}; "
                        "leave tokenizer out to keep the parent's",
                    }
                )
    return problems


def inherit_from_parent(canonical: dict[str, Any], model: dict[str, Any], tokenizer: dict[str, Any]) -> dict[str, Any]:
    """A stored spec with the parent's model shape and tokenizer in place of the job's own (validate it again)."""
    merged = dict(canonical)
    merged["model"] = {**canonical["model"], **{name: model[name] for name in INHERITED_MODEL_FIELDS}}
    merged["tokenizer"] = dict(tokenizer)
    return merged


# --- end init_from ---


# --- probes (issue 13): linear probes of every checkpoint on the tenant's labelled sets ---
PROBE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class ProbeSpec(StrictModel):
    """A linear probe: logistic regression on a checkpoint's frozen, pooled features of a labelled set.

    Its held-out accuracy is the job's metric `probe_accuracy/<name>` at each checkpoint's step, and at step 0
    for the same probe of the random-init model of the job's shape and seed (the baseline to beat)."""

    labelled_set_id: str = Field(min_length=1, max_length=64, description="A labelled set (`POST /v1/labelled-sets`).")
    name: str = Field(
        min_length=1,
        max_length=40,
        pattern=PROBE_NAME_PATTERN,
        description="Names the metric: `probe_accuracy/<name>`. Letters, digits, `_`, `.` and `-`.",
    )
    pooling: Literal["mean", "cls"] = Field(
        default="mean",
        description="Features per text: `mean` of the hidden states over its tokens, or `cls`, the first token's "
        "(BERT's [CLS]; for encoders: a causal model's first token sees nothing else).",
    )
    layer: int = Field(
        default=-1,
        ge=-1,
        le=256,
        description="Whose hidden states: -1 the last layer, k the output of block k (1 to model.layers), 0 the "
        "embeddings.",
    )


def check_probe_names(probes: list[ProbeSpec]) -> list[ProbeSpec]:
    """Probes of one request or job need distinct names (each names its own metric)."""
    names = [p.name for p in probes]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"probe names must be distinct (each names a metric); repeated: {', '.join(repeated)}")
    return probes


ProbeList = Annotated[list[ProbeSpec], Field(max_length=8), AfterValidator(check_probe_names)]
# --- end probes ---


# The `type` values of each tagged section, so error paths can leave the tag out.
UNION_TAGS: dict[str, set[str]] = {
    "objective": {objective_type(section) for section in OBJECTIVES},
    "tokenizer": {"char", "bpe", "wordpiece", "unigram"},
}


def _one_machine(nodes: int) -> int:
    if nodes > 1:
        raise ValueError(
            f"multi-node jobs are not supported yet (resources.nodes is {nodes}): a job trains on the devices of "
            "one machine; ask for up to that many resources.devices and leave nodes at 1"
        )
    return nodes


class ResourcesSpec(StrictModel):
    """What one run of the job occupies: the devices of one machine it trains on together."""

    devices: int = Field(
        default=1,
        ge=1,
        le=MAX_DEVICES,
        description="Devices (GPUs) trained on together, one process each (DistributedDataParallel); the "
        "global batch is split between them, so the count changes the speed, not the loss curve. Only a worker "
        "with at least this many devices (SELFSUP_WORKER_DEVICES) takes the job.",
    )
    nodes: Annotated[int, AfterValidator(_one_machine)] = Field(
        default=1, ge=1, le=64, description="Machines per run; only 1 is supported yet (docs/deploy.md)."
    )


class JobSpec(StrictModel):
    """A pretraining job: which corpora (or curated dataset), which exercise, which model, and how long."""

    name: Name | None = None
    corpus_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="The corpora to train on, uncurated, one weight each. Exactly one of corpus_ids and dataset_id.",
    )
    dataset_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="A curated dataset (`POST /v1/datasets`) to train on, its sources drawn by their weights.",
    )
    objective: AnyObjective
    tokenizer: TokenizerSpec | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    checkpointing: CheckpointingSpec = Field(default_factory=CheckpointingSpec)
    init_from: InitFromSpec | None = Field(
        default=None, description="Start from a checkpoint's or an uploaded model's weights, shape and tokenizer."
    )
    # Which `model` and `tokenizer` fields the client gave (before defaults), to check against `init_from`.
    _given_model: set[str] = PrivateAttr(default_factory=set)
    _given_tokenizer: set[str] = PrivateAttr(default_factory=set)
    probes: ProbeList = Field(
        default_factory=list,
        description="Linear probes of every checkpoint (and of the random-init model, at step 0), on the cpu queue.",
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="The devices the job trains on together (default: one)."
    )
    priority: Literal["low", "normal", "high"] = Field(
        default="normal",
        description="When jobs wait for a trainer: high before normal before low (then the tenant using the fewest "
        "device-seconds lately, then the oldest). `high` needs the tenant's `allow_high_priority` quota.",
    )

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

    @model_serializer(mode="wrap")
    def _leave_out_the_unused_data_field(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A corpus job's stored spec (and so its request fingerprint and lineage) stays what it was.
        dumped: dict[str, Any] = handler(self)
        for data_field in ("corpus_ids", "dataset_id", "init_from"):
            if dumped.get(data_field, ...) is None:
                del dumped[data_field]
        if isinstance(dumped.get("init_from"), dict):
            dumped["init_from"] = {k: v for k, v in dumped["init_from"].items() if v is not None}
        if not dumped.get("probes", True):
            del dumped["probes"]  # a job without probes keeps the spec (and fingerprint) it had before probes
        if dumped.get("resources") == ResourcesSpec().model_dump():
            del dumped["resources"]  # likewise a one-device job, the spec it had before `resources`
        return dumped

    @model_validator(mode="after")
    def _fill_defaults_and_check_the_combination(self) -> JobSpec:
        if self.corpus_ids is None and self.dataset_id is None:
            raise invalid_combination("corpus_ids", "name the data: corpus_ids (a list of corpus ids) or dataset_id")
        if self.corpus_ids is not None and self.dataset_id is not None:
            raise invalid_combination("dataset_id", "name either corpus_ids or dataset_id, not both")
        if self.corpus_ids is not None and len(set(self.corpus_ids)) != len(self.corpus_ids):
            raise ValueError("corpus_ids must not repeat an id")
        self._given_model = set(self.model.model_fields_set)
        self._given_tokenizer = set(self.tokenizer.model_fields_set) if self.tokenizer is not None else set()
        objective = self.objective
        if "family" not in self.model.model_fields_set:
            self.model.family = objective.families[0]
        if objective.default_dropout is not None and "dropout" not in self.model.model_fields_set:
            self.model.dropout = objective.default_dropout
        family = self.model.family
        if self.tokenizer is None:
            default = DEFAULT_TOKENIZER_BY_FAMILY[family]
            self.tokenizer = _TOKENIZER_CLASSES[str(default["type"])].model_validate(default)  # type: ignore[assignment]
        assert self.tokenizer is not None
        wanted = SPECIAL_TOKENS_BY_FAMILY[family]
        if self.tokenizer.special_tokens is None:
            self.tokenizer.special_tokens = wanted
        self._check_combination(wanted)
        self._check_evaluation_metrics()
        devices = self.resources.devices
        if self.training.batch_size % devices:
            raise invalid_combination(
                "training.batch_size",
                f"training.batch_size ({self.training.batch_size}) must be a multiple of resources.devices "
                f"({devices}): each device takes an equal share of the batch",
            )
        return self

    def _check_evaluation_metrics(self) -> None:
        """Held-out corpora, early stopping and the `best` metric (issue 13, evalstop); fills the defaults."""
        evaluation, checkpointing = self.evaluation, self.checkpointing
        if len(set(evaluation.corpus_ids)) != len(evaluation.corpus_ids):
            raise invalid_combination("evaluation.corpus_ids", "evaluation.corpus_ids must not repeat an id")
        for i, corpus_id in enumerate(evaluation.corpus_ids):
            if corpus_id in (self.corpus_ids or []):
                raise invalid_combination(
                    f"evaluation.corpus_ids[{i}]",
                    f"{corpus_id} is a training corpus; its validation split is already measured as val_loss",
                )
        stopping = evaluation.early_stopping
        if stopping is not None:
            problem = self.validation_metric_problem(stopping.metric)
            if problem:
                raise invalid_combination("evaluation.early_stopping.metric", problem)
            if stopping.mode is None:
                stopping.mode = default_metric_mode(stopping.metric)
        if checkpointing.best is None:
            checkpointing.best = (
                BestCheckpointSpec(metric=stopping.metric, mode=stopping.mode)
                if stopping is not None
                else BestCheckpointSpec(metric="val_loss", mode="min")
            )
        best = checkpointing.best
        if best.metric.startswith("val_") and (problem := self.validation_metric_problem(best.metric)):
            raise invalid_combination("checkpointing.best.metric", problem)
        if best.mode is None:
            best.mode = default_metric_mode(best.metric)

    def validation_metrics(self) -> list[str]:
        """The validation metrics every evaluation records on the training data's validation split."""
        objective = self.objective
        names = ["val_loss", *(f"val_{name}" for name in objective.eval_metrics)]
        if objective.reports_perplexity:
            names.append("val_perplexity")
        return names

    def validation_metric_problem(self, metric: str) -> str | None:
        """What is wrong with a validation metric's name, or None; a held-out `<name>` is checked by the API."""
        base, _, heldout = metric.partition("/")
        known = self.validation_metrics()
        if base not in known:
            return f"{base!r} is not a validation metric this job records; it records {', '.join(known)}"
        if heldout and not self.evaluation.corpus_ids:
            return f"{metric!r} names a held-out corpus, but evaluation.corpus_ids is empty"
        return None

    def _check_combination(self, special_tokens: SpecialTokens) -> None:
        objective, family = self.objective, self.model.family
        if family not in objective.families:
            raise invalid_combination(
                "model.family",
                f"objective {objective.type} trains the {_either(objective.families)}, not {family}; "
                f"leave model.family out to get {objective.families[0]}",
            )
        assert self.tokenizer is not None
        if self.tokenizer.special_tokens != special_tokens:
            raise invalid_combination(
                "tokenizer.special_tokens",
                f"the {family} family needs the {special_tokens} special tokens, not "
                f"{self.tokenizer.special_tokens}; leave tokenizer.special_tokens out to get them",
            )
        objective.check_job(self)

    def __eq__(self, other: object) -> bool:
        # Specs are equal when their fields are: which fields the client gave is not part of the spec.
        if not isinstance(other, JobSpec):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]

    @property
    def given_model_fields(self) -> set[str]:
        """The `model` fields the client gave, before defaults were filled in."""
        return self._given_model

    @property
    def given_tokenizer_fields(self) -> set[str]:
        """The `tokenizer` fields the client gave (none when it left `tokenizer` out)."""
        return self._given_tokenizer

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
        return self.objective.tokens_per_sequence(self.model.context_length)


def _either(families: tuple[str, ...]) -> str:
    if len(families) == 1:
        return f"family {families[0]}"
    return "families " + ", ".join(families[:-1]) + f" or {families[-1]}"
