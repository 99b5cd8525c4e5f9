"""Each objective through the real Trainer on a small tokenized Shakespeare: batches, loss, metrics, saving."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import TypeAdapter
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from models.objectives.base import IGNORE_INDEX
from models.objectives.span_corruption import fill_in_sentinels
from selfsup.spec import JobSpec, TokenizerSpec
from tests.factories import write_shakespeare_dataset
from workers.data.token_arrays import TokenArrays
from workers.training.trainer import Trainer

CPU = torch.device("cpu")


def _spec(objective: dict[str, Any], **sections: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "corpus_ids": ["cor_x"],
            "objective": objective,
            "model": {"layers": 1, "heads": 2, "width": 32, "context_length": 24, **sections.pop("model", {})},
            "training": {
                "max_steps": 30,
                "batch_size": 8,
                "learning_rate": 3e-3,
                "warmup_steps": 3,
                **sections.pop("training", {}),
            },
            "evaluation": {"batches": 2},
            **sections,
        }
    )


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, TokenArrays]]:
    """One small dataset per family's default tokenizer (vocabularies kept small for speed)."""
    built = {}
    for name, tokenizer in {
        "bert": {"type": "wordpiece", "vocab_size": 600, "special_tokens": "bert"},
        "roberta": {"type": "bpe", "vocab_size": 400, "special_tokens": "roberta"},
        "t5": {"type": "unigram", "vocab_size": 600, "special_tokens": "t5"},
    }.items():
        folder = tmp_path_factory.mktemp(name)
        spec = TypeAdapter(TokenizerSpec).validate_python(tokenizer)
        built[name] = (folder, write_shakespeare_dataset(folder, spec, n_bytes=40_000))
    return built


def _checkpoint(trainer: Trainer, dataset_folder: Path, folder: Path) -> Path:
    """What the train task writes: the trainer's save, plus the tokenizer files."""
    trainer.save_pretrained(folder)
    for item in (dataset_folder / "tokenizer").iterdir():
        shutil.copyfile(item, folder / item.name)
    return folder


def test_masked_lm_windows_are_wrapped_and_only_chosen_positions_are_labelled(datasets: dict[str, Any]) -> None:
    _, data = datasets["bert"]
    trainer = Trainer(_spec({"type": "masked_lm"}), data, device=CPU)
    inputs, labels = trainer.batch(0, 0)
    special = data.special
    assert inputs.shape == labels.shape == (8, 24)
    assert bool((inputs[:, 0] == special.cls).all()) and bool((inputs[:, -1] == special.sep).all())
    assert bool((labels[:, [0, -1]] == IGNORE_INDEX).all())
    chosen = labels != IGNORE_INDEX
    assert 0 < int(chosen.sum()) < inputs.numel() // 2
    assert not bool(torch.isin(labels[chosen], torch.tensor(special.every)).any())  # specials never chosen
    assert torch.equal(trainer.batch(0, 0)[1], labels)  # a pure function of (seed, step, micro-step)


def test_whole_word_masking_hides_every_piece_of_a_chosen_word(datasets: dict[str, Any]) -> None:
    folder, data = datasets["bert"]
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    continues = {i for i, t in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))) if t[:2] == "##"}
    trainer = Trainer(_spec({"type": "masked_lm", "whole_word": True}), data, device=CPU)
    inputs, labels = trainer.batch(3, 0)
    chosen = labels != IGNORE_INDEX
    original = torch.where(chosen, labels, inputs)
    pairs = 0
    for row in range(len(original)):
        for position in range(1, original.size(1) - 2):
            if int(original[row, position + 1]) in continues:  # the same word goes on
                assert bool(chosen[row, position]) == bool(chosen[row, position + 1])
                pairs += 1
    assert pairs > 10 and bool(chosen.any())


