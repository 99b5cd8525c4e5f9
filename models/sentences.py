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
       characters once each run of whitespace counts as one (headings, speaker names, stray fragments).

    Spans keep their order of appearance. Long pieces are not cut here: the trainer cuts a sentence's
    tokens to its context length.
    """
    spans: list[tuple[int, int]] = []
    for line_start, line_end in _pieces(_LINE_BREAK, text, 0, len(text)):
        for start, end in _pieces(_SENTENCE_BREAK, text, line_start, line_end):
            piece = text[start:end]
            stripped = piece.lstrip()
            start += len(piece) - len(stripped)
            end = start + len(stripped.rstrip())
            if len(_WHITESPACE_RUN.sub(" ", text[start:end])) >= min_chars:
                spans.append((start, end))
    return spans


def _pieces(separator: re.Pattern[str], text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The spans of ``text[start:end]`` between matches of ``separator``."""
    pieces, position = [], start
    for match in separator.finditer(text, start, end):
        pieces.append((position, match.start()))
        position = match.end()
    pieces.append((position, end))
    return pieces
