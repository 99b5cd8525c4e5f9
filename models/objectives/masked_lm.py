"""Masked language modelling on BERT or RoBERTa: BERT's 80/10/10 recipe.

Semantics follow transformers' ``DataCollatorForLanguageModeling``: of the non-special tokens,
``mask_probability`` are chosen; a chosen token becomes the mask token with probability
``mask_replace_probability``, a random token with probability ``random_replace_probability``, and
stays unchanged otherwise. Labels hold the original id at chosen positions and ``-100`` elsewhere.

One example: a random window of ``context_length - 2`` tokens wrapped as ``[CLS] … [SEP]`` (``<s> … </s>``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from models.objectives.base import (
    IGNORE_INDEX,
    Batch,
    Forward,
    ObjectiveSpec,
    ObjectiveTraining,
    Split,
    TrainingData,
    deferred,
    percent,
)
from selfsup.spec_types import ModelFamily

if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import PreTrainedModel

    from models import build, windows
    from selfsup.spec import JobSpec
else:
    np, torch, F, build, windows = deferred("numpy", "torch", "torch.nn.functional", "models.build", "models.windows")


class MaskedLMObjective(ObjectiveSpec):
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

    families: ClassVar[tuple[ModelFamily, ...]] = ("bert", "roberta")
    checkpoint_class: ClassVar[str] = "AutoModelForMaskedLM"
    eval_metrics: ClassVar[tuple[str, ...]] = ("masked_accuracy",)
    usage_imports: ClassVar[tuple[str, ...]] = ("pipeline",)

    @model_validator(mode="after")
    def _replacements_fit(self) -> MaskedLMObjective:
        total = self.mask_replace_probability + self.random_replace_probability
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"mask_replace_probability + random_replace_probability is {total:g}; it must not exceed 1 "
                "(BERT uses 0.8 and 0.1, leaving 0.1 of the chosen tokens unchanged)"
            )
        return self

    def training(self, job: JobSpec, data: TrainingData) -> MaskedLMTraining:
        """Masked language modelling bound to a job and its data."""
        return MaskedLMTraining(self, job, data)

    def describe(self) -> str:
        """The model card's sentence: how many tokens are chosen, and what becomes of them."""
        kept = 1 - self.mask_replace_probability - self.random_replace_probability
        return (
            f"**masked language modelling** (BERT's recipe): {percent(self.mask_probability)} of the "
            f"non-special tokens are chosen{' a whole word at a time' if self.whole_word else ''}; of "
            f"those, {percent(self.mask_replace_probability)} become the mask token, "
            f"{percent(self.random_replace_probability)} a random token and {percent(kept)} stay, and the "
            "model predicts the chosen tokens from both sides"
        )

    def usage_example(self) -> list[str]:
        """Fill a mask; start a classifier."""
        return [
            'fill = pipeline("fill-mask", model=model, tokenizer=tokenizer)',
            'print(fill(f"Before we proceed any {tokenizer.mask_token}, hear me speak."))',
            "# Fine-tune: AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)",
        ]


