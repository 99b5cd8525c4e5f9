"""Contrastive sentence embeddings on a bare BERT or RoBERTa encoder: unsupervised SimCSE.

Unsupervised SimCSE encodes the same sentence twice; dropout makes the two embeddings differ, and the
loss asks each first-pass embedding to pick its own second-pass twin out of the batch.

One example: a random sentence of the documents (`models.sentences.sentence_spans`, stored at
tokenization), cut to ``context_length - 2`` tokens, wrapped like masked_lm, padded to the batch's longest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from models.objectives.base import (
    Batch,
    Forward,
    ObjectiveSpec,
    ObjectiveTraining,
    Split,
    TrainingData,
    deferred,
)
from selfsup.spec_types import ModelFamily, invalid_combination

if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import PreTrainedModel

    from models import build, windows
    from selfsup.spec import JobSpec
else:
    np, torch, F, build, windows = deferred("numpy", "torch", "torch.nn.functional", "models.build", "models.windows")

# Contrastive training without dropout would compare two identical encodings: SimCSE's default.
CONTRASTIVE_DEFAULT_DROPOUT = 0.1


class ContrastiveObjective(ObjectiveSpec):
    """Unsupervised SimCSE: one sentence encoded twice, dropout the only augmentation, in-batch negatives."""

    type: Literal["contrastive"]
    temperature: float = Field(default=0.05, ge=0.001, le=10.0, description="Cosine similarity is divided by it.")
    # Mean by default: from random weights the first position carries little of the sentence for a long
    # while (SimCSE's `cls` assumes a pretrained BERT), so a `cls` run starts with a flat loss.
    pooling: Literal["cls", "mean"] = Field(
        default="mean", description="Sentence embedding: the mean over the tokens, or the first position's state."
    )

    families: ClassVar[tuple[ModelFamily, ...]] = ("bert", "roberta")
    default_dropout: ClassVar[float | None] = CONTRASTIVE_DEFAULT_DROPOUT
    checkpoint_class: ClassVar[str] = "AutoModel"
    eval_metrics: ClassVar[tuple[str, ...]] = ("retrieval_accuracy",)

    def training(self, job: JobSpec, data: TrainingData) -> ContrastiveTraining:
        """Contrastive training bound to a job and its data."""
        return ContrastiveTraining(self, job, data)

    def check_job(self, job: JobSpec) -> None:
        """Refuse a batch with no negatives, and a model without the dropout that makes the two views differ."""
        if job.training.batch_size < 2:
            raise invalid_combination(
                "training.batch_size",
                f"contrastive needs a batch_size of at least 2 for in-batch negatives, not "
                f"{job.training.batch_size}; SimCSE uses 64",
            )
        if job.resources.devices > 1:
            raise invalid_combination(
                "resources.devices",
                "contrastive trains on one device: its in-batch negatives are the whole batch, which a split "
                "across devices would change; leave resources.devices at 1",
            )
        if job.model.dropout <= 0:
            raise invalid_combination(
                "model.dropout",
                "contrastive (unsupervised SimCSE) needs model.dropout above 0: dropout is what makes the "
                f"two encodings of a sentence differ; SimCSE uses {CONTRASTIVE_DEFAULT_DROPOUT}",
            )

    def describe(self) -> str:
        """The model card's sentence: twin encodings, in-batch negatives, temperature and pooling."""
        return (
            "**contrastive sentence embeddings** (unsupervised SimCSE): each sentence of the corpus is encoded "
            "twice with dropout as the only difference, and must pick its twin out of the batch (in-batch "
            f"negatives, cosine similarity / temperature {self.temperature:g}, {self.pooling} "
            "pooling)"
        )

    def describe_example(self, context_length: int) -> str:
        """One sentence, counted at the full budget."""
        return f"one sentence of at most {context_length} tokens, counted as {context_length}"

    def usage_example(self) -> list[str]:
        """Embed with sentence-transformers; start a classifier."""
        return [
            "",
            "# Or, with sentence-transformers installed (the pooling is configured in this folder):",
            "from sentence_transformers import SentenceTransformer",
            "",
            "embedder = SentenceTransformer(path)",
            'embeddings = embedder.encode(["Before we proceed any further, hear me speak.", "Speak, speak."])',
            "# Fine-tune: AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)",
        ]


