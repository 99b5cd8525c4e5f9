"""The models' attention keeps SDPA's unmasked (flash) call when compiled, and computes what stock `sdpa` does."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models.attention import WHOLE_WINDOW_SDPA, is_whole_window
from models.build import ATTENTION, SpecialTokenIds, build_causal_lm, build_encoder
from selfsup.spec import ModelSpec

SPECIAL = SpecialTokenIds(eos=0, pad=1, cls=2, sep=3, mask=4)


def _model_spec(family: str) -> ModelSpec:
    return ModelSpec.model_validate({"family": family, "layers": 2, "heads": 2, "width": 64, "context_length": 32})


def compiled_sdpa_calls(model: torch.nn.Module, **inputs: Any) -> tuple[list[tuple[bool, bool]], torch.Tensor]:
    """Compile the model with a backend that records each SDPA call of the traced graph: (given a mask, is_causal)."""
    calls: list[tuple[bool, bool]] = []

    def recording(graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Any:
        for node in graph.graph.nodes:
            if node.target is torch.nn.functional.scaled_dot_product_attention:
                calls.append((node.kwargs.get("attn_mask") is not None, bool(node.kwargs.get("is_causal"))))
        return graph.forward

    torch._dynamo.reset()
    logits = torch.compile(model, backend=recording)(**inputs).logits
    return calls, logits


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_compiled_decoder_asks_sdpa_for_causal_attention_without_a_mask(family: str) -> None:
    torch.manual_seed(0)
    model = build_causal_lm(_model_spec(family), vocab_size=40, special=SPECIAL).eval()
    tokens = torch.randint(5, 40, (3, 32))
    assert model.config._attn_implementation == ATTENTION == WHOLE_WINDOW_SDPA

    calls, logits = compiled_sdpa_calls(model, input_ids=tokens, use_cache=False)

    # transformers' stock `sdpa` materialises the mask under torch.compile: [(True, False), (True, False)].
    assert calls == [(False, True), (False, True)]
    model.set_attn_implementation("eager")
    with torch.no_grad():
        written_out = model(input_ids=tokens, use_cache=False).logits
    torch.testing.assert_close(logits, written_out, rtol=1e-5, atol=1e-5)


def test_compiled_stock_sdpa_still_materialises_the_mask_so_the_test_above_means_something() -> None:
    model = build_causal_lm(_model_spec("gpt2"), vocab_size=40, special=SPECIAL).eval()
    model.set_attn_implementation("sdpa")
    calls, _ = compiled_sdpa_calls(model, input_ids=torch.randint(5, 40, (2, 32)), use_cache=False)
    assert calls and all(given_mask for given_mask, _ in calls)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generation_with_a_cache_and_left_padding_matches_stock_sdpa(family: str) -> None:
    torch.manual_seed(0)
    model = build_causal_lm(_model_spec(family), vocab_size=40, special=SPECIAL).eval()
    prompts = torch.tensor([[1, 1, 7, 8, 9], [5, 6, 7, 8, 9]])
    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])

    def generate() -> torch.Tensor:
        return model.generate(prompts, attention_mask=padding, max_new_tokens=6, do_sample=False, pad_token_id=1)

    ours = generate()
    model.set_attn_implementation("sdpa")
    assert torch.equal(ours, generate())


def test_an_encoder_keeps_its_padding_mask_and_drops_an_all_visible_one() -> None:
    torch.manual_seed(0)
    model = build_encoder(_model_spec("bert"), vocab_size=40, special=SPECIAL, head=True).eval()
    tokens = torch.randint(5, 40, (2, 32))
    padding = torch.ones(2, 32, dtype=torch.long)
    padding[0, 20:] = 0

    unpadded, _ = compiled_sdpa_calls(model, input_ids=tokens)
    padded, logits = compiled_sdpa_calls(model, input_ids=tokens, attention_mask=padding)

    assert unpadded == [(False, False), (False, False)]
    assert padded == [(True, False), (True, False)]
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        stock = model(input_ids=tokens, attention_mask=padding).logits
    torch.testing.assert_close(logits, stock, rtol=1e-5, atol=1e-5)


def test_a_saved_config_does_not_name_the_implementation(tmp_path: Any) -> None:
    model = build_causal_lm(_model_spec("gpt2"), vocab_size=40, special=SPECIAL)
    model.save_pretrained(tmp_path)
    assert WHOLE_WINDOW_SDPA not in (tmp_path / "config.json").read_text()


@pytest.mark.parametrize(
    ("arguments", "whole"),
    [
        ({"q_length": 32, "kv_length": 32}, True),
        ({"q_length": 32, "kv_length": 32, "q_offset": 0, "kv_offset": 0, "attention_mask": None}, True),
        ({"q_length": 32, "kv_length": 32, "attention_mask": torch.ones(2, 32, dtype=torch.bool)}, False),
        ({"q_length": 1, "kv_length": 33, "q_offset": 32}, False),  # decoding with a cache
        ({"q_length": 32, "kv_length": 32, "q_offset": torch.tensor(0)}, False),  # a static cache's offset
        ({"q_length": 32, "kv_length": 32, "local_size": 8}, False),  # a sliding window
        ({"cache_position": torch.arange(32), "kv_length": 32}, True),  # transformers before q_length
        ({"cache_position": torch.arange(32, 33), "kv_length": 33}, False),
    ],
)
def test_only_a_whole_unpadded_window_leaves_the_mask_to_sdpa(arguments: dict[str, Any], whole: bool) -> None:
    assert is_whole_window(arguments) is whole
