"""Sentences of a document: what contrastive training draws its examples from.

The tokenizer records, for every document it encodes, the token offsets of its sentences
(`workers.data.tokenization.TokenArrayWriter`); the contrastive objective draws from them.
"""

from __future__ import annotations

import re

# Split points: whitespace after sentence-ending punctuation, optionally after one closing quote or
# bracket. Python lookbehinds need a fixed width, hence two alternatives.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'\u201d\u2019)\]])\s+")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_BREAK = re.compile(rf"{_LINE_BREAK.pattern}|{_SENTENCE_BREAK.pattern}")
_WHITESPACE_RUN = re.compile(r"\s+")


def sentence_spans(text: str, *, min_chars: int = 20) -> list[tuple[int, int]]:
    """The ``(start, end)`` character spans of ``text``'s sentences, by a simple deterministic rule.

    The rule, applied in order:

    1. Split at every line break (``\\n``, ``\\r\\n``, ``\\r``), so each line of verse or each
       paragraph line stands alone.
    2. Within a line, split after ``.``, ``!`` or ``?`` (optionally followed by one closing quote or
       bracket) wherever whitespace follows. Abbreviations such as "Mr. Smith" are split too; the
       rule is deliberately naive.
    3. Strip each piece of surrounding whitespace, and drop it if it is shorter than ``min_chars``
       characters once each run of whitespace counts as one (headings, speaker names, stray fragments),
       or empty.

    Spans keep their order of appearance. Long pieces are not cut here: the trainer cuts a sentence's
    tokens to its context length.
    """
    # One pass over the text: a line break or a sentence break ends a piece. The breaks are searched in the
    # whole text rather than line by line, so a sentence break's whitespace may run over a line break: that
    # only drops pieces that are empty once stripped (the same spans as line by line, in less time).
    spans: list[tuple[int, int]] = []
    position = 0
    for match in _BREAK.finditer(text):
        _keep(text, position, match.start(), min_chars, spans)
        position = match.end()
    _keep(text, position, len(text), min_chars, spans)
    return spans


def _keep(text: str, start: int, end: int, min_chars: int, spans: list[tuple[int, int]]) -> None:
    """Append the span of the piece `text[start:end]` stripped, unless it is empty or too short."""
    piece = text[start:end]
    stripped = piece.lstrip()
    start += len(piece) - len(stripped)
    stripped = stripped.rstrip()
    # Collapsing whitespace only shortens a piece, so most are decided without it.
    if stripped and len(stripped) >= min_chars and len(_WHITESPACE_RUN.sub(" ", stripped)) >= min_chars:
        spans.append((start, start + len(stripped)))
