"""Gopher quality (datatrove's GopherQualityFilter): each threshold from both sides."""

from __future__ import annotations

from selfsup.curation_spec import GopherQuality
from tests.workers.data.curation.texts import prose
from workers.data.curation.gopher_quality import GopherQualityFilter

F = GopherQualityFilter(GopherQuality())


def _reason(text: str, **spec: object) -> str | None:
    f = GopherQualityFilter(GopherQuality(**spec)) if spec else F  # type: ignore[arg-type]
    return f.apply(text).reason


def test_word_count() -> None:
    assert _reason(prose(50)) is None
    assert _reason(prose(49)) == "gopher_short_doc"
    assert _reason(prose(101), max_doc_words=100) == "gopher_long_doc"
    assert _reason(prose(100), max_doc_words=100) is None


def test_mean_word_length() -> None:
    short = "the and " + " ".join(["ab"] * 60) + "."
    assert _reason(short) == "gopher_below_avg_threshold"
    assert _reason(short, min_avg_word_length=2) is None
    assert _reason("the and " + " ".join(["abcdefghijkl"] * 60) + ".") == "gopher_above_avg_threshold"


def test_hashes_and_ellipses() -> None:
    text = prose(60)
    # 60 words, 6 full stops: 7 / 73 tokens <= 0.1, 8 / 74 > 0.1
    assert _reason(text + " #" * 7) is None
    assert _reason(text + " #" * 8) == "gopher_too_many_hashes"
    lines = prose(100).splitlines()  # 10 lines: 3 ending in an ellipsis is 0.3 (kept), 4 is too many
    assert _reason("\n".join(line + "…" if i < 3 else line for i, line in enumerate(lines))) is None
    assert _reason("\n".join(line + "…" if i < 4 else line for i, line in enumerate(lines))) == (
        "gopher_too_many_end_ellipsis"
    )


def test_alphabetic_words_and_stop_words() -> None:
    text = prose(60)
    # 60 words and 6 full stops: 60 / (66 + 9) = 0.8 has enough alphabetic tokens, 60 / 76 does not
    assert _reason(text + " 12" * 9) is None
    assert _reason(text + " 12" * 10) == "gopher_below_alpha_threshold"
    assert _reason(text.replace(" the and ", " xyz qrs ", 1)) == "gopher_enough_stop_words"
    assert _reason(text.replace(" the and ", " the qrs ", 1)) == "gopher_enough_stop_words"
    assert _reason(text.replace(" the and ", " the qrs ", 1), min_stop_words=1) is None
