"""Tests for the T5-style span-corruption objective (models/objectives/span_corruption.py)."""

from __future__ import annotations

import pytest
import torch

from models.objectives.span_corruption import (
    fill_in_sentinels,
    manufacture_span_corruption_batch,
    manufacture_span_corruption_example,
    random_spans_noise_mask,
    span_corruption_lengths,
    span_corruption_spans,
    span_corruption_window_length,
)

EOS_ID = 1
PAD_ID = 0
# Like HF T5: <extra_id_0> is the highest id and later sentinels count down.
SENTINEL_IDS = list(range(32099, 31999, -1))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tokens(length: int, seed: int = 0) -> list[int]:
    return torch.randint(2, 32000, (length,), generator=_generator(10_000 + seed)).tolist()


def _corrupt(tokens: list[int] | torch.Tensor, seed: int, **overrides: float) -> tuple[torch.Tensor, torch.Tensor]:
    return manufacture_span_corruption_example(
        tokens, sentinel_ids=SENTINEL_IDS, eos_id=EOS_ID, generator=_generator(seed), **overrides
    )


def test_worked_example_layout() -> None:
    # Rebuild the expected layout independently from the same noise mask.
    tokens = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    inputs, labels = _corrupt(tokens, seed=0, noise_density=0.3, mean_span_length=1.5)
    noise = random_spans_noise_mask(10, noise_density=0.3, mean_span_length=1.5, generator=_generator(0))
    expected_inputs: list[int] = []
    expected_labels: list[int] = []
    span = -1
    for position, token in enumerate(tokens):
        if bool(noise[position]):
            if position == 0 or not bool(noise[position - 1]):
                span += 1
                expected_inputs.append(SENTINEL_IDS[span])
                expected_labels.append(SENTINEL_IDS[span])
            expected_labels.append(token)
        else:
            expected_inputs.append(token)
    assert inputs.tolist() == expected_inputs + [EOS_ID]
    assert labels.tolist() == expected_labels + [EOS_ID]
    assert span == 1  # round(3 / 1.5) = 2 spans


@pytest.mark.parametrize("length", [2, 3, 7, 20, 64, 128, 513])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_filling_sentinels_back_in_restores_the_original(length: int, seed: int) -> None:
    tokens = _tokens(length, seed)
    inputs, labels = _corrupt(tokens, seed)
    assert fill_in_sentinels(inputs, labels, SENTINEL_IDS) == tokens
    assert fill_in_sentinels(inputs.tolist(), labels.tolist(), SENTINEL_IDS) == tokens


@pytest.mark.parametrize("length", [0, 1])
def test_too_short_sequences_are_left_intact(length: int) -> None:
    tokens = _tokens(length)
    inputs, labels = _corrupt(tokens, seed=0)
    assert inputs.tolist() == tokens + [EOS_ID]
    assert labels.tolist() == [EOS_ID]
    assert fill_in_sentinels(inputs, labels, SENTINEL_IDS) == tokens


def test_outputs_follow_the_t5_shape() -> None:
    for seed in range(20):
        inputs, labels = _corrupt(_tokens(100, seed), seed)
        assert labels[-1] == EOS_ID and inputs[-1] == EOS_ID
        assert labels[0] == SENTINEL_IDS[0]  # the target opens with <extra_id_0>
        sentinels_in_input = [t for t in inputs.tolist() if t in SENTINEL_IDS]
        sentinels_in_labels = [t for t in labels.tolist() if t in SENTINEL_IDS]
        # Sentinels are used in order, once each, on both sides.
        assert sentinels_in_input == SENTINEL_IDS[: len(sentinels_in_input)]
        assert sentinels_in_labels == sentinels_in_input
        assert (len(inputs), len(labels)) == span_corruption_lengths(100, 0.15, 3.0)


def test_noise_fraction_and_span_count_match_the_parameters() -> None:
    noise_tokens = 0
    spans = 0
    total = 0
    for seed in range(200):
        length = 50 + seed  # vary the length so rounding effects average out
        mask = random_spans_noise_mask(length, noise_density=0.15, mean_span_length=3.0, generator=_generator(seed))
        assert mask.shape == (length,) and mask.dtype == torch.bool
        total += length
        noise_tokens += int(mask.sum())
        starts = mask & ~torch.cat([torch.tensor([False]), mask[:-1]])
        spans += int(starts.sum())
        # The count per example is exact, as in T5: round(length * density) and round(noise / mean).
        expected_noise = round(length * 0.15)
        assert int(mask.sum()) == expected_noise
        assert int(starts.sum()) == max(round(expected_noise / 3.0), 1)
    assert noise_tokens / total == pytest.approx(0.15, abs=0.005)
    assert noise_tokens / spans == pytest.approx(3.0, abs=0.2)


def test_same_seed_same_result_and_different_seeds_differ() -> None:
    tokens = _tokens(128)
    first = _corrupt(tokens, seed=5)
    second = _corrupt(tokens, seed=5)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    others = {tuple(_corrupt(tokens, seed=seed)[1].tolist()) for seed in range(6, 12)}
    assert len(others) > 1


