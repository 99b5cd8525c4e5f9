"""Near dedup: planted near duplicates are found, unrelated documents are not merged, and the clusters
match datasketch's MinHash + MinHashLSH with the same parameters on the same input."""

from __future__ import annotations

import random
from pathlib import Path

from selfsup.curation_spec import NearDedup
from tests.workers.data.curation.texts import words
from workers.data.curation.base import normalise
from workers.data.curation.near_dedup import NearDedupIndex, find_near_duplicates

SPEC = NearDedup()


def _corpus() -> tuple[list[str], dict[int, int]]:
    """40 unrelated documents of 300 words, and 10 copies with 5% of their words changed (one passage)."""
    docs = [" ".join(words(300, seed=i)) for i in range(40)]
    planted: dict[int, int] = {}
    rng = random.Random(1)
    for k in range(10):
        w = docs[k].split()
        start = rng.randrange(0, 300 - 15)
        w[start : start + 15] = words(15, seed=1000 + k)  # 15 of 300 words = 5%
        planted[len(docs)] = k
        docs.append(" ".join(w))
    return docs, planted


def test_finds_planted_and_merges_nothing_else(tmp_path: Path) -> None:
    docs, planted = _corpus()
    found = find_near_duplicates(docs, SPEC, tmp_path)
    assert found.removed == planted
    assert found.clusters == 10


def test_deterministic_and_bounded_settings_agree(tmp_path: Path) -> None:
    docs, planted = _corpus()
    small = NearDedupIndex(SPEC, tmp_path / "small", batch_shingles=500, memory_bytes=1024)
    for i, doc in enumerate(docs):
        small.add(i, doc)
    assert small.cluster().removed == planted == find_near_duplicates(docs, SPEC, tmp_path / "big").removed
    assert not list((tmp_path / "small").iterdir())  # the runs are cleaned up


def test_short_and_empty_documents(tmp_path: Path) -> None:
    found = find_near_duplicates(["", "a b c", "A, b c!", "x y z"], SPEC, tmp_path)
    assert found.removed == {2: 1}


def test_same_clusters_as_datasketch(tmp_path: Path) -> None:
    from datasketch import MinHash, MinHashLSH

    docs, planted = _corpus()
    lsh = MinHashLSH(num_perm=SPEC.bands * SPEC.rows_per_band, params=(SPEC.bands, SPEC.rows_per_band))
    theirs: dict[int, int] = {}
    for i, doc in enumerate(docs):
        ws = normalise(doc).split()
        m = MinHash(num_perm=SPEC.bands * SPEC.rows_per_band, seed=SPEC.seed)
        m.update_batch([" ".join(ws[j : j + SPEC.n_grams]).encode() for j in range(len(ws) - SPEC.n_grams + 1)])
        match = lsh.query(m)
        if match:
            theirs[i] = min(match)
        else:
            lsh.insert(i, m)
    assert theirs == planted == find_near_duplicates(docs, SPEC, tmp_path).removed
