"""Gopher (MassiveText) quality heuristics, by datatrove's `GopherQualityFilter` (its logic and reasons).

The only change is the word tokenizer (see `base.FastWordTokenizer`: spaCy's would take 0.2 MB/s).
"""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters import GopherQualityFilter as _Datatrove

from selfsup.curation_spec import GopherQuality
from workers.data.curation.base import WORD_TOKENIZER, Verdict, drop, keep


class GopherQualityFilter:
    """Keeps or drops one document by the Gopher quality rules."""

    def __init__(self, spec: GopherQuality) -> None:
        self._filter = _Datatrove(
            min_doc_words=spec.min_doc_words,
            max_doc_words=spec.max_doc_words,
            min_avg_word_length=spec.min_avg_word_length,
            max_avg_word_length=spec.max_avg_word_length,
            max_symbol_word_ratio=spec.max_symbol_word_ratio,
            max_bullet_lines_ratio=spec.max_bullet_lines_ratio,
            max_ellipsis_lines_ratio=spec.max_ellipsis_lines_ratio,
            max_non_alpha_words_ratio=spec.max_non_alpha_words_ratio,
            min_stop_words=spec.min_stop_words,
            stop_words=spec.stop_words,
            language=WORD_TOKENIZER,
        )

    def apply(self, text: str) -> Verdict:
        """Keep, or drop with datatrove's reason (`gopher_short_doc`, `gopher_below_alpha_threshold`, ...)."""
        if not text.strip():
            return drop("empty")
        result = self._filter.filter(Document(text=text, id=""))
        if isinstance(result, tuple):
            return drop(result[1])
        return keep(text) if result else drop("gopher_quality")
