"""C4 lines (datatrove's C4QualityFilter): each threshold from both sides."""

from __future__ import annotations

from selfsup.curation_spec import C4Lines
from workers.data.curation.c4_lines import C4LinesFilter

GOOD = "\n".join(f"This is good sentence number {i}." for i in range(5))


def test_keeps_five_good_sentences_and_drops_four() -> None:
    f = C4LinesFilter(C4Lines())
    verdict, _ = f.apply(GOOD)
    assert verdict.text == GOOD
    verdict, _ = f.apply("\n".join(GOOD.splitlines()[:4]))
    assert verdict.reason == "too_few_sentences"


def test_line_rules_remove_lines_with_reasons() -> None:
    f = C4LinesFilter(C4Lines())
    doc = GOOD + "\nNo terminal punctuation here\nTwo words.\nThree words here.\nPlease enable javascript now.\n"
    verdict, reasons = f.apply(doc)
    assert verdict.text == GOOD + "\nThree words here."
    assert verdict.lines_removed == 3
    assert reasons == {"no_terminal_punc": 1, "too_few_words": 1, "javascript": 1}


def test_document_rules_and_switches() -> None:
    f = C4LinesFilter(C4Lines())
    assert f.apply(GOOD + "\nLorem ipsum dolor sit amet.")[0].reason == "lorem_ipsum"
    assert f.apply(GOOD + "\nThe set {a, b} is small.")[0].reason == "curly_bracket"
    relaxed = C4LinesFilter(C4Lines(filter_curly_bracket=False, min_num_sentences=4, filter_no_terminal_punct=False))
    assert relaxed.apply(GOOD + "\nThe set {a, b} is small.")[0].kept
    assert relaxed.apply("\n".join(GOOD.splitlines()[:4]) + "\nno punctuation at all")[0].lines_removed == 0