def test_span_corruption_batches_fill_back_into_the_raw_window(datasets: dict[str, Any]) -> None:
    _, data = datasets["t5"]
    trainer = Trainer(_spec({"type": "span_corruption"}), data, device=CPU)
    inputs, labels = trainer.batch(5, 0)
    assert inputs.shape[1] <= 24  # the corrupted input fits the context length
    window = trainer.objective.window  # type: ignore[attr-defined]
    noise = [int((row != IGNORE_INDEX).sum()) for row in labels]
    raw_rows = [
        fill_in_sentinels(row, target, data.special.sentinels, pad_id=data.special.pad)
        for row, target in zip(inputs, labels, strict=True)
    ]
    assert all(len(raw) == window for raw in raw_rows)
    text_tokens = np.asarray(data.train)
    for raw in raw_rows:  # every restored row is a real window of the training array
        starts = np.flatnonzero(text_tokens[: len(text_tokens) - window + 1] == raw[0])
        assert any(list(text_tokens[s : s + window]) == raw for s in starts)
    assert all(n > 1 for n in noise)
    sentinel_zero = data.special.sentinels[0]
    assert bool((labels[:, 0] == sentinel_zero).all())


def test_contrastive_batches_are_distinct_wrapped_sentences(datasets: dict[str, Any]) -> None:
    _, data = datasets["bert"]
    trainer = Trainer(_spec({"type": "contrastive"}), data, device=CPU)
    inputs, labels = trainer.batch(0, 0)
    special = data.special
    assert inputs.shape[0] == 8 and inputs.shape[1] <= 24 and torch.equal(labels, torch.arange(8))
    assert bool((inputs[:, 0] == special.cls).all())
    lengths = (inputs != special.pad).sum(dim=1)
    assert bool((inputs[torch.arange(8), lengths - 1] == special.sep).all())
    assert len({tuple(row.tolist()) for row in inputs}) == 8  # no sentence twice: no false negatives


@pytest.mark.parametrize(
    ("objective", "family", "metric"),
    [
        ({"type": "masked_lm"}, "bert", "masked_accuracy"),
        ({"type": "masked_lm", "whole_word": True}, "roberta", "masked_accuracy"),
        ({"type": "span_corruption"}, "t5", None),
        ({"type": "contrastive"}, "bert", "retrieval_accuracy"),
    ],
)
def test_training_lowers_the_loss_and_reports_the_objectives_metric(
    objective: dict[str, Any], family: str, metric: str | None, datasets: dict[str, Any]
) -> None:
    _, data = datasets[family]
    # 60 steps: at 30, masked LM's drop (0.34-0.47 over seeds, 0.29 once in CI) sat too near the bound.
    steps = 60
    trainer = Trainer(_spec(objective, model={"family": family}, training={"max_steps": steps}), data, device=CPU)
    before = trainer.evaluate()
    results = [trainer.train_step() for _ in range(steps)]
    after = trainer.evaluate()
    assert after < before - 0.3, (before, after)
    assert trainer.tokens_seen == steps * trainer.spec.tokens_per_step
    if metric:
        assert set(results[-1].extra) == {metric} and 0.0 <= results[-1].extra[metric] <= 1.0
        assert set(trainer.last_eval_metrics) == {f"val_{metric}"}
    else:
        assert results[-1].extra == {} and trainer.last_eval_metrics == {}