class MaskedLMTraining(ObjectiveTraining):
    """BERT's 80/10/10 masking on BERT or RoBERTa; reports `masked_accuracy`."""

    def __init__(self, parameters: MaskedLMObjective, job: JobSpec, data: TrainingData) -> None:
        super().__init__(job, data)
        self.parameters = parameters
        special = data.special
        if special.mask is None:
            raise ValueError("masked_lm needs a vocabulary with a mask token (bert or roberta special tokens)")
        self.mask_token_id = special.mask
        self.begin, self.end = windows.encoder_wrapping_ids(special)
        self.special_ids = list(special.every)
        self.boundaries: tuple[torch.Tensor, torch.Tensor] | None = None
        if parameters.whole_word:
            if data.word_boundaries is None:
                raise ValueError("whole_word masking needs the dataset's word_boundaries.npy")
            table = torch.from_numpy(np.array(data.word_boundaries, dtype=bool))
            self.boundaries = (table[0], table[1])

    def build_model(self) -> PreTrainedModel:
        """A BERT or RoBERTa encoder with its masked-LM head."""
        return build.build_encoder(
            self.job.model, vocab_size=self.data.vocab_size, special=self.data.special, head=True
        )

    def sample(self, split: Split, rng: np.random.Generator, count: int) -> Batch:
        """Wrapped windows with some tokens hidden; labels at the chosen positions only."""
        batch = self.sample_windows(split, rng, count, window=self.context_length - 2)
        batch = windows.wrap_windows(batch, self.begin, self.end)
        word_ids = None
        if self.boundaries is not None:
            word_ids = word_ids_from_boundaries(
                batch, begins_word=self.boundaries[0], ends_word=self.boundaries[1], special_ids=self.special_ids
            )
        p = self.parameters
        return manufacture_masked_lm_batch(
            batch,
            special_ids=self.special_ids,
            mask_token_id=self.mask_token_id,
            vocab_size=self.data.vocab_size,
            generator=windows.torch_generator(rng),
            mask_probability=p.mask_probability,
            mask_replace_probability=p.mask_replace_probability,
            random_replace_probability=p.random_replace_probability,
            word_ids=word_ids,
        )

    def loss(
        self, forward: Forward, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy at the chosen positions, and `masked_accuracy`."""
        logits = forward(input_ids=inputs).logits
        return masked_lm_loss(logits, labels), {"masked_accuracy": masked_accuracy(logits.detach(), labels)}


def manufacture_masked_lm_batch(
    input_ids: torch.Tensor,
    *,
    special_ids: Collection[int] | torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator,
    mask_probability: float = 0.15,
    mask_replace_probability: float = 0.8,
    random_replace_probability: float = 0.1,
    word_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hide tokens of a (B, T) batch BERT-style and return ``(inputs, labels)``."""
    _check_probability("mask_probability", mask_probability)
    _check_probability("mask_replace_probability", mask_replace_probability)
    _check_probability("random_replace_probability", random_replace_probability)
    if mask_replace_probability + random_replace_probability > 1.0 + 1e-9:
        raise ValueError("mask_replace_probability + random_replace_probability must not exceed 1")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T); got shape {tuple(input_ids.shape)}")
    if input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be torch.long; got {input_ids.dtype}")

    if input_ids.numel() == 0:
        return input_ids.clone(), torch.full_like(input_ids, IGNORE_INDEX)

    # Draws happen on the batch's device, so the generator must live on that device too.
    device = input_ids.device
    special_mask = _special_positions(input_ids, special_ids)
    if word_ids is not None:
        if word_ids.shape != input_ids.shape:
            raise ValueError(f"word_ids shape {tuple(word_ids.shape)} differs from input_ids {tuple(input_ids.shape)}")
        # -1 marks specials/padding in word_ids; treat them exactly like special tokens.
        special_mask = special_mask | (word_ids < 0)
        chosen = _choose_whole_words(word_ids, mask_probability, generator) & ~special_mask
    else:
        draws = torch.rand(input_ids.shape, generator=generator, device=device)
        chosen = (draws < mask_probability) & ~special_mask

    # One uniform draw per token decides its fate: [0, p_mask) -> [MASK], [p_mask, p_mask + p_rand) ->
    # random token, the rest -> unchanged. Same distribution as HF's chained Bernoullis, fewer draws.
    fate = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask_token = chosen & (fate < mask_replace_probability)
    to_random_token = (
        chosen & (fate >= mask_replace_probability) & (fate < mask_replace_probability + random_replace_probability)
    )

    inputs = input_ids.clone()
    inputs[to_mask_token] = mask_token_id
    num_random = int(to_random_token.sum())
    if num_random > 0:
        pool = _random_replacement_pool(input_ids, special_ids, special_mask, mask_token_id, vocab_size)
        picks = torch.randint(len(pool), (num_random,), generator=generator, device=device)
        inputs[to_random_token] = pool.to(device)[picks]

    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[chosen] = input_ids[chosen]
    return inputs, labels


