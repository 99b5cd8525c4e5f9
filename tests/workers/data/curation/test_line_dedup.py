"""Line dedup: a line in more than `max_repeats` documents goes, one in exactly that many stays."""

from __future__ import annotations

from pathlib import Path

from selfsup.curation_spec import LineDedup
from workers.data.curation.line_dedup import REASON_EMPTY, LineCounter, LineDedupFilter

BOILER = "Subscribe to our newsletter today"
EDGE = "Share this page with your friends"


def _filter(docs: list[str], tmp_path: Path, **kwargs: int) -> LineDedupFilter:
    spec = LineDedup()
    counter = LineCounter(spec, tmp_path, **kwargs)
    for doc in docs:
        counter.add(doc)
    return LineDedupFilter(spec, counter.boilerplate())


def _docs() -> list[str]:
    docs = [f"Body of document {i} is here.\n{BOILER}" for i in range(4)]  # 4 > max_repeats=3
    docs += [f"Other body {i} text.\n{EDGE}\n{EDGE}" for i in range(3)]  # 3 documents (twice in each)
    docs += [f"Short {i}.\nok\n" * 1 for i in range(5)]  # "ok" is under min_chars=10
    return docs


def test_counts_documents_not_occurrences(tmp_path: Path) -> None:
    f = _filter(_docs(), tmp_path)
    assert sorted(f.boilerplate.values()) == [4]
    verdict = f.apply(f"Body of document 0 is here.\n{BOILER}")
    assert verdict.text == "Body of document 0 is here." and verdict.lines_removed == 1
    assert f.apply(f"Other body 0 text.\n{EDGE}\n{EDGE}").lines_removed == 0
    assert f.apply("Short 1.\nok\n").lines_removed == 0
    assert f.apply(f"  {BOILER}  \n\n").reason == REASON_EMPTY


def test_spilling_gives_the_same_counts(tmp_path: Path) -> None:
    assert _filter(_docs(), tmp_path / "a", buffer_lines=1).boilerplate == _filter(_docs(), tmp_path / "b").boilerplate
