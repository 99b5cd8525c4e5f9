"""Near dedup: MinHash over word n-grams with LSH banding, one document kept per cluster.

Hand-written rather than `datasketch` (whose `MinHash.update` hashes every shingle with SHA-1 in Python,
one document at a time, and whose `MinHashLSH` keeps every band of every document in memory) for:

- speed: each word is hashed once (blake2b, cached per distinct word); shingle hashes are mixed from word
  hashes with numpy, and a whole batch of documents is signed at once, one permutation at a time, with
  `np.minimum.reduceat` over document boundaries;
- memory: a batch (`batch_shingles`) is the largest thing held; band hashes go to a sorted run file per
  batch in `workdir`; clustering reads the runs back one slice of the (uniform) hash space at a time, as
  many slices as `memory_bytes` requires, so memory is bounded by those two settings and not by the corpus
  (the union-find holds only documents that collided, as datatrove's does);
- determinism: permutations come from `seed`, hashes from blake2b, so the same input keeps the same set.

The permutations are multiply-shift hashes (`(a * x + b) >> 32` on 64 bits, `a` odd), a universal family
as good for MinHash as datasketch's `(a * x + b) mod (2**61 - 1)` and without the division.
`tests/workers/data/curation/test_near_dedup.py` compares the clusters with datasketch's on the same input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfsup.curation_spec import NearDedup
from workers.data.curation.base import normalise

_U64 = np.uint64
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)
_SHINGLE_MUL = _U64(0x9E3779B97F4A7C15)
_RECORD = np.dtype([("band_hash", "<u8"), ("doc", "<u8")])


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the 64 output bits."""
    x = x ^ (x >> _U64(30))
    x = x * _MIX1
    x = x ^ (x >> _U64(27))
    x = x * _MIX2
    return x ^ (x >> _U64(31))


class WordHashes:
    """Stable 64-bit hashes of words, each computed once (the cache is emptied when it grows too large)."""

    def __init__(self, max_words: int = 2_000_000) -> None:
        self._cache: dict[str, int] = {}
        self._max_words = max_words

    def __call__(self, words: list[str]) -> list[int]:
        cache = self._cache
        if len(cache) > self._max_words:
            cache.clear()
        out = []
        for word in words:
            h = cache.get(word)
            if h is None:
                h = int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest())
                cache[word] = h
            out.append(h)
        return out


def shingle_hashes(words: np.ndarray, n: int, *, short_as_one: bool = True) -> np.ndarray:
    """64-bit hashes of every run of `n` consecutive word hashes; a document of fewer words is one run of all
    of them when `short_as_one`, else has none."""
    if len(words) < n and not short_as_one:
        return words[:0]
    if len(words) == 0:
        return words
    if len(words) < n:
        n = len(words)
    count = len(words) - n + 1
    h = words[:count].copy()
    with np.errstate(over="ignore"):
        for j in range(1, n):
            h = h * _SHINGLE_MUL + words[j : j + count]
        return _splitmix(h)


class MinHasher:
    """Deterministic MinHash signatures (`bands * rows_per_band` 32-bit values) of batches of documents."""

    def __init__(self, spec: NearDedup) -> None:
        self.n_grams = spec.n_grams
        self.bands = spec.bands
        self.rows = spec.rows_per_band
        rng = np.random.default_rng(spec.seed)
        self.a = rng.integers(1, 2**63, size=self.bands * self.rows, dtype=np.uint64) * _U64(2) + _U64(1)
        self.b = rng.integers(0, 2**63, size=self.bands * self.rows, dtype=np.uint64)
        self._words = WordHashes()

    def words(self, text: str) -> np.ndarray:
        """The document's word hashes, after datatrove's normalisation."""
        return np.fromiter(self._words(normalise(text).split()), dtype=np.uint64)

    def signatures(self, docs_words: list[np.ndarray]) -> np.ndarray:
        """One row of `bands * rows` minimum hashes per document (documents without words: all ones)."""
        shingles = [shingle_hashes(w, self.n_grams) for w in docs_words]
        lengths = np.fromiter((len(s) for s in shingles), dtype=np.int64, count=len(shingles))
        out = np.full((len(shingles), len(self.a)), np.iinfo(np.uint32).max, dtype=np.uint32)
        nonempty = lengths > 0
        if not nonempty.any():
            return out
        flat = np.concatenate([s for s in shingles if len(s)])
        starts = np.concatenate(([0], np.cumsum(lengths[nonempty])[:-1]))
        with np.errstate(over="ignore"):
            for p in range(len(self.a)):
                permuted = (flat * self.a[p] + self.b[p]) >> _U64(32)
                out[nonempty, p] = np.minimum.reduceat(permuted, starts)
        return out

    def band_hashes(self, signatures: np.ndarray) -> np.ndarray:
        """A 64-bit hash per (document, band) of the band's `rows` values, salted by the band index."""
        n_docs = signatures.shape[0]
        rows = signatures.reshape(n_docs, self.bands, self.rows).astype(np.uint64)
        with np.errstate(over="ignore"):
            h = np.broadcast_to(np.arange(self.bands, dtype=np.uint64) * _SHINGLE_MUL, (n_docs, self.bands)).copy()
            for r in range(self.rows):
                h = _splitmix(h ^ rows[:, :, r])
        return h


