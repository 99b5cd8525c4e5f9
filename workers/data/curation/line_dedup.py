"""C4-style line dedup: a line found in more than `max_repeats` documents is removed from every document.

Hand-written (datatrove has no such step: its `SentenceDedup` matches spans of three sentences). Two
passes: `LineCounter` counts, for each line of at least `min_chars` characters (stripped), the documents it
occurs in; `LineDedupFilter` then removes the lines counted more than `max_repeats` times. The counter
keeps at most `buffer_lines` hashes in memory and spills the rest to bucket files in `workdir` (by the top
bits of the hash), so counting needs one bucket's worth of memory, not the corpus's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfsup.curation_spec import LineDedup
from workers.data.curation.base import Verdict, drop, keep, text_hash

REASON_EMPTY = "all_lines_boilerplate"
_BUCKET_BITS = 6


def line_key(line: str, min_chars: int) -> int | None:
    """The hash a line is counted under, or None for a line too short to count."""
    stripped = line.strip()
    if len(stripped) < min_chars:
        return None
    return text_hash(stripped)


class LineCounter:
    """First pass: counts in how many documents each line occurs."""

    def __init__(self, spec: LineDedup, workdir: Path, *, buffer_lines: int = 4_000_000) -> None:
        self.spec = spec
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.buffer_lines = buffer_lines
        self._buffer: list[int] = []
        self._buckets = [self.workdir / f"line_dedup_bucket_{i:02d}.bin" for i in range(1 << _BUCKET_BITS)]
        for path in self._buckets:
            path.write_bytes(b"")

    def add(self, text: str) -> None:
        """Counts each distinct line of one document once."""
        keys = {line_key(line, self.spec.min_chars) for line in text.splitlines()}
        keys.discard(None)
        self._buffer.extend(keys)  # type: ignore[arg-type]
        if len(self._buffer) >= self.buffer_lines:
            self._spill()

    def _spill(self) -> None:
        if not self._buffer:
            return
        keys = np.array(self._buffer, dtype=np.uint64)
        bucket = (keys >> np.uint64(64 - _BUCKET_BITS)).astype(np.intp)
        order = np.argsort(bucket, kind="stable")
        keys, bucket = keys[order], bucket[order]
        bounds = np.searchsorted(bucket, np.arange(len(self._buckets) + 1))
        for i, path in enumerate(self._buckets):
            if bounds[i + 1] > bounds[i]:
                with path.open("ab") as f:
                    keys[bounds[i] : bounds[i + 1]].tofile(f)
        self._buffer = []

    def boilerplate(self) -> dict[int, int]:
        """The lines to remove: hash -> number of documents it occurs in (more than `max_repeats`)."""
        self._spill()
        found: dict[int, int] = {}
        for path in self._buckets:
            keys = np.fromfile(path, dtype=np.uint64)
            path.unlink(missing_ok=True)
            if len(keys) == 0:
                continue
            unique, counts = np.unique(keys, return_counts=True)
            repeated = counts > self.spec.max_repeats
            found.update(zip(unique[repeated].tolist(), counts[repeated].tolist(), strict=True))
        return found


@dataclass
class LineDedupFilter:
    """Second pass: removes the boilerplate lines from a document."""

    spec: LineDedup
    boilerplate: dict[int, int] = field(default_factory=dict)
    texts: dict[int, str] = field(default_factory=dict)  # the text of each boilerplate line met, for the report

    def apply(self, text: str) -> Verdict:
        """The document without its boilerplate lines (dropped when nothing else is left)."""
        kept: list[str] = []
        removed: list[str] = []
        for line in text.splitlines():
            key = line_key(line, self.spec.min_chars)
            if key is not None and key in self.boilerplate:
                removed.append(line)
            else:
                kept.append(line)
        if not removed:
            return keep(text)
        if not "".join(kept).strip():
            return drop(REASON_EMPTY, lines_removed=len(removed))
        return keep("\n".join(kept), lines_removed=len(removed), removed_lines=tuple(removed))

    def count_removed(self, verdict: Verdict, counts: Counter[int], *, max_chars: int = 500) -> None:
        """Adds the lines `verdict` removed to `counts` (by hash), remembering their text for the report."""
        for line in verdict.removed_lines:
            key = line_key(line, self.spec.min_chars)
            if key is not None:
                counts[key] += 1
                self.texts.setdefault(key, line.strip()[:max_chars])
