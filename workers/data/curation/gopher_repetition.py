"""Gopher repetition heuristics, by datatrove's `GopherRepetitionFilter` (its logic and reasons).

The only change is the word tokenizer (see `base.FastWordTokenizer`).
"""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters import GopherRepetitionFilter as _Datatrove

from selfsup.curation_spec import GopherRepetition
from workers.data.curation.base import WORD_TOKENIZER, Verdict, drop, keep


class GopherRepetitionFilter:
    """Keeps or drops one document by the Gopher repetition rules."""

    def __init__(self, spec: GopherRepetition) -> None:
        self._filter = _Datatrove(
            dup_line_frac=spec.dup_line_frac,
            dup_para_frac=spec.dup_para_frac,
            dup_line_char_frac=spec.dup_line_char_frac,
            dup_para_char_frac=spec.dup_para_char_frac,
            top_n_grams=tuple(spec.top_n_grams),
            dup_n_grams=tuple(spec.dup_n_grams),
            language=WORD_TOKENIZER,
        )

    def apply(self, text: str) -> Verdict:
        """Keep, or drop with datatrove's reason (`dup_line_frac`, `top_2_gram`, `duplicated_5_n_grams`, ...)."""
        result = self._filter.filter(Document(text=text, id=""))
        if isinstance(result, tuple):
            return drop(result[1])
        return keep(text) if result else drop("gopher_repetition")
