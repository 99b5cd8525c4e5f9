"""Tests for window sampling (models/windows.py), where every objective's examples start."""

from __future__ import annotations

import numpy as np
import pytest

from models.windows import sample_window_offsets


def test_windows_stay_inside_the_array_and_cover_its_end() -> None:
    rng = np.random.default_rng(1)
    offsets = sample_window_offsets(20, window=5, count=10_000, rng=rng)
    assert offsets.min() == 0 and offsets.max() == 15
    with pytest.raises(ValueError, match="need at least 5 tokens"):
        sample_window_offsets(4, window=5, count=1, rng=rng)
