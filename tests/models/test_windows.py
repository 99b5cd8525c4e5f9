"""Tests for window sampling (models/windows.py), where every objective's examples start, and mixtures."""

from __future__ import annotations

import numpy as np
import pytest

from models.windows import (
    MixtureSource,
    check_sources_hold_a_window,
    draw_sources,
    sample_window_offsets,
    sample_window_offsets_in,
    segment_table,
)


def test_windows_stay_inside_the_array_and_cover_its_end() -> None:
    rng = np.random.default_rng(1)
    offsets = sample_window_offsets(20, window=5, count=10_000, rng=rng)
    assert offsets.min() == 0 and offsets.max() == 15
    with pytest.raises(ValueError, match="need at least 5 tokens"):
        sample_window_offsets(4, window=5, count=1, rng=rng)


def _mixture() -> tuple[MixtureSource, ...]:
    return (
        MixtureSource(name="cor_a", weight=0.7, train=(0, 1000), validation=(0, 100)),
        MixtureSource(name="cor_b", weight=0.3, train=(1000, 1400), validation=(100, 150)),
    )


def test_sources_are_drawn_in_proportion_to_their_weights() -> None:
    picks = draw_sources(_mixture(), count=600, rng=np.random.default_rng(3))
    # 600 draws at p = 0.7: the standard error of the share is 0.019; allow about 2.5 of them.
    assert abs(np.mean(picks == 0) - 0.7) < 0.05
    assert set(picks.tolist()) == {0, 1}


def test_source_draws_are_a_pure_function_of_the_generator_seed() -> None:
    def draw(*seed: int) -> np.ndarray:
        return draw_sources(_mixture(), count=64, rng=np.random.default_rng(list(seed)))

    assert np.array_equal(draw(7, 3, 0), draw(7, 3, 0))
    assert not np.array_equal(draw(7, 3, 0), draw(7, 4, 0))


def test_windows_stay_inside_their_rows_segment() -> None:
    rng = np.random.default_rng(5)
    picks = draw_sources(_mixture(), count=5_000, rng=rng)
    segments = segment_table(_mixture())[picks]
    offsets = sample_window_offsets_in(segments, window=50, rng=rng)
    assert np.all(offsets >= segments[:, 0]) and np.all(offsets + 50 <= segments[:, 1])
    # Both ends of both segments are reachable: windows start at each start and end at each end.
    for start, end in segment_table(_mixture()).tolist():
        inside = offsets[(segments[:, 0] == start)]
        assert inside.min() == start and inside.max() == end - 50


def test_a_source_shorter_than_a_window_is_refused_by_name() -> None:
    check_sources_hold_a_window(_mixture(), 400)
    with pytest.raises(ValueError, match="source cor_b has 400 training tokens, fewer than one window of 401"):
        check_sources_hold_a_window(_mixture(), 401)
    unused = (*_mixture(), MixtureSource(name="cor_c", weight=0.0, train=(1400, 1401), validation=(150, 150)))
    check_sources_hold_a_window(unused, 400)  # never drawn, so never too short
    with pytest.raises(ValueError, match="need at least 401 tokens for one window in every source"):
        sample_window_offsets_in(segment_table(_mixture()), window=401, rng=np.random.default_rng(0))