def word_ids_from_boundaries(
    input_ids: torch.Tensor,
    *,
    begins_word: torch.Tensor,
    ends_word: torch.Tensor,
    special_ids: Collection[int],
) -> torch.Tensor:
    """Word index of each token of a (B, T) batch (-1 at specials), for whole-word masking.

    ``begins_word[id]``: the token starts a new word (a WordPiece piece without ``##``, a byte-level or
    unigram token that starts with whitespace). ``ends_word[id]``: the next token starts a new word (a
    token that ends with whitespace). The first token of a row and every token after a special start
    words too. Both tables are bool tensors indexed by token id.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T); got shape {tuple(input_ids.shape)}")
    special = torch.isin(input_ids, torch.tensor(sorted(special_ids), dtype=torch.long, device=input_ids.device))
    starts = begins_word.to(input_ids.device)[input_ids] | special
    after = ends_word.to(input_ids.device)[input_ids[:, :-1]] | special[:, :-1]
    starts[:, 1:] |= after
    starts[:, 0] = True
    word_ids = torch.cumsum(starts.long(), dim=1) - 1
    return word_ids.masked_fill(special, -1)


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over chosen positions (labels != -100); zero, still differentiable, if none."""
    flat_logits = logits.reshape(-1, logits.size(-1))
    flat_labels = labels.reshape(-1)
    # The mean over the chosen positions, worked out on the device (no host sync): cross_entropy's own mean
    # would be NaN on an all-ignored batch, where this is a harmless zero.
    chosen = (flat_labels != IGNORE_INDEX).sum().clamp(min=1)
    return F.cross_entropy(flat_logits.float(), flat_labels, ignore_index=IGNORE_INDEX, reduction="sum") / chosen


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of chosen positions (labels != -100) whose argmax prediction equals the label; 0.0 if none
    (rather than NaN: metrics end up in JSON, which has no NaN). A 0-d tensor on the logits' device."""
    chosen = labels != IGNORE_INDEX
    correct = (logits.argmax(dim=-1) == labels) & chosen
    return correct.sum() / chosen.sum().clamp(min=1)


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1]; got {value}")


def _special_positions(input_ids: torch.Tensor, special_ids: Collection[int] | torch.Tensor) -> torch.Tensor:
    """Bool (B, T) mask of positions that must never be chosen."""
    if isinstance(special_ids, torch.Tensor):
        if special_ids.shape != input_ids.shape:
            raise ValueError(
                f"special mask shape {tuple(special_ids.shape)} differs from input_ids {tuple(input_ids.shape)}"
            )
        return special_ids.to(device=input_ids.device, dtype=torch.bool)
    ids = torch.tensor(sorted(special_ids), dtype=torch.long, device=input_ids.device)
    return torch.isin(input_ids, ids)


def _choose_whole_words(word_ids: torch.Tensor, mask_probability: float, generator: torch.Generator) -> torch.Tensor:
    """Draw once per (row, word) and spread the decision to every piece of that word."""
    batch_size = word_ids.size(0)
    valid = word_ids >= 0
    # Word ids are only unique within a row, so key each word by (row, word id).
    width = int(word_ids.max().clamp(min=0)) + 1
    rows = torch.arange(batch_size, device=word_ids.device).unsqueeze(1)
    keys = rows * width + word_ids.clamp(min=0)
    # unique() sorts, so the draw order (hence the result) depends only on the ids, not on layout.
    unique_keys, inverse = torch.unique(keys[valid], return_inverse=True)
    word_chosen = torch.rand(len(unique_keys), generator=generator, device=word_ids.device) < mask_probability
    chosen = torch.zeros_like(valid)
    chosen[valid] = word_chosen[inverse]
    return chosen


def _random_replacement_pool(
    input_ids: torch.Tensor,
    special_ids: Collection[int] | torch.Tensor,
    special_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
) -> torch.Tensor:
    """Ids a random replacement may take: the vocabulary less specials and the mask token."""
    # A random [CLS]/[PAD] in the middle of text would teach the model nonsense, so exclude specials.
    # Given only a positional mask, the special ids known are those seen at special positions.
    if isinstance(special_ids, torch.Tensor):
        excluded = set(input_ids[special_mask].unique().tolist())
    else:
        excluded = set(special_ids)
    excluded.add(mask_token_id)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    excluded_in_range = [i for i in excluded if 0 <= i < vocab_size]
    if excluded_in_range:
        allowed[torch.tensor(excluded_in_range, dtype=torch.long)] = False
    pool = allowed.nonzero().squeeze(1)
    if len(pool) == 0:
        raise ValueError("no non-special token ids left to draw random replacements from")
    return pool
