"""Gopher repetition (datatrove's GopherRepetitionFilter): thresholds from both sides."""

from __future__ import annotations

from selfsup.curation_spec import GopherRepetition
from tests.workers.data.curation.texts import prose, words
from workers.data.curation.gopher_repetition import GopherRepetitionFilter

F = GopherRepetitionFilter(GopherRepetition())


def test_clean_prose_is_kept() -> None:
    assert F.apply(prose(200)).kept


def test_duplicate_lines_fraction() -> None:
    lines = prose(200).splitlines()  # 20 distinct lines
    repeated = "\n".join(lines + lines[:6])  # 6 duplicates of 26 lines = 0.23 <= 0.3, chars 0.23 > 0.2
    assert F.apply(repeated).reason == "dup_line_char_frac"
    relaxed = GopherRepetitionFilter(
        GopherRepetition(dup_line_char_frac=0.5, dup_para_char_frac=0.5, top_n_grams=[], dup_n_grams=[])
    )
    assert relaxed.apply(repeated).kept
    assert relaxed.apply("\n".join(lines + lines[:8])).kept  # 8 / 28 <= 0.3
    assert relaxed.apply("\n".join(lines + lines[:9])).reason == "dup_line_frac"  # 9 / 29 > 0.3


def test_top_bigram() -> None:
    ws = words(100)
    text = " ".join(w for pair in zip(ws, ["ab cd"] * 100, strict=True) for w in pair) + "."
    assert F.apply(text).reason == "top_2_gram"
    loose = GopherRepetitionFilter(GopherRepetition(top_n_grams=[(2, 0.5)]))
    assert loose.apply(text).reason != "top_2_gram"