class ContrastiveTraining(ObjectiveTraining):
    """Unsupervised SimCSE on a bare BERT or RoBERTa encoder; reports `retrieval_accuracy`."""

    evaluate_with_dropout = True
    batch_shape_varies = True  # each batch is padded to its longest sentence

    def __init__(self, parameters: ContrastiveObjective, job: JobSpec, data: TrainingData) -> None:
        super().__init__(job, data)
        self.parameters = parameters
        special = data.special
        if special.pad is None:
            raise ValueError("contrastive needs a vocabulary with a padding token (bert or roberta special tokens)")
        self.pad = special.pad
        self.begin, self.end = windows.encoder_wrapping_ids(special)
        self.batch_size = job.training.batch_size
        for name, spans in (("training", data.train_sentences), ("validation", data.validation_sentences)):
            if spans is None or len(spans) < 2:
                raise ValueError(
                    f"contrastive needs at least 2 sentences of 20 characters or more in the {name} split, "
                    f"found {0 if spans is None else len(spans)}; upload more text"
                )
        # On a mixture, each source's training sentences: a contiguous range of the sorted sentence table.
        self.source_sentences = np.zeros((0, 2), dtype=np.int64)
        if data.sources:
            assert data.train_sentences is not None
            self.source_sentences = sentence_ranges(data.train_sentences, windows.segment_table(data.sources))
            for source, (first, end) in zip(data.sources, self.source_sentences.tolist(), strict=True):
                if source.weight > 0 and end - first < 2:
                    raise ValueError(
                        f"contrastive needs at least 2 sentences of 20 characters or more in source "
                        f"{source.name}'s training split, found {end - first}; upload more text"
                    )

    def build_model(self) -> PreTrainedModel:
        """A bare BERT or RoBERTa encoder (its hidden states are the embeddings)."""
        return build.build_encoder(
            self.job.model, vocab_size=self.data.vocab_size, special=self.data.special, head=False
        )

    def sample(self, split: Split, rng: np.random.Generator, count: int) -> Batch:
        """Distinct wrapped sentences per group of batch_size rows; each row's label is its own index."""
        tokens = self.tokens(split)
        spans = self.data.train_sentences if split == "train" else self.data.validation_sentences
        assert spans is not None
        picks = self.draw_sources(split, rng, count)
        if picks is not None:
            chosen = choose_sentences_by_source(self.source_sentences, picks, group_size=self.batch_size, rng=rng)
        else:
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
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """InfoNCE over the batch's twin encodings, and `retrieval_accuracy`."""
        attention_mask = inputs != self.pad
        if not torch.is_grad_enabled():
            # An evaluation batch is a slice of one longer draw: trim the padding past its own longest row. That
            # reads a count back from the device, so a training step (a `sample` of its own, already padded to its
            # longest row) never does it: the step stays free of host syncs.
            longest = int(attention_mask.sum(dim=1).max())
            inputs, attention_mask = inputs[:, :longest], attention_mask[:, :longest]
        # Both encodings in one forward pass: dropout draws a different mask for each copy.
        hidden = forward(
            input_ids=torch.cat([inputs, inputs]), attention_mask=torch.cat([attention_mask, attention_mask])
        ).last_hidden_state
        pooled = pool_embeddings(hidden, torch.cat([attention_mask, attention_mask]), self.parameters.pooling)
        first, second = pooled.float().chunk(2)
        loss, accuracy = simcse_loss(first, second, self.parameters.temperature)
        return loss, {"retrieval_accuracy": accuracy}

    def save_extras(self, folder: Path) -> None:
        """The sentence-transformers files, so `SentenceTransformer(folder)` loads the encoder and pooling."""
        pooling = self.parameters.pooling
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        pooling_config = {
            "word_embedding_dimension": self.job.model.width,
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


def sentence_ranges(sentences: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """The [first, end) indices into a sorted (n, 2) sentence table of the sentences starting in each segment."""
    return np.searchsorted(np.asarray(sentences[:, 0]), segments, side="left").astype(np.int64).reshape(-1, 2)


def choose_sentences_by_source(
    ranges: np.ndarray, picks: np.ndarray, *, group_size: int, rng: np.random.Generator
) -> np.ndarray:
    """One sentence index per row, from the sentence range of the row's source, distinct within each group.

    Rows keep their order. A source drawn more often in a group than it has sentences fills what it can,
    and the rest of its rows are left out (a repeat would be a false negative).
    """
    chosen = np.full(len(picks), -1, dtype=np.int64)
    for start in range(0, len(picks), group_size):
        group = picks[start : start + group_size]
        for source in np.unique(group):
            rows = start + np.flatnonzero(group == source)
            first, end = (int(x) for x in ranges[source])
            take = min(len(rows), end - first)
            chosen[rows[:take]] = first + rng.choice(end - first, size=take, replace=False)
    return chosen[chosen >= 0]


def pool_embeddings(
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    pooling: Literal["cls", "mean"],
) -> torch.Tensor:
    """Reduce (B, T, H) hidden states to (B, H): position 0 for "cls", mask-weighted mean for "mean"."""
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be (B, T, H); got shape {tuple(hidden_states.shape)}")
    if attention_mask.shape != hidden_states.shape[:2]:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match (B, T) = "
            f"{tuple(hidden_states.shape[:2])}"
        )
    if pooling == "cls":
        return hidden_states[:, 0]
    if pooling == "mean":
        weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
        # clamp: an all-padding row would otherwise divide by zero; it pools to zeros instead.
        counts = weights.sum(dim=1).clamp(min=1.0)
        return (hidden_states * weights).sum(dim=1) / counts
    raise ValueError(f"pooling must be 'cls' or 'mean'; got {pooling!r}")


def simcse_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE on cosine similarity / temperature with in-batch negatives; returns (loss, accuracy)."""
    similarities = _cosine_similarity_matrix(z1, z2) / _check_temperature(temperature)
    # Row i's positive is column i; every other column of the batch is a negative.
    targets = torch.arange(similarities.size(0), device=similarities.device)
    loss = F.cross_entropy(similarities.float(), targets)
    accuracy = (similarities.detach().argmax(dim=1) == targets).float().mean()
    return loss, accuracy


def _cosine_similarity_matrix(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (B, H); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    return F.normalize(z1, dim=-1) @ F.normalize(z2, dim=-1).T


def _check_temperature(temperature: float) -> float:
    if temperature <= 0:
        raise ValueError(f"temperature must be positive; got {temperature}")
    return temperature
