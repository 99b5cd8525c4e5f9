"""Tests for the BERT-style masked-LM objective (models/objectives/masked_lm.py)."""

from __future__ import annotations

import math

import pytest
import torch

from models.objectives.masked_lm import (
    manufacture_masked_lm_batch,
    masked_accuracy,
    masked_lm_loss,
    word_ids_from_boundaries,
)

VOCAB_SIZE = 1000
PAD_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3
SPECIAL_IDS = {PAD_ID, CLS_ID, SEP_ID, MASK_ID}
FIRST_WORD_ID = 4


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(batch_size: int = 512, length: int = 128, seed: int = 1234) -> torch.Tensor:
    """[CLS] text [SEP] [PAD]...: rows of varying length, text drawn from non-special ids."""
    generator = _generator(seed)
    ids = torch.randint(FIRST_WORD_ID, VOCAB_SIZE, (batch_size, length), generator=generator)
    text_lengths = torch.randint(length // 2, length - 1, (batch_size,), generator=generator)
    for row, text_length in enumerate(text_lengths.tolist()):
        ids[row, 0] = CLS_ID
        ids[row, text_length + 1] = SEP_ID
        ids[row, text_length + 2 :] = PAD_ID
    return ids


def _manufacture(input_ids: torch.Tensor, seed: int = 0, **overrides: object) -> tuple[torch.Tensor, torch.Tensor]:
    arguments: dict[str, object] = dict(
        special_ids=SPECIAL_IDS, mask_token_id=MASK_ID, vocab_size=VOCAB_SIZE, generator=_generator(seed)
    )
    arguments.update(overrides)
    return manufacture_masked_lm_batch(input_ids, **arguments)  # type: ignore[arg-type]


def _within(observed: float, expected: float, trials: int, sigmas: float = 5.0) -> bool:
    """Binomial tolerance: |observed - expected| within `sigmas` standard errors."""
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / trials)


def test_rates_match_the_80_10_10_recipe() -> None:
    original = _batch()
    inputs, labels = _manufacture(original)
    eligible = ~torch.isin(original, torch.tensor(sorted(SPECIAL_IDS)))
    chosen = labels != -100
    num_eligible, num_chosen = int(eligible.sum()), int(chosen.sum())
    assert _within(num_chosen / num_eligible, 0.15, num_eligible)

    became_mask = chosen & (inputs == MASK_ID)
    unchanged = chosen & (inputs == original)
    # A random draw can land on the original id; those count as "unchanged" here (rate 1/996, negligible).
    became_random = chosen & ~became_mask & ~unchanged
    assert _within(int(became_mask.sum()) / num_chosen, 0.8, num_chosen)
    assert _within(int(became_random.sum()) / num_chosen, 0.1, num_chosen)
    assert _within(int(unchanged.sum()) / num_chosen, 0.1, num_chosen)


def test_special_tokens_are_never_chosen_nor_drawn_as_replacements() -> None:
    original = _batch()
    inputs, labels = _manufacture(original)
    special = torch.isin(original, torch.tensor(sorted(SPECIAL_IDS)))
    assert bool((labels[special] == -100).all())
    assert bool((inputs[special] == original[special]).all())
    # Random replacements come from non-special ids: the only special id that can appear at a
    # non-special position is [MASK], and only where a token was chosen.
    appeared_special = ~special & torch.isin(inputs, torch.tensor(sorted(SPECIAL_IDS)))
    assert bool((inputs[appeared_special] == MASK_ID).all())
    assert bool((labels[appeared_special] != -100).all())


def test_labels_and_inputs_agree_with_the_original() -> None:
    original = _batch(batch_size=64)
    inputs, labels = _manufacture(original)
    chosen = labels != -100
    assert bool((labels[chosen] == original[chosen]).all())
    assert bool((inputs[~chosen] == original[~chosen]).all())
    assert inputs.dtype == labels.dtype == torch.long
    assert inputs.shape == labels.shape == original.shape


def test_input_batch_is_not_modified() -> None:
    original = _batch(batch_size=16)
    snapshot = original.clone()
    _manufacture(original)
    assert torch.equal(original, snapshot)


def test_special_positions_may_be_given_as_a_bool_mask() -> None:
    original = _batch(batch_size=64)
    special_mask = torch.isin(original, torch.tensor(sorted(SPECIAL_IDS)))
    by_mask = _manufacture(original, special_ids=special_mask)
    by_ids = _manufacture(original)
    assert torch.equal(by_mask[1], by_ids[1])
    assert bool((by_mask[1][special_mask] == -100).all())


def test_same_seed_same_result_and_different_seed_different_result() -> None:
    original = _batch(batch_size=64)
    first = _manufacture(original, seed=7)
    second = _manufacture(original, seed=7)
    other = _manufacture(original, seed=8)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], other[1])


