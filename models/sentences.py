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


def split_into_sentences(text: str, *, min_chars: int = 20, max_chars: int = 512) -> list[str]:
    """Cut a document into training sentences by a simple deterministic rule.

    The rule, applied in order:

    1. Split at every line break (``\\n``, ``\\r\\n``, ``\\r``), so each line of verse or each
       paragraph line stands alone.
    2. Within a line, split after ``.``, ``!`` or ``?`` (optionally followed by one closing quote or
       bracket) wherever whitespace follows. Abbreviations such as "Mr. Smith" are split too; the
       rule is deliberately naive.
    3. Collapse each run of whitespace into one space and strip both ends.
    4. Cut a piece longer than ``max_chars`` into consecutive windows of at most ``max_chars``
       characters, each ending at the last space inside the window (the space is dropped), or cut
       hard at ``max_chars`` when the window has no space.
    5. Drop every resulting piece shorter than ``min_chars`` characters (headings, speaker names,
       stray fragments).

    Pieces keep their order of appearance.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1; got {max_chars}")
    if min_chars > max_chars:
        raise ValueError(f"min_chars ({min_chars}) must not exceed max_chars ({max_chars})")
    sentences: list[str] = []
    for line in _LINE_BREAK.split(text):
        for piece in _SENTENCE_BREAK.split(line):
            normalised = _WHITESPACE_RUN.sub(" ", piece).strip()
            for window in _windows(normalised, max_chars):
                if len(window) >= min_chars:
                    sentences.append(window)
    return sentences


def sentence_spans(text: str, *, min_chars: int = 20) -> list[tuple[int, int]]:
    """The ``(start, end)`` character spans of ``text``'s sentences, by `split_into_sentences`'s rule.

    Steps 1, 2 and 5 of that rule (line breaks, sentence-ending punctuation, dropping pieces shorter than
    ``min_chars`` once whitespace runs count as one character); each span is stripped of surrounding
    whitespace. Long pieces are not cut here: the trainer cuts a sentence's tokens to its context length.
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


def _windows(piece: str, max_chars: int) -> list[str]:
    """Cut normalised ``piece`` into chunks of at most ``max_chars``, at spaces where possible."""
    windows: list[str] = []
    while len(piece) > max_chars:
        cut = piece.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            # No space to break at: a hard cut keeps the bound.
            windows.append(piece[:max_chars])
            piece = piece[max_chars:].lstrip()
        else:
            windows.append(piece[:cut])
            piece = piece[cut + 1 :]
    if piece:
        windows.append(piece)
    return windows
