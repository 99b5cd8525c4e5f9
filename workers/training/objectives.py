"""Each pretext objective as the trainer drives it: the model it builds, its batches, its loss and metrics.

The pure pieces (masking, span corruption, pooling, the SimCSE loss) live in `models/`; a `Pretext`
here binds one of them to the token arrays and to a model family. Every draw comes from the NumPy
generator the trainer passes in, so a batch is a pure function of (seed, step, micro-step).

How examples are cut from the flat token arrays (documents joined by the end-of-text token):
- causal_lm: random windows of `context_length + 1` tokens; labels are the inputs shifted by one.
- masked_lm: random windows of `context_length - 2` tokens wrapped as `[CLS] … [SEP]` (`<s> … </s>`).
- span_corruption: random windows of the length whose corrupted input fills `context_length`.
- contrastive: random sentences of the documents (`models.contrastive.sentence_spans`, stored at
  tokenization), cut to `context_length - 2` tokens, wrapped like masked_lm, padded to the batch's longest.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from models.build import build_causal_lm, build_encoder, build_seq2seq
from models.causal_lm import causal_lm_loss, gather_windows, manufacture_causal_lm_batch, sample_window_offsets
from models.contrastive import pool_embeddings, simcse_loss
from models.masked_lm import (
    IGNORE_INDEX,
    manufacture_masked_lm_batch,
    masked_accuracy,
    masked_lm_loss,
    word_ids_from_boundaries,
)
from models.span_corruption import manufacture_span_corruption_batch, span_corruption_window_length
from selfsup.spec import (
    CausalLMObjective,
    ContrastiveObjective,
    JobSpec,
    MaskedLMObjective,
    SpanCorruptionObjective,
)

if TYPE_CHECKING:
    from workers.data.token_arrays import TokenArrays

Forward = Callable[..., Any]
Batch = tuple[torch.Tensor, torch.Tensor]
Split = Literal["train", "validation"]


class Pretext:
    """One objective bound to its data: build the model, draw (inputs, labels), score a prediction."""

    # Contrastive evaluation keeps dropout on: without it the two encodings of a sentence are identical.
    evaluate_with_dropout = False

    def __init__(self, spec: JobSpec, data: TokenArrays) -> None:
        self.spec = spec
        self.data = data
        self.context_length = spec.model.context_length

    def build_model(self) -> PreTrainedModel:
        """A randomly initialised model of the spec's family and shape."""
        raise NotImplementedError

    def sample(self, split: Split, rng: np.random.Generator, count: int) -> Batch:
        """`count` examples drawn from a split, as (inputs, labels) on the CPU."""
        raise NotImplementedError

    def tokens(self, split: Split) -> np.ndarray:
        """A split's flat token array."""
        return self.data.train if split == "train" else self.data.validation

    def loss(
        self, forward: Forward, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Predict, score against the labels, and measure the objective's metrics (name → value)."""
        raise NotImplementedError

    def save_extras(self, folder: Path) -> None:
        """Files a checkpoint needs beyond the model and tokenizer (none by default)."""


class CausalLMPretext(Pretext):
    """Next-token prediction on GPT-2 or Llama."""

    def build_model(self) -> PreTrainedModel:
        return build_causal_lm(self.spec.model, vocab_size=self.data.vocab_size, special=self.data.special)

    def sample(self, split: Split, rng: np.random.Generator, count: int) -> Batch:
        tokens, window = self.tokens(split), self.context_length + 1
        offsets = sample_window_offsets(len(tokens), window=window, count=count, rng=rng)
        return manufacture_causal_lm_batch(gather_windows(tokens, offsets, window))

    def loss(
        self, forward: Forward, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = forward(input_ids=inputs, use_cache=False).logits
        return causal_lm_loss(logits, labels), {}


class MaskedLMPretext(Pretext):
    """BERT's 80/10/10 masking on BERT or RoBERTa; reports `masked_accuracy`."""

    def __init__(self, spec: JobSpec, data: TokenArrays) -> None:
        super().__init__(spec, data)
        assert isinstance(spec.objective, MaskedLMObjective)
        self.objective = spec.objective
        special = data.special
        if special.mask is None:
            raise ValueError("masked_lm needs a vocabulary with a mask token (bert or roberta special tokens)")
        self.begin, self.end = _wrapping_ids(special.cls, special.sep, special.bos, special.eos)
        self.special_ids = list(special.every)
        self.boundaries: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.objective.whole_word:
            if data.word_boundaries is None:
                raise ValueError("whole_word masking needs the dataset's word_boundaries.npy")
            table = torch.from_numpy(np.array(data.word_boundaries, dtype=bool))
            self.boundaries = (table[0], table[1])

    def build_model(self) -> PreTrainedModel:
        return build_encoder(self.spec.model, vocab_size=self.data.vocab_size, special=self.data.special, head=True)

    def sample(self, split: Split, rng: np.random.Generator, count: int) -> Batch:
        tokens, window = self.tokens(split), self.context_length - 2
        offsets = sample_window_offsets(len(tokens), window=window, count=count, rng=rng)
        windows = _wrap(gather_windows(tokens, offsets, window), self.begin, self.end)
        word_ids = None
        if self.boundaries is not None:
            word_ids = word_ids_from_boundaries(
                windows, begins_word=self.boundaries[0], ends_word=self.boundaries[1], special_ids=self.special_ids
            )
        o = self.objective
        return manufacture_masked_lm_batch(
            windows,
            special_ids=self.special_ids,
            mask_token_id=int(self.data.special.mask),  # type: ignore[arg-type]
            vocab_size=self.data.vocab_size,
            generator=_torch_generator(rng),
            mask_probability=o.mask_probability,
            mask_replace_probability=o.mask_replace_probability,
            random_replace_probability=o.random_replace_probability,
            word_ids=word_ids,
        )

    def loss(
        self, forward: Forward, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = forward(input_ids=inputs).logits
        return masked_lm_loss(logits, labels), {"masked_accuracy": masked_accuracy(logits.detach(), labels)}


class SpanCorruptionPretext(Pretext):
    """T5's span corruption on T5: sentinels in the input, the hidden spans as the decoder's target."""

    def __init__(self, spec: JobSpec, data: TokenArrays) -> None:
        super().__init__(spec, data)
        assert isinstance(spec.objective, SpanCorruptionObjective)
        self.objective = spec.objective
        if not data.special.sentinels or data.special.pad is None:
            raise ValueError("span_corruption needs a vocabulary with sentinel and padding tokens (t5 special tokens)")
        self.window = span_corruption_window_length(
            self.context_length, self.objective.noise_density, self.objective.mean_span_length
        )

    def build_model(self) -> PreTrainedModel:
        return build_seq2seq(self.spec.model, vocab_size=self.data.vocab_size, special=self.data.special)

    def sample(self, split: Split, rng: np.random.Generator, count: int) -> Batch:
        tokens = self.tokens(split)
        offsets = sample_window_offsets(len(tokens), window=self.window, count=count, rng=rng)
        return manufacture_span_corruption_batch(
            gather_windows(tokens, offsets, self.window),
            noise_density=self.objective.noise_density,
            mean_span_length=self.objective.mean_span_length,
            sentinel_ids=self.data.special.sentinels,
            eos_id=self.data.special.eos,
            pad_id=int(self.data.special.pad),  # type: ignore[arg-type]
            generator=_torch_generator(rng),
        )

    def loss(
        self, forward: Forward, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        pad = int(self.data.special.pad)  # type: ignore[arg-type]
        # T5's decoder reads the target shifted right behind the start token (the padding token).
        decoder_inputs = labels.new_full(labels.shape, pad)
        decoder_inputs[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == IGNORE_INDEX, pad)
        logits = forward(input_ids=inputs, attention_mask=inputs != pad, decoder_input_ids=decoder_inputs).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX), {}


class ContrastivePretext(Pretext):
    """Unsupervised SimCSE on a bare BERT or RoBERTa encoder; reports `retrieval_accuracy`."""

    evaluate_with_dropout = True

    def __init__(self, spec: JobSpec, data: TokenArrays) -> None:
        super().__init__(spec, data)
        assert isinstance(spec.objective, ContrastiveObjective)
        self.objective = spec.objective
        special = data.special
        if special.pad is None:
            raise ValueError("contrastive needs a vocabulary with a padding token (bert or roberta special tokens)")
        self.pad = special.pad
        self.begin, self.end = _wrapping_ids(special.cls, special.sep, special.bos, special.eos)
        self.batch_size = spec.training.batch_size
        for name, spans in (("training", data.train_sentences), ("validation", data.validation_sentences)):
            if spans is None or len(spans) < 2:
                raise ValueError(
                    f"contrastive needs at least 2 sentences of 20 characters or more in the {name} split, "
                    f"found {0 if spans is None else len(spans)}; upload more text"
                )

    def build_model(self) -> PreTrainedModel:
        return build_encoder(self.spec.model, vocab_size=self.data.vocab_size, special=self.data.special, head=False)

    def sample(self, split: Split, rng: np.random.Generator, count: int) -> Batch:
        tokens = self.tokens(split)
        spans = self.data.train_sentences if split == "train" else self.data.validation_sentences
        assert spans is not None
        # Each group of batch_size rows holds distinct sentences: a repeat would be a false negative.
        chosen = np.concatenate(
            [
                rng.choice(len(spans), size=min(self.batch_size, count - start, len(spans)), replace=False)
                for start in range(0, count, self.batch_size)
            ]
        )
        rows = []
        for start, end in spans[chosen]:
            end = min(int(end), int(start) + self.context_length - 2)
            rows.append([self.begin, *np.asarray(tokens[int(start) : end], dtype=np.int64).tolist(), self.end])
        inputs = torch.full((len(rows), max(len(r) for r in rows)), self.pad, dtype=torch.long)
        for i, row in enumerate(rows):
            inputs[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        # Row i's positive is its own second encoding; every other row of the batch is a negative.
        return inputs, torch.arange(len(rows)) % self.batch_size

    def loss(
        self, forward: Forward, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        attention_mask = inputs != self.pad
        longest = int(attention_mask.sum(dim=1).max())
        inputs, attention_mask = inputs[:, :longest], attention_mask[:, :longest]
        # Both encodings in one forward pass: dropout draws a different mask for each copy.
        hidden = forward(
            input_ids=torch.cat([inputs, inputs]), attention_mask=torch.cat([attention_mask, attention_mask])
        ).last_hidden_state
        pooled = pool_embeddings(hidden, torch.cat([attention_mask, attention_mask]), self.objective.pooling)
        first, second = pooled.float().chunk(2)
        loss, accuracy = simcse_loss(first, second, self.objective.temperature)
        return loss, {"retrieval_accuracy": accuracy}

    def save_extras(self, folder: Path) -> None:
        """The sentence-transformers files, so `SentenceTransformer(folder)` loads the encoder and pooling."""
        pooling = self.objective.pooling
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        pooling_config = {
            "word_embedding_dimension": self.spec.model.width,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        }
        files = {
            "modules.json": modules,
            "sentence_bert_config.json": {"max_seq_length": self.context_length, "do_lower_case": False},
            "config_sentence_transformers.json": {
                "__version__": {"pytorch": torch.__version__},
                "prompts": {},
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",
            },
            "1_Pooling/config.json": pooling_config,
        }
        for name, content in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content, indent=2) + "\n")


_PRETEXTS: dict[type, type[Pretext]] = {
    CausalLMObjective: CausalLMPretext,
    MaskedLMObjective: MaskedLMPretext,
    SpanCorruptionObjective: SpanCorruptionPretext,
    ContrastiveObjective: ContrastivePretext,
}


def make_pretext(spec: JobSpec, data: TokenArrays) -> Pretext:
    """The `Pretext` of the spec's objective."""
    return _PRETEXTS[type(spec.objective)](spec, data)


def _wrapping_ids(cls: int | None, sep: int | None, bos: int | None, eos: int) -> tuple[int, int]:
    """The ids that open and close an encoder's example: [CLS] … [SEP], or <s> … </s>."""
    begin = cls if cls is not None else bos
    if begin is None:
        raise ValueError("an encoder objective needs a vocabulary with a [CLS] or <s> token")
    return begin, sep if sep is not None else eos


def _wrap(windows: torch.Tensor, begin: int, end: int) -> torch.Tensor:
    rows = windows.size(0)
    return torch.cat([windows.new_full((rows, 1), begin), windows, windows.new_full((rows, 1), end)], dim=1)


def _torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU torch generator seeded from the batch's NumPy generator (the masking draws come from it)."""
    return torch.Generator().manual_seed(int(rng.integers(2**62)))
