"""Span corruption on T5: T5's recipe, sentinels in the input and the hidden spans as the target.

A fraction ``noise_density`` of the tokens, grouped into spans of mean length ``mean_span_length``,
is cut out of the input; each cut span is replaced by one sentinel id (``sentinel_ids[0]`` for the
first span, ``sentinel_ids[1]`` for the second, ...). The target lists each sentinel followed by the
tokens it stands for, then ``eos_id``. As in T5, the input also ends with ``eos_id``, so the token
sequences given here should not carry an EOS of their own. The work is index shuffling on the CPU
(data-preparation side), so ``generator`` must be a CPU ``torch.Generator``.

Example (noise spans ``[b c]`` and ``[f]``)::

    tokens  a b c d e f
    input   a <s0> d e <s1> </s>
    target  <s0> b c <s1> f </s>

One example: a random window of the length whose corrupted input fills ``context_length``
(`span_corruption_window_length`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

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
from selfsup.spec_types import T5_SENTINELS, ModelFamily, invalid_combination

if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import PreTrainedModel

    from models import build, windows
    from selfsup.spec import JobSpec
else:
    torch, F, build, windows = deferred("torch", "torch.nn.functional", "models.build", "models.windows")


class SpanCorruptionObjective(ObjectiveSpec):
    """T5's recipe: drop spans of tokens, each replaced by one sentinel, and predict what they hid."""

    type: Literal["span_corruption"]
    noise_density: float = Field(default=0.15, ge=0.01, le=0.5, description="Share of the tokens dropped.")
    mean_span_length: float = Field(default=3.0, ge=1.0, le=32.0, description="Mean length of a dropped span.")

    families: ClassVar[tuple[ModelFamily, ...]] = ("t5",)
    checkpoint_class: ClassVar[str] = "AutoModelForSeq2SeqLM"

    def training(self, job: JobSpec, data: TrainingData) -> SpanCorruptionTraining:
        """Span corruption bound to a job and its data."""
        return SpanCorruptionTraining(self, job, data)

    def check_job(self, job: JobSpec) -> None:
        """Refuse a window that would need more sentinels than the vocabulary has."""
        context_length = job.model.context_length
        spans = span_corruption_spans(context_length, self.noise_density, self.mean_span_length)
        if spans > T5_SENTINELS:
            raise invalid_combination(
                "objective.mean_span_length",
                f"noise_density {self.noise_density:g} and mean_span_length {self.mean_span_length:g} "
                f"cut {spans} spans from a window of model.context_length {context_length}, but the "
                f"vocabulary has {T5_SENTINELS} sentinels; raise mean_span_length, lower noise_density or "
                "shorten model.context_length",
            )

    def tokens_per_sequence(self, context_length: int) -> int:
        """The raw tokens a window covers: more than context_length, as a dropped span shrinks to one sentinel."""
        return span_corruption_window_length(context_length, self.noise_density, self.mean_span_length)

    def describe(self) -> str:
        """The model card's sentence: how much is dropped, in spans of what length, and what the decoder writes."""
        return (
            f"**span corruption** (T5's recipe): {percent(self.noise_density)} of the tokens are dropped "
            f"in spans of mean length {self.mean_span_length:g}, each span replaced by one sentinel "
            "(`<extra_id_0>`, `<extra_id_1>`, …); the decoder writes each sentinel followed by the tokens it hid, "
            "then `</s>`"
        )

    def describe_example(self, context_length: int) -> str:
        """A window of text, not a fixed count of tokens."""
        return f"a window of text whose corrupted input fills {context_length} tokens"

    def usage_example(self) -> list[str]:
        """Fill a sentinel; fine-tune as any T5."""
        return [
            'inputs = tokenizer("Before we <extra_id_0> any further, hear me speak.", return_tensors="pt")',
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=10)[0]))",
            "# Fine-tune as any T5: model(**tokenizer(sources, text_target=targets, return_tensors='pt')).loss",
        ]


class SpanCorruptionTraining(ObjectiveTraining):
    """T5's span corruption on T5: sentinels in the input, the hidden spans as the decoder's target."""

    def __init__(self, parameters: SpanCorruptionObjective, job: JobSpec, data: TrainingData) -> None:
        super().__init__(job, data)
        self.parameters = parameters
        if not data.special.sentinels or data.special.pad is None:
            raise ValueError("span_corruption needs a vocabulary with sentinel and padding tokens (t5 special tokens)")
        self.pad = data.special.pad
        self.window = parameters.tokens_per_sequence(self.context_length)

    def build_model(self) -> PreTrainedModel:
        """A T5 encoder-decoder with random weights."""
        return build.build_seq2seq(self.job.model, vocab_size=self.data.vocab_size, special=self.data.special)

    def sample(self, split: Split, rng: np.random.Generator, count: int) -> Batch:
        """Corrupted windows (right-padded) and their targets (padded with -100)."""
        batch = self.sample_windows(split, rng, count, window=self.window)
        return manufacture_span_corruption_batch(
            batch,
            noise_density=self.parameters.noise_density,
            mean_span_length=self.parameters.mean_span_length,
            sentinel_ids=self.data.special.sentinels,
            eos_id=self.data.special.eos,
            pad_id=self.pad,
            generator=windows.torch_generator(rng),
        )

    def loss(
        self, forward: Forward, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The decoder's cross-entropy on the target; no metrics besides the loss."""
        pad = self.pad
        # T5's decoder reads the target shifted right behind the start token (the padding token).
        decoder_inputs = labels.new_full(labels.shape, pad)
        decoder_inputs[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == IGNORE_INDEX, pad)
        logits = forward(input_ids=inputs, attention_mask=inputs != pad, decoder_input_ids=decoder_inputs).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX), {}


