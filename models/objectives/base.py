"""What every objective module builds on: the spec section it defines and the training side it binds.

An objective module holds two classes. Its `ObjectiveSpec` subclass is the `objective` section of a job
spec: the parameters and their defaults, the families it trains, the checks that need the whole spec, and
what the model card says about it. Its `ObjectiveTraining` subclass is the objective bound to a job and
its data, as the trainer drives it: the model it builds, its batches, its loss and metrics, the files a
checkpoint needs. `models.objectives.OBJECTIVES` registers the spec sections.

The API validates job specs and must not pay for torch, yet an objective's spec section sits next to its
training code. So objective modules import torch, NumPy, transformers and the modules that use them
through `deferred`: the import happens on first use, in the worker, never when the spec is assembled.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from selfsup.spec_types import ModelFamily, StrictModel

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import PreTrainedModel

    from models import windows
    from models.build import SpecialTokenIds
    from models.windows import MixtureSource
    from selfsup.spec import JobSpec

# The label value that torch's cross-entropy (and transformers) skip.
IGNORE_INDEX = -100

Forward = Callable[..., Any]
Batch = tuple["torch.Tensor", "torch.Tensor"]
Split = Literal["train", "validation"]


class DeferredModule:
    """A module imported on first attribute access (see the module docstring for why)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)


def deferred(*names: str) -> tuple[DeferredModule, ...]:
    """One `DeferredModule` per dotted module name, in order."""
    return tuple(DeferredModule(name) for name in names)


if not TYPE_CHECKING:
    (windows,) = deferred("models.windows")


class TrainingData(Protocol):
    """The tokenized splits an objective draws from (`workers.data.token_arrays.TokenArrays`)."""

    @property
    def train(self) -> np.ndarray: ...

    @property
    def validation(self) -> np.ndarray: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def special(self) -> SpecialTokenIds: ...

    @property
    def train_sentences(self) -> np.ndarray | None: ...

    @property
    def validation_sentences(self) -> np.ndarray | None: ...

    @property
    def word_boundaries(self) -> np.ndarray | None: ...

    @property
    def sources(self) -> tuple[MixtureSource, ...]: ...


class ObjectiveSpec(StrictModel):
    """The `objective` section of a job spec; each objective subclasses it with its own `type` tag."""

    type: str

    # The model families the objective trains, its default first.
    families: ClassVar[tuple[ModelFamily, ...]]
    # `model.dropout` when the client leaves it out; None keeps the model section's default.
    default_dropout: ClassVar[float | None] = None
    # The stock transformers class that loads a checkpoint, and what else the card's example imports.
    checkpoint_class: ClassVar[str]
    usage_imports: ClassVar[tuple[str, ...]] = ()
    # The metrics `loss` reports besides the loss (recorded with a `val_` prefix at each evaluation).
    eval_metrics: ClassVar[tuple[str, ...]] = ()
    # Whether the loss is a mean token cross-entropy whose exp is a perplexity (`val_perplexity`).
    reports_perplexity: ClassVar[bool] = False

    def training(self, job: JobSpec, data: TrainingData) -> ObjectiveTraining:
        """This objective bound to a job and its data, for the trainer."""
        raise NotImplementedError

    def check_job(self, job: JobSpec) -> None:
        """Refuse what the objective cannot train, naming the field (raise `invalid_combination`)."""

    def tokens_per_sequence(self, context_length: int) -> int:
        """Text tokens one training example reads (see `JobSpec.tokens_per_step`)."""
        return context_length

    def describe(self) -> str:
        """The objective and its parameters in a sentence or two, for the model card."""
        raise NotImplementedError

    def describe_example(self, context_length: int) -> str:
        """What one example reads, for the model card's tokens-per-step line."""
        return f"{context_length} tokens"

    def usage_example(self) -> list[str]:
        """Lines of the model card's loading example after the model is loaded."""
        return []


class ObjectiveTraining:
    """One objective bound to a job and its data: build the model, draw (inputs, labels), score a prediction.

    Every draw comes from the NumPy generator the trainer passes in, so a batch is a pure function of
    (seed, step, micro-step). On a weighted mixture of sources, a training batch's first draw is
    `draw_sources` (the trainer replays it to count the tokens each source supplied).
    """

    # Contrastive evaluation keeps dropout on: without it the two encodings of a sentence are identical.
    evaluate_with_dropout: ClassVar[bool] = False
    # Whether a training batch's shape changes from step to step (contrastive pads to each batch's longest
    # sentence): a compiled forward then runs with dynamic shapes, which `training.compile: auto` avoids.
    batch_shape_varies: ClassVar[bool] = False

    def __init__(self, job: JobSpec, data: TrainingData) -> None:
        self.job = job
        self.data = data
        self.context_length = job.model.context_length

    def build_model(self) -> PreTrainedModel:
        """A randomly initialised model of the job's family and shape."""
        raise NotImplementedError

    def build_model_from(self, config: dict[str, Any]) -> PreTrainedModel:
        """A randomly initialised model as an uploaded base's `config.json` describes it (its weights load next),
        of the class this objective's checkpoints load with."""
        from models.build import build_from_config

        return build_from_config(
            config,
            auto_class=type(self.job.objective).checkpoint_class,
            spec=self.job.model,
            vocab_size=self.data.vocab_size,
        )

    def sample(self, split: Split, rng: np.random.Generator, count: int) -> Batch:
        """`count` examples drawn from a split, as (inputs, labels) on the CPU."""
        raise NotImplementedError

    def tokens(self, split: Split) -> np.ndarray:
        """A split's flat token array."""
        return self.data.train if split == "train" else self.data.validation

    def draw_sources(self, split: Split, rng: np.random.Generator, count: int) -> np.ndarray | None:
        """Which mixture source each of `count` examples comes from; None without a mixture or off training."""
        if split != "train" or not self.data.sources:
            return None
        return windows.draw_sources(self.data.sources, count=count, rng=rng)

    def sample_windows(self, split: Split, rng: np.random.Generator, count: int, *, window: int) -> torch.Tensor:
        """`count` windows of a split; on a mixture, each training window inside a source drawn by weight."""
        picks = self.draw_sources(split, rng, count)
        if picks is None:
            return windows.sample_windows(self.tokens(split), window=window, count=count, rng=rng)
        windows.check_sources_hold_a_window(self.data.sources, window)
        segments = windows.segment_table(self.data.sources)[picks]
        return windows.sample_windows(self.tokens(split), window=window, count=count, rng=rng, segments=segments)

    def loss(
        self, forward: Forward, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Predict, score against the labels, and measure the objective's metrics (name → a 0-d tensor, left on
        the device so a training step need not wait for it)."""
        raise NotImplementedError

    def save_extras(self, folder: Path) -> None:
        """Files a checkpoint needs beyond the model and tokenizer (none by default)."""

    def loss_terms(self, labels: torch.Tensor) -> int:
        """How many terms `loss` averages over for these labels: the scored tokens (those not IGNORE_INDEX).

        A job split across devices weighs each device's mean loss by it (`workers/training/ranks.py`)."""
        return int((labels != IGNORE_INDEX).sum())


def percent(fraction: float) -> str:
    """A share as the model card writes it: 0.15 → `15%`."""
    return f"{fraction * 100:.4g}%"
