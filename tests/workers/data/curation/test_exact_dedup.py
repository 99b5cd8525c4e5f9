"""Exact dedup: a repeat of a normalised text is dropped, a different text is kept."""

from __future__ import annotations

from workers.data.curation.exact_dedup import REASON, ExactDedupFilter


def test_repeat_after_normalisation_is_dropped_once_per_cluster() -> None:
    f = ExactDedupFilter()
    first, new = f.check("The cat sat.")
    assert first.kept and not new
    again, new = f.check("the  CAT sat!")  # case, spacing, punctuation folded
    assert again.reason == REASON and new
    third, new = f.check("The cat sat.")
    assert not third.kept and not new  # same cluster
    other, _ = f.check("The cat sat down.")
    assert other.kept