def span_corruption_lengths(input_length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """Lengths ``(inputs_length, targets_length)`` the corruption yields for ``input_length`` raw tokens."""
    _check_parameters(noise_density, mean_span_length)
    num_noise_tokens, num_noise_spans = _noise_counts(input_length, noise_density, mean_span_length)
    # Inputs: kept tokens, one sentinel per span, EOS. Targets: one sentinel per span, cut tokens, EOS.
    inputs_length = input_length - num_noise_tokens + num_noise_spans + 1
    targets_length = num_noise_tokens + num_noise_spans + 1
    return inputs_length, targets_length


def span_corruption_window_length(max_inputs_length: int, noise_density: float, mean_span_length: float) -> int:
    """Longest raw token window whose corrupted input fits in ``max_inputs_length`` (T5's sizing rule)."""
    _check_parameters(noise_density, mean_span_length)
    if max_inputs_length < 1:
        raise ValueError(f"max_inputs_length must be at least 1 (room for EOS); got {max_inputs_length}")
    # Spans never outnumber noise tokens, so max_inputs_length - 1 raw tokens always fit; grow from there.
    window = max_inputs_length - 1
    while span_corruption_lengths(window + 1, noise_density, mean_span_length)[0] <= max_inputs_length:
        window += 1
    return window


def span_corruption_spans(max_inputs_length: int, noise_density: float, mean_span_length: float) -> int:
    """Noise spans (each needs a sentinel) in the window whose corrupted input fits ``max_inputs_length``."""
    window = span_corruption_window_length(max_inputs_length, noise_density, mean_span_length)
    return _noise_counts(window, noise_density, mean_span_length)[1]


def random_spans_noise_mask(
    length: int, *, noise_density: float, mean_span_length: float, generator: torch.Generator
) -> torch.Tensor:
    """Bool mask of ``length`` marking noise tokens, following T5's ``random_spans_noise_mask``."""
    _check_parameters(noise_density, mean_span_length)
    num_noise_tokens, num_noise_spans = _noise_counts(length, noise_density, mean_span_length)
    if num_noise_spans == 0:
        return torch.zeros(length, dtype=torch.bool)
    noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans, generator)
    nonnoise_span_lengths = _random_segmentation(length - num_noise_tokens, num_noise_spans, generator)
    # Alternate kept/noise spans, starting with a kept one (as T5 does without random_roll).
    interleaved = torch.stack([nonnoise_span_lengths, noise_span_lengths], dim=1).reshape(-1)
    span_index = torch.repeat_interleave(torch.arange(2 * num_noise_spans), interleaved)
    return span_index % 2 == 1


