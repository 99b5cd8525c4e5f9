"""Decontamination: a training document sharing any `n_grams`-word sequence with an evaluation document is
dropped (the GPT-3 rule).

The same matching as datatrove's `NGramsDecontFilter` (datatrove's `simplify_text`, then word n-grams,
hashed), hand-written because datatrove's indexer reads its evaluation sets from lighteval and its filter
from index files, and to hash with numpy: the evaluation n-grams are one sorted array of 64-bit hashes and
a document's n-grams are looked up with one `searchsorted`. `test_decontamination.py` checks the verdicts
against datatrove's filter on the same input.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from selfsup.curation_spec import Decontamination
from workers.data.curation.base import Verdict, drop, keep, normalise
from workers.data.curation.near_dedup import WordHashes, shingle_hashes

REASON = "contaminated"


class DecontaminationFilter:
    """Holds the evaluation n-grams; `apply` drops a document that contains one."""

    def __init__(self, spec: Decontamination, evaluation: Iterable[str]) -> None:
        self.n = spec.n_grams
        self._words = WordHashes()
        hashes = [self._ngrams(text) for text in evaluation]
        self._index = np.unique(np.concatenate(hashes)) if hashes else np.empty(0, dtype=np.uint64)

    def _ngrams(self, text: str) -> np.ndarray:
        words = np.fromiter(self._words(normalise(text).split()), dtype=np.uint64)
        return shingle_hashes(words, self.n, short_as_one=False)

    @property
    def n_evaluation_ngrams(self) -> int:
        """How many distinct evaluation n-grams there are."""
        return len(self._index)

    def apply(self, text: str) -> Verdict:
        """Drop when any of the document's n-grams is an evaluation n-gram."""
        if len(self._index) == 0:
            return keep(text)
        grams = self._ngrams(text)
        if len(grams) == 0:
            return keep(text)
        pos = np.searchsorted(self._index, grams).clip(max=len(self._index) - 1)
        return drop(REASON) if bool((self._index[pos] == grams).any()) else keep(text)