class _UnionFind:
    """Union-find over the document indices that collided; the root of a set is its smallest index."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:
            x, parent[x] = parent[x], root
        return root

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            lo, hi = (rx, ry) if rx < ry else (ry, rx)
            self.parent[hi] = lo
            self.parent.setdefault(lo, lo)


@dataclass(frozen=True)
class NearDuplicates:
    """The outcome of clustering: which documents to drop, and which document each one duplicates."""

    removed: dict[int, int]  # document index -> index of the document kept for its cluster
    roots: set[int]  # the document kept for each cluster

    @property
    def clusters(self) -> int:
        """How many clusters of near duplicates were found."""
        return len(self.roots)

    def duplicate_of(self, doc: int) -> int | None:
        """The kept document that `doc` duplicates, or None when `doc` is kept."""
        return self.removed.get(doc)


class NearDedupIndex:
    """Collects documents' band hashes in sorted runs on disk, then clusters them (two passes)."""

    def __init__(
        self, spec: NearDedup, workdir: Path, *, batch_shingles: int = 2_000_000, memory_bytes: int = 256 << 20
    ) -> None:
        self.hasher = MinHasher(spec)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.batch_shingles = batch_shingles
        self.memory_bytes = memory_bytes
        self._pending: list[tuple[int, np.ndarray]] = []
        self._pending_shingles = 0
        self._runs: list[Path] = []
        self._records = 0

    def add(self, doc: int, text: str) -> None:
        """Adds document number `doc` (numbers must increase); it is signed when its batch is full."""
        words = self.hasher.words(text)
        if len(words) == 0:
            return  # an empty document is nobody's near duplicate
        self._pending.append((doc, words))
        self._pending_shingles += len(words)
        if self._pending_shingles >= self.batch_shingles:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        docs = np.fromiter((d for d, _ in self._pending), dtype=np.uint64, count=len(self._pending))
        bands = self.hasher.band_hashes(self.hasher.signatures([w for _, w in self._pending]))
        records = np.empty(bands.size, dtype=_RECORD)
        records["band_hash"] = bands.ravel()
        records["doc"] = np.repeat(docs, self.hasher.bands)
        records.sort(order=["band_hash", "doc"])
        path = self.workdir / f"near_dedup_run_{len(self._runs):06d}.bin"
        records.tofile(path)
        self._runs.append(path)
        self._records += len(records)
        self._pending, self._pending_shingles = [], 0

    def _slices(self) -> Iterator[np.ndarray]:
        """All records, one slice of the hash space at a time, each slice sorted."""
        runs = [np.memmap(p, dtype=_RECORD, mode="r") for p in self._runs if p.stat().st_size]
        n_slices = max(1, -(-self._records * _RECORD.itemsize * 2 // self.memory_bytes))
        bounds = [(2**64 * k) // n_slices for k in range(n_slices + 1)]
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            parts = []
            for run in runs:
                keys = run["band_hash"]
                i = int(np.searchsorted(keys, _U64(lo), side="left"))
                j = len(run) if hi == 2**64 else int(np.searchsorted(keys, _U64(hi), side="left"))
                if j > i:
                    parts.append(np.array(run[i:j]))
            if parts:
                block = np.concatenate(parts)
                block.sort(order=["band_hash", "doc"])
                yield block

    def cluster(self) -> NearDuplicates:
        """Groups documents sharing any band; every document but the first of its group is removed."""
        self._flush()
        uf = _UnionFind()
        for block in self._slices():
            keys = block["band_hash"]
            same = keys[1:] == keys[:-1]
            if not same.any():
                continue
            # The first document of each run of equal keys (records are sorted by (key, doc)).
            first = np.where(np.concatenate(([True], ~same)), np.arange(len(keys)), 0)
            first = np.maximum.accumulate(first)
            dup = np.flatnonzero(np.concatenate(([False], same)))
            docs = block["doc"]
            for a, b in zip(docs[first[dup]].tolist(), docs[dup].tolist(), strict=True):
                uf.union(a, b)
        removed: dict[int, int] = {}
        roots: set[int] = set()
        for doc in list(uf.parent):
            root = uf.find(doc)
            roots.add(root)
            if root != doc:
                removed[doc] = root
        for path in self._runs:
            path.unlink(missing_ok=True)
        self._runs = []
        return NearDuplicates(removed=removed, roots=roots)


def find_near_duplicates(texts: Iterable[str], spec: NearDedup, workdir: Path) -> NearDuplicates:
    """Clusters `texts` (numbered from 0) and says which to drop; a convenience for tests and benchmarks."""
    index = NearDedupIndex(spec, workdir)
    for i, text in enumerate(texts):
        index.add(i, text)
    return index.cluster()