def _word_ids_for(original: torch.Tensor, seed: int = 99) -> torch.Tensor:
    """Group text tokens into words of 1-4 pieces; -1 for specials and padding."""
    generator = _generator(seed)
    word_ids = torch.full_like(original, -1)
    for row in range(original.size(0)):
        position, word = 0, 0
        while position < original.size(1):
            pieces = int(torch.randint(1, 5, (1,), generator=generator))
            for offset in range(position, min(position + pieces, original.size(1))):
                if int(original[row, offset]) not in SPECIAL_IDS:
                    word_ids[row, offset] = word
            position += pieces
            word += 1
    return word_ids


def test_whole_word_masking_chooses_all_pieces_of_a_word_together() -> None:
    original = _batch(batch_size=256, length=64)
    word_ids = _word_ids_for(original)
    inputs, labels = _manufacture(original, word_ids=word_ids)
    chosen = labels != -100
    num_words = 0
    num_chosen_words = 0
    for row in range(original.size(0)):
        for word in word_ids[row].unique().tolist():
            if word < 0:
                continue
            pieces_chosen = chosen[row][word_ids[row] == word]
            assert bool(pieces_chosen.all()) or not bool(pieces_chosen.any())
            num_words += 1
            num_chosen_words += int(pieces_chosen.all())
    # Words, not pieces, are chosen at the mask probability.
    assert _within(num_chosen_words / num_words, 0.15, num_words)
    assert bool((labels[word_ids < 0] == -100).all())
    assert bool((labels[chosen] == original[chosen]).all())
    assert bool((inputs[~chosen] == original[~chosen]).all())


def test_whole_word_masking_is_deterministic() -> None:
    original = _batch(batch_size=32, length=64)
    word_ids = _word_ids_for(original)
    first = _manufacture(original, seed=3, word_ids=word_ids)
    second = _manufacture(original, seed=3, word_ids=word_ids)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_all_mask_token_when_replace_probability_is_one() -> None:
    original = _batch(batch_size=64)
    inputs, labels = _manufacture(original, mask_replace_probability=1.0, random_replace_probability=0.0)
    chosen = labels != -100
    assert bool((inputs[chosen] == MASK_ID).all())


@pytest.mark.parametrize(
    "overrides",
    [
        {"mask_probability": 1.5},
        {"mask_replace_probability": 0.95, "random_replace_probability": 0.1},
        {"random_replace_probability": -0.1},
    ],
)
def test_rejects_bad_probabilities(overrides: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        _manufacture(_batch(batch_size=2, length=8), **overrides)


def test_loss_and_accuracy_only_count_chosen_positions() -> None:
    labels = torch.tensor([[-100, 5, -100, 7]])
    logits = torch.full((1, 4, 10), -10.0)
    logits[0, 1, 5] = 10.0  # right at a chosen position
    logits[0, 3, 2] = 10.0  # wrong at a chosen position
    logits[0, 0, 9] = 10.0  # unchosen positions must not matter
    assert masked_accuracy(logits, labels) == pytest.approx(0.5)
    loss = masked_lm_loss(logits, labels)
    expected = torch.nn.functional.cross_entropy(logits[0, [1, 3]], torch.tensor([5, 7]))
    assert float(loss) == pytest.approx(float(expected))


def test_loss_and_accuracy_with_nothing_chosen_are_finite() -> None:
    logits = torch.randn(2, 3, 10, requires_grad=True)
    labels = torch.full((2, 3), -100)
    loss = masked_lm_loss(logits, labels)
    assert float(loss.detach()) == 0.0
    loss.backward()  # still part of the graph
    assert masked_accuracy(logits, labels) == 0.0


def test_word_ids_from_wordpiece_style_boundaries() -> None:
    # Ids 4..9: "The" "qu" "##ick" "fox" "##es" ","; WordPiece marks continuations, nothing ends a word.
    begins = torch.tensor([True, True, True, True, True, True, False, True, False, True])
    ends = torch.zeros(10, dtype=torch.bool)
    ids = torch.tensor([[CLS_ID, 4, 5, 6, 7, 8, 9, SEP_ID, PAD_ID]])
    word_ids = word_ids_from_boundaries(ids, begins_word=begins, ends_word=ends, special_ids=SPECIAL_IDS)
    # [CLS] The qu ##ick fox ##es , [SEP] [PAD]
    assert word_ids.tolist() == [[-1, 1, 2, 2, 3, 3, 4, -1, -1]]


def test_word_ids_from_whitespace_style_boundaries() -> None:
    # Byte-level/character style: id 4 " " begins and ends a word; ids 5-7 are letters; id 8 "\n" too.
    begins = torch.tensor([True, True, True, True, True, False, False, False, True])
    ends = torch.tensor([True, True, True, True, True, False, False, False, True])
    ids = torch.tensor([[5, 6, 4, 7, 5, 8, 6, 6]])  # "ab cd\nbb": a leading piece starts a word too
    word_ids = word_ids_from_boundaries(ids, begins_word=begins, ends_word=ends, special_ids=SPECIAL_IDS)
    assert word_ids.tolist() == [[0, 0, 1, 2, 2, 3, 4, 4]]
