"""C4's line rules, by datatrove's `C4QualityFilter` (its logic, reasons and defaults).

Lines without terminal punctuation, with too few words, with a too long word, mentioning javascript or a
cookie/terms policy are removed; a document with "lorem ipsum", a curly bracket, or too few sentences left
is dropped. The only change is the word tokenizer (see `base.FastWordTokenizer`), used to count sentences.
"""

from __future__ import annotations

from collections import Counter

from datatrove.data import Document
from datatrove.pipeline.filters import C4QualityFilter

from selfsup.curation_spec import C4Lines
from workers.data.curation.base import WORD_TOKENIZER, Verdict, drop, keep


class _CountingC4Filter(C4QualityFilter):  # type: ignore[misc]
    """datatrove's filter, with its per-line statistics kept for the report."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.line_stats: Counter[str] = Counter()

    def stat_update(self, *labels: str, value: int = 1, unit: str | None = None) -> None:
        for label in labels:
            if label.startswith("line-filter-"):
                self.line_stats[label.removeprefix("line-filter-")] += value


class C4LinesFilter:
    """Applies C4's line rules to one document."""

    def __init__(self, spec: C4Lines) -> None:
        self._filter = _CountingC4Filter(
            filter_no_terminal_punct=spec.filter_no_terminal_punct,
            min_num_sentences=spec.min_num_sentences,
            min_words_per_line=spec.min_words_per_line,
            max_word_length=spec.max_word_length,
            filter_lorem_ipsum=spec.filter_lorem_ipsum,
            filter_javascript=spec.filter_javascript,
            filter_curly_bracket=spec.filter_curly_bracket,
            filter_policy=spec.filter_policy,
            language=WORD_TOKENIZER,
        )

    def apply(self, text: str) -> tuple[Verdict, Counter[str]]:
        """The rewritten document (or the reason it is dropped), and the removed lines counted by reason."""
        self._filter.line_stats = Counter()
        doc = Document(text=text, id="")
        result = self._filter.filter(doc)
        line_reasons = self._filter.line_stats
        removed = sum(line_reasons.values())
        if isinstance(result, tuple):
            return drop(result[1], lines_removed=removed), line_reasons
        if not result:
            return drop("c4_lines", lines_removed=removed), line_reasons
        if not doc.text.strip():
            return drop("no_lines_left", lines_removed=removed), line_reasons
        return keep(doc.text, lines_removed=removed), line_reasons
