"""Exact dedup: a document whose normalised text was seen before (in any source) is dropped.

Hand-written: datatrove's `ExactDedup` is a three-stage pipeline of signature files meant for a cluster;
here one set of 64-bit hashes (8 bytes of blake2b of datatrove's `simplify_text` normalisation) does the
same in one pass. Memory grows with the number of distinct documents (about 70 bytes each in a Python set),
which is the one piece of curation state that does; near dedup catches these duplicates too, on disk.
"""

from __future__ import annotations

from workers.data.curation.base import Verdict, drop, keep, normalise, text_hash

REASON = "exact_duplicate"


class ExactDedupFilter:
    """Remembers the hashes of the documents it kept; `check` drops a repeat."""

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._clustered: set[int] = set()

    def check(self, text: str) -> tuple[Verdict, bool]:
        """The verdict, and whether this drop opens a new duplicate cluster (the first repeat of a text)."""
        key = text_hash(normalise(text))
        if key not in self._seen:
            self._seen.add(key)
            return keep(text), False
        new_cluster = key not in self._clustered
        if new_cluster:
            self._clustered.add(key)
        return drop(REASON), new_cluster