def manufacture_span_corruption_example(
    tokens: Sequence[int] | torch.Tensor,
    *,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    sentinel_ids: Sequence[int],
    eos_id: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt one token sequence T5-style and return 1-D ``(input_ids, labels)`` long tensors."""
    token_tensor = torch.as_tensor(tokens, dtype=torch.long).reshape(-1).cpu()
    sentinels = torch.as_tensor(list(sentinel_ids), dtype=torch.long)
    if bool(torch.isin(token_tensor, sentinels).any()):
        # A sentinel inside the text would make the target ambiguous (and unrecoverable).
        raise ValueError("tokens contain sentinel ids; sentinels must not occur in the text")
    length = len(token_tensor)
    noise = random_spans_noise_mask(
        length, noise_density=noise_density, mean_span_length=mean_span_length, generator=generator
    )
    eos = torch.tensor([eos_id], dtype=torch.long)
    if not bool(noise.any()):
        # Too short to corrupt (fewer than 2 tokens): nothing is hidden, the target is just EOS.
        return torch.cat([token_tensor, eos]), eos.clone()

    previous_noise = torch.cat([torch.zeros(1, dtype=torch.bool), noise[:-1]])
    span_starts = noise & ~previous_noise
    num_spans = int(span_starts.sum())
    if num_spans > len(sentinels):
        raise ValueError(f"{num_spans} noise spans need as many sentinels; only {len(sentinels)} given")
    # span_of[i] is the index of the noise span that position i belongs to (meaningful where noise).
    span_of = torch.cumsum(span_starts.long(), dim=0) - 1

    # Input: kept tokens in order; each span collapses to its sentinel, placed at the span's start.
    keep_in_input = ~noise | span_starts
    with_sentinels = torch.where(span_starts, sentinels[span_of.clamp(min=0)], token_tensor)
    input_ids = torch.cat([with_sentinels[keep_in_input], eos])

    # Target: noise token k (in order) is preceded by span_of + 1 sentinels, so it sits at k + span_of + 1;
    # sentinel s sits right before the first token of span s.
    noise_positions = noise.nonzero().squeeze(1)
    noise_rank = torch.arange(len(noise_positions))
    noise_span = span_of[noise_positions]
    targets = torch.empty(len(noise_positions) + num_spans, dtype=torch.long)
    targets[noise_rank + noise_span + 1] = token_tensor[noise_positions]
    first_of_span = noise_rank[span_starts[noise_positions]]
    targets[first_of_span + torch.arange(num_spans)] = sentinels[:num_spans]
    labels = torch.cat([targets, eos])
    return input_ids, labels


def manufacture_span_corruption_batch(
    batch: torch.Tensor,
    *,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    sentinel_ids: Sequence[int],
    eos_id: int,
    pad_id: int,
    generator: torch.Generator,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt each row of a (B, T) batch; inputs are right-padded with ``pad_id``, labels with -100."""
    if batch.dim() != 2:
        raise ValueError(f"batch must be (B, T); got shape {tuple(batch.shape)}")
    if attention_mask is not None and attention_mask.shape != batch.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} differs from batch {tuple(batch.shape)}")
    examples = []
    for row_index, row in enumerate(batch):
        # Padding is not text: corrupt only the attended tokens of each row.
        tokens = row if attention_mask is None else row[attention_mask[row_index].bool()]
        examples.append(
            manufacture_span_corruption_example(
                tokens,
                noise_density=noise_density,
                mean_span_length=mean_span_length,
                sentinel_ids=sentinel_ids,
                eos_id=eos_id,
                generator=generator,
            )
        )
    input_ids = _right_pad([inputs for inputs, _ in examples], pad_id)
    labels = _right_pad([targets for _, targets in examples], IGNORE_INDEX)
    return input_ids.to(batch.device), labels.to(batch.device)


def fill_in_sentinels(
    input_ids: Sequence[int] | torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    sentinel_ids: Sequence[int],
    *,
    pad_id: int | None = None,
) -> list[int]:
    """Rebuild the original token sequence from a corrupted input and its target (inverse of corruption)."""
    input_list = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1).tolist()
    label_list = [t for t in torch.as_tensor(labels, dtype=torch.long).reshape(-1).tolist() if t != IGNORE_INDEX]
    if pad_id is not None:
        while input_list and input_list[-1] == pad_id:
            input_list.pop()
    # Both sequences end with the EOS the corruption appended; it is not part of the original.
    input_list = input_list[:-1]
    label_list = label_list[:-1]

    sentinel_set = set(sentinel_ids)
    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for token in label_list:
        if token in sentinel_set:
            current = spans.setdefault(token, [])
        elif current is None:
            raise ValueError("labels must start with a sentinel")
        else:
            current.append(token)

    original: list[int] = []
    for token in input_list:
        if token in sentinel_set:
            if token not in spans:
                raise ValueError(f"sentinel {token} in input_ids has no span in labels")
            original.extend(spans[token])
        else:
            original.append(token)
    return original


def _check_parameters(noise_density: float, mean_span_length: float) -> None:
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must lie in (0, 1); got {noise_density}")
    if mean_span_length <= 0:
        raise ValueError(f"mean_span_length must be positive; got {mean_span_length}")


def _noise_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """``(num_noise_tokens, num_noise_spans)`` for ``length`` tokens, as T5 computes them."""
    if length < 2:
        # One token cannot be split into a kept part and a noise part.
        return 0, 0
    # T5 forces at least one noise and one kept token so both sides of the task exist.
    num_noise_tokens = min(max(round(length * noise_density), 1), length - 1)
    num_nonnoise_tokens = length - num_noise_tokens
    num_noise_spans = max(round(num_noise_tokens / mean_span_length), 1)
    # Each noise span needs a kept span before it, so spans cannot outnumber either kind of token.
    num_noise_spans = min(num_noise_spans, num_noise_tokens, num_nonnoise_tokens)
    return num_noise_tokens, num_noise_spans


def _random_segmentation(num_items: int, num_segments: int, generator: torch.Generator) -> torch.Tensor:
    """Split ``num_items`` into ``num_segments`` non-empty parts uniformly at random; return lengths."""
    # Choosing num_segments - 1 of the num_items - 1 gaps as cuts is what T5's shuffled indicator does.
    cuts = torch.randperm(num_items - 1, generator=generator)[: num_segments - 1] + 1
    boundaries = torch.cat([torch.tensor([0]), cuts.sort().values, torch.tensor([num_items])])
    return boundaries.diff()


def _right_pad(sequences: list[torch.Tensor], value: int) -> torch.Tensor:
    width = max(len(sequence) for sequence in sequences) if sequences else 0
    padded = torch.full((len(sequences), width), value, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = sequence
    return padded
