"""The probe's pure parts: the held-out split, and a probe of a real (tiny, untrained) BERT folder."""

from __future__ import annotations

from pathlib import Path

from transformers import BertConfig, BertModel, BertTokenizerFast

from workers.training.probe import LabelledExample, pooled_features, probe_accuracy, split_held_out


def _examples() -> list[LabelledExample]:
    return [LabelledExample(text=f"{label} speech number {i}", label=label) for label in "ab" for i in range(10)] + [
        LabelledExample(text="a lone c", label="c"),
        LabelledExample(text="another c", label="c"),
    ]


def test_the_split_is_deterministic_stratified_and_leaves_every_label_on_both_sides() -> None:
    examples = _examples()
    train, held_out = split_held_out(examples)
    assert sorted(train + held_out) == list(range(len(examples)))
    assert split_held_out(list(reversed(examples)))[1] == sorted(len(examples) - 1 - i for i in held_out)
    for label, count in {"a": 2, "b": 2, "c": 1}.items():
        assert sum(examples[i].label == label for i in held_out) == count
        assert any(examples[i].label == label for i in train)


def test_a_label_written_in_the_text_is_read_by_the_probe(tmp_path: Path) -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "blue", "sky", "sea", "the", "is"]
    BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(tmp_path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    BertModel(config).save_pretrained(tmp_path)
    nouns = ["sky", "sea", "the sky", "the sea", "sky is", "sea is", "the sky is", "the sea is", "is the sky", "is sea"]
    examples = [LabelledExample(text=f"{noun} {colour}", label=colour) for colour in ("red", "blue") for noun in nouns]
    trained = probe_accuracy(tmp_path, examples)
    assert (trained.train_examples, trained.held_out_examples) == (16, 4)
    assert trained.accuracy == 1.0
    baseline = probe_accuracy(tmp_path, examples, random_init_seed=1)
    assert 0.0 <= baseline.accuracy <= 1.0


def test_pooling_and_layer_pick_the_hidden_states_the_probe_reads(tmp_path: Path) -> None:
    import pytest
    import torch

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "blue", "sky", "sea"]
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)})
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2))
    model.eval()
    texts = ["red sky", "blue sea sky sea"]  # different lengths: the shorter one is padded
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch, output_hidden_states=True).hidden_states  # embeddings, block 1, block 2
    mask = batch["attention_mask"].unsqueeze(-1).float()

    def mean(hidden: torch.Tensor) -> torch.Tensor:
        return (hidden * mask).sum(1) / mask.sum(1)

    expected = {
        ("mean", -1): mean(states[2]),
        ("mean", 1): mean(states[1]),
        ("mean", 0): mean(states[0]),
        ("cls", -1): states[2][:, 0],
        ("cls", 1): states[1][:, 0],
    }
    for (pooling, layer), want in expected.items():
        got = pooled_features(model, tokenizer, texts, pooling=pooling, layer=layer)  # type: ignore[arg-type]
        assert torch.allclose(torch.from_numpy(got), want, atol=1e-5), (pooling, layer)
    with pytest.raises(ValueError, match="layers 0 \\(embeddings\\) to 2"):
        pooled_features(model, tokenizer, texts, layer=3)