def test_evaluation_is_repeatable_and_leaves_training_untouched(datasets: dict[str, Any]) -> None:
    _, data = datasets["bert"]
    spec = _spec({"type": "contrastive"})
    # One trainer at a time: dropout draws from the process's torch generator, which the Trainer seeds.
    evaluated = Trainer(spec, data, device=CPU)
    assert evaluated.evaluate() == evaluated.evaluate()  # dropout stays on, with fixed draws
    for _ in range(3):
        evaluated.evaluate()
        evaluated.train_step()
    plain = Trainer(spec, data, device=CPU)
    for _ in range(3):
        plain.train_step()
    for (name, a), b in zip(evaluated.model.state_dict().items(), plain.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_masked_lm_resumes_to_the_same_weights(datasets: dict[str, Any], tmp_path: Path) -> None:
    _, data = datasets["roberta"]
    spec = _spec({"type": "masked_lm"}, model={"family": "roberta", "dropout": 0.1})
    straight = Trainer(spec, data, device=CPU)
    for _ in range(6):
        straight.train_step()
    first = Trainer(spec, data, device=CPU)
    for _ in range(2):
        first.train_step()
    torch.save({"model": first.model.state_dict(), "trainer": first.state_dict()}, tmp_path / "state.pt")
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed = Trainer(spec, data, device=CPU)
    resumed.model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["trainer"])
    for _ in range(4):
        resumed.train_step()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_masked_lm_checkpoint_fills_masks_and_starts_a_classifier(datasets: dict[str, Any], tmp_path: Path) -> None:
    from transformers import pipeline

    folder, data = datasets["bert"]
    trainer = Trainer(_spec({"type": "masked_lm"}), data, device=CPU)
    trainer.train_step()
    checkpoint = _checkpoint(trainer, folder, tmp_path / "ckpt")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    model = AutoModelForMaskedLM.from_pretrained(checkpoint, local_files_only=True)
    filled = pipeline("fill-mask", model=model, tokenizer=tokenizer)(f"hear me {tokenizer.mask_token} .", top_k=3)
    assert len(filled) == 3 and all("token_str" in f for f in filled)
    classifier, info = AutoModelForSequenceClassification.from_pretrained(
        checkpoint, num_labels=2, local_files_only=True, output_loading_info=True
    )
    # New: the classifier, and BERT's pooler (which BERT trains with next-sentence prediction, not masking).
    assert set(info["missing_keys"]) == {
        "classifier.weight",
        "classifier.bias",
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
    }
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(classifier.state_dict()[name], trainer.model.state_dict()[name])


def test_span_corruption_checkpoint_generates_with_the_stock_class(datasets: dict[str, Any], tmp_path: Path) -> None:
    folder, data = datasets["t5"]
    trainer = Trainer(_spec({"type": "span_corruption"}), data, device=CPU)
    trainer.train_step()
    checkpoint = _checkpoint(trainer, folder, tmp_path / "ckpt")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(checkpoint, local_files_only=True)
    inputs = tokenizer("Before we <extra_id_0> any further", return_tensors="pt")
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") in inputs["input_ids"][0].tolist()
    assert model.generate(**inputs, max_new_tokens=4).shape[1] >= 2
    batch = tokenizer(["hear me speak"], text_target=["<extra_id_0> speak"], return_tensors="pt")
    assert torch.isfinite(model(**batch).loss)  # stock fine-tuning code runs as is


def test_contrastive_checkpoint_is_a_sentence_transformers_folder(datasets: dict[str, Any], tmp_path: Path) -> None:
    folder, data = datasets["bert"]
    trainer = Trainer(_spec({"type": "contrastive"}), data, device=CPU)
    trainer.train_step()
    checkpoint = _checkpoint(trainer, folder, tmp_path / "ckpt")
    assert {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"} <= {
        p.name for p in checkpoint.iterdir()
    }
    assert (checkpoint / "1_Pooling" / "config.json").is_file()
    model = AutoModel.from_pretrained(checkpoint, local_files_only=True)
    assert type(model).__name__ == "BertModel"
    classifier, info = AutoModelForSequenceClassification.from_pretrained(
        checkpoint, num_labels=2, local_files_only=True, output_loading_info=True
    )
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
    sentence_transformers = pytest.importorskip("sentence_transformers")
    embedder = sentence_transformers.SentenceTransformer(str(checkpoint), local_files_only=True)
    embeddings = embedder.encode(["Before we proceed any further", "hear me speak"], convert_to_tensor=True)
    assert embeddings.shape == (2, 32)
    # The same mean pooling as training: the embedding equals the trainer's, dropout off.
    trainer.model.eval()
    encoded = AutoTokenizer.from_pretrained(checkpoint)(["hear me speak"], return_tensors="pt")
    with torch.no_grad():
        hidden = trainer.model(**encoded).last_hidden_state
    assert torch.allclose(embeddings[1], hidden.mean(dim=1)[0], atol=1e-5)