def test_accepts_a_tensor_and_rejects_sentinels_in_the_text() -> None:
    tokens = _tokens(40)
    from_list = _corrupt(tokens, seed=1)
    from_tensor = _corrupt(torch.tensor(tokens), seed=1)
    assert torch.equal(from_list[0], from_tensor[0]) and torch.equal(from_list[1], from_tensor[1])
    with pytest.raises(ValueError, match="sentinel"):
        _corrupt(tokens + [SENTINEL_IDS[0]], seed=1)


def test_too_few_sentinels_is_an_error() -> None:
    with pytest.raises(ValueError, match="sentinels"):
        manufacture_span_corruption_example(
            _tokens(200), sentinel_ids=SENTINEL_IDS[:3], eos_id=EOS_ID, generator=_generator(0)
        )


def test_batch_pads_inputs_and_labels_and_round_trips() -> None:
    batch = torch.tensor([_tokens(60, seed) for seed in range(4)])
    attention_mask = torch.ones_like(batch)
    attention_mask[1, 45:] = 0  # a shorter, right-padded row
    attention_mask[3, 20:] = 0
    batch[attention_mask == 0] = PAD_ID
    inputs, labels = manufacture_span_corruption_batch(
        batch,
        sentinel_ids=SENTINEL_IDS,
        eos_id=EOS_ID,
        pad_id=PAD_ID,
        generator=_generator(0),
        attention_mask=attention_mask,
    )
    row_lengths = attention_mask.sum(dim=1).tolist()
    expected = [span_corruption_lengths(n, 0.15, 3.0) for n in row_lengths]
    assert inputs.shape == (4, max(i for i, _ in expected))
    assert labels.shape == (4, max(t for _, t in expected))
    for row, (input_length, target_length) in enumerate(expected):
        assert bool((inputs[row, input_length:] == PAD_ID).all())
        assert bool((inputs[row, :input_length] != PAD_ID).all())
        assert inputs[row, input_length - 1] == EOS_ID
        assert bool((labels[row, target_length:] == -100).all())
        assert labels[row, target_length - 1] == EOS_ID
        original = batch[row, : row_lengths[row]].tolist()
        assert fill_in_sentinels(inputs[row], labels[row], SENTINEL_IDS, pad_id=PAD_ID) == original


def test_batch_is_deterministic_and_matches_the_per_example_function() -> None:
    batch = torch.tensor([_tokens(50, seed) for seed in range(3)])
    arguments = dict(sentinel_ids=SENTINEL_IDS, eos_id=EOS_ID, pad_id=PAD_ID)
    first = manufacture_span_corruption_batch(batch, generator=_generator(9), **arguments)  # type: ignore[arg-type]
    second = manufacture_span_corruption_batch(batch, generator=_generator(9), **arguments)  # type: ignore[arg-type]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    # Rows are corrupted in order from one generator.
    generator = _generator(9)
    for row in range(3):
        inputs, labels = manufacture_span_corruption_example(
            batch[row], sentinel_ids=SENTINEL_IDS, eos_id=EOS_ID, generator=generator
        )
        assert first[0][row, : len(inputs)].tolist() == inputs.tolist()
        assert first[1][row, : len(labels)].tolist() == labels.tolist()


def test_lengths_match_t5_numbers() -> None:
    # T5's standard setting: 568 raw tokens -> 512 encoder tokens and 114 decoder tokens.
    assert span_corruption_lengths(568, 0.15, 3.0) == (512, 114)
    assert span_corruption_window_length(512, 0.15, 3.0) == 568
    for max_inputs in (16, 64, 100, 256):
        window = span_corruption_window_length(max_inputs, 0.15, 3.0)
        assert span_corruption_lengths(window, 0.15, 3.0)[0] <= max_inputs
        assert span_corruption_lengths(window + 1, 0.15, 3.0)[0] > max_inputs


@pytest.mark.parametrize("noise_density", [0.0, 1.0, -0.5])
def test_rejects_bad_noise_density(noise_density: float) -> None:
    with pytest.raises(ValueError):
        span_corruption_lengths(100, noise_density, 3.0)


def test_span_count_is_that_of_the_window_filling_the_inputs() -> None:
    # The spec refuses a context length whose window needs more sentinels than the vocabulary has.
    for context_length in (4, 16, 64, 512):
        for noise_density, mean_span_length in ((0.15, 3.0), (0.5, 1.0), (0.01, 8.0), (0.3, 2.5)):
            window = span_corruption_window_length(context_length, noise_density, mean_span_length)
            inputs, targets = span_corruption_lengths(window, noise_density, mean_span_length)
            # inputs = kept + spans + 1 and targets = noise + spans + 1, with kept + noise = window.
            spans = (inputs + targets - window - 2) // 2
            assert span_corruption_spans(context_length, noise_density, mean_span_length) == spans
