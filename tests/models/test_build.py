"""Every family builds as the stock `transformers` class of its objective, with the vocabulary's special ids."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertForMaskedLM,
    BertModel,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    RobertaForMaskedLM,
    RobertaModel,
    T5ForConditionalGeneration,
)

from models.build import (
    SpecialTokenIds,
    build_causal_lm,
    build_encoder,
    build_seq2seq,
    count_parameters,
    swiglu_width,
)
from selfsup.spec import ModelSpec

SHAPE = {"layers": 2, "heads": 2, "width": 32, "context_length": 16}


def test_llama_has_rotary_positions_rmsnorm_and_swiglu() -> None:
    model = build_causal_lm(ModelSpec(family="llama", **SHAPE), vocab_size=100, special=SpecialTokenIds(eos=0))
    assert isinstance(model, LlamaForCausalLM)
    config = model.config
    assert config.hidden_act == "silu" and config.intermediate_size == swiglu_width(32) == 88
    assert type(model.model.norm).__name__ == "LlamaRMSNorm"
    assert hasattr(model.model, "rotary_emb") and not hasattr(model.model, "embed_positions")
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, like the gpt2 family
    logits = model(input_ids=torch.randint(1, 100, (2, 16))).logits
    assert logits.shape == (2, 16, 100)


def test_gpt2_is_unchanged() -> None:
    model = build_causal_lm(ModelSpec(**SHAPE), vocab_size=100, special=SpecialTokenIds(eos=0))
    assert isinstance(model, GPT2LMHeadModel) and model.config.n_positions == 16
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_encoders_with_and_without_the_masked_lm_head() -> None:
    bert_ids = SpecialTokenIds(eos=3, pad=0, unk=1, cls=2, sep=3, mask=4)
    bert = build_encoder(ModelSpec(family="bert", **SHAPE), vocab_size=100, special=bert_ids, head=True)
    assert isinstance(bert, BertForMaskedLM) and bert.config.max_position_embeddings == 16
    bare = build_encoder(ModelSpec(family="bert", **SHAPE), vocab_size=100, special=bert_ids, head=False)
    assert isinstance(bare, BertModel) and bare.pooler is not None  # a classifier built on it finds its pooler
    roberta_ids = SpecialTokenIds(eos=2, bos=0, pad=1, unk=3, cls=0, sep=2, mask=4)
    roberta = build_encoder(ModelSpec(family="roberta", **SHAPE), vocab_size=100, special=roberta_ids, head=True)
    assert isinstance(roberta, RobertaForMaskedLM)
    # Positions are numbered from pad + 1, so a full window of 16 needs 18 rows.
    assert roberta.config.max_position_embeddings == 18 and roberta.config.pad_token_id == 1
    assert roberta(input_ids=torch.randint(5, 100, (2, 16))).logits.shape == (2, 16, 100)
    bare_roberta = build_encoder(ModelSpec(family="roberta", **SHAPE), vocab_size=100, special=roberta_ids, head=False)
    assert isinstance(bare_roberta, RobertaModel)


def test_t5_decodes_from_the_padding_token() -> None:
    special = SpecialTokenIds(eos=1, pad=0, unk=2, sentinels=(99, 98))
    model = build_seq2seq(ModelSpec(family="t5", **SHAPE), vocab_size=100, special=special)
    assert isinstance(model, T5ForConditionalGeneration)
    assert model.config.decoder_start_token_id == 0 and model.config.eos_token_id == 1
    assert model.config.num_layers == model.config.num_decoder_layers == 2 and model.config.d_kv == 16


def test_a_family_built_for_the_wrong_objective_is_refused() -> None:
    with pytest.raises(ValueError, match="not a causal LM family"):
        build_causal_lm(ModelSpec(family="bert", **SHAPE), vocab_size=100, special=SpecialTokenIds(eos=0))
    with pytest.raises(ValueError, match="not an encoder family"):
        build_encoder(
            ModelSpec(family="gpt2", **SHAPE), vocab_size=100, special=SpecialTokenIds(eos=0, pad=0), head=True
        )


def test_special_ids_every_collects_the_roles() -> None:
    assert SpecialTokenIds(eos=3, pad=0, cls=2, sep=3, mask=4, sentinels=(9,)).every == (0, 2, 3, 4, 9)


@pytest.mark.parametrize("family", ["gpt2", "llama", "t5"])
def test_generation_stops_at_the_context_length_by_default(family: str) -> None:
    spec = ModelSpec(family=family, **SHAPE)
    special = SpecialTokenIds(eos=1, pad=0, unk=2, sentinels=(99, 98))
    if family == "t5":
        model = build_seq2seq(spec, vocab_size=100, special=special)
    else:
        model = build_causal_lm(spec, vocab_size=100, special=special)
    assert model.generation_config.max_length == 16
    if family == "gpt2":  # past its 16 positions GPT-2 would fail with an index error
        output = model.generate(input_ids=torch.tensor([[5, 6, 7]]), do_sample=False, eos_token_id=None)
        assert output.shape == (1, 16)
