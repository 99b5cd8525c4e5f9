"""A base's shape read back from the `config.json` selfsup writes for each family, and its tokenizer's sha256."""

from __future__ import annotations

import pytest

from models.build import SpecialTokenIds, build_causal_lm, build_encoder, build_seq2seq
from selfsup.spec import ModelSpec
from storage.bases import shape_from_hf_config, tokenizer_sha256

SPECIAL = SpecialTokenIds(eos=0, bos=0, pad=1, unk=2, cls=3, sep=4, mask=5)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert", "roberta", "t5"])
def test_shape_from_hf_config_inverts_the_builder(family: str) -> None:
    spec = ModelSpec(family=family, layers=2, heads=2, width=32, context_length=48)  # type: ignore[arg-type]
    if family in ("gpt2", "llama"):
        model = build_causal_lm(spec, vocab_size=50, special=SPECIAL)
    elif family == "t5":
        model = build_seq2seq(spec, vocab_size=50, special=SPECIAL)
    else:
        model = build_encoder(spec, vocab_size=50, special=SPECIAL, head=True)
    shape = shape_from_hf_config(family, model.config.to_dict())
    expected = spec.model_dump(include={"family", "layers", "heads", "width", "context_length"})
    if family == "t5":  # relative positions: the config has no context length
        expected["context_length"] = 512
    assert shape == expected
    with pytest.raises(ValueError, match="config.json of a"):
        shape_from_hf_config(family, {})


def test_tokenizer_sha256_covers_the_tokenizer_files_only() -> None:
    files = [
        {"name": "tokenizer.json", "sha256": "a"},
        {"name": "tokenizer_config.json", "sha256": "b"},
        {"name": "model.safetensors", "sha256": "c"},
    ]
    same = tokenizer_sha256(files)
    assert same == tokenizer_sha256([*reversed(files[:2]), {"name": "model.safetensors", "sha256": "d"}])
    assert same != tokenizer_sha256([{**files[0], "sha256": "x"}, *files[1:]])


def test_model_base_takes_shape_tokenizer_and_files_from_an_uploaded_model() -> None:
    from types import SimpleNamespace

    from selfsup.spec import JobSpec, inherit_from_parent
    from storage.bases import model_base

    files = [
        {"name": "tokenizer.json", "bytes": 10, "sha256": "a"},
        {"name": "model.safetensors", "bytes": 5, "sha256": "b"},
    ]
    row = SimpleNamespace(id="mdl_1", name="tiny-bert", family="bert", files=files, blob_prefix="models/mdl_1")
    config = {"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 32, "max_position_embeddings": 64}
    base = model_base(row, config={**config, "vocab_size": 1000})  # type: ignore[arg-type]
    assert base["files"][0] == {"name": "tokenizer.json", "size_bytes": 10, "sha256": "a"}
    assert base["tokenizer_sha256"] == tokenizer_sha256(files)
    spec = JobSpec.model_validate(
        {"corpus_ids": ["c"], "objective": {"type": "masked_lm"}, "init_from": {"model_id": "mdl_1"}}
    )
    merged = JobSpec.model_validate(inherit_from_parent(spec.model_dump(mode="json"), base["model"], base["tokenizer"]))
    assert (merged.model.family, merged.model.width, merged.model.context_length) == ("bert", 32, 64)
    assert merged.tokenizer is not None and merged.tokenizer.model_dump() == {
        "type": "wordpiece",
        "vocab_size": 1000,
        "special_tokens": "bert",
    }
    with pytest.raises(ValueError, match="no vocab_size"):
        model_base(row, config=config)  # type: ignore[arg-type]
