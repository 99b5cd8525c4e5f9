"""Tests for sentence splitting (models/sentences.py), which the tokenizer records and contrastive draws from."""

from __future__ import annotations

import random
import re

from models.sentences import sentence_spans

SHAKESPEARE = """ACT III. SCENE I.
HAMLET.
To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles,
And by opposing end them? To die: to sleep;
No more; and by a sleep to say we end
The heart-ache, and the thousand natural shocks
That flesh is heir to.   'Tis a consummation
Devoutly to be wish'd. To die, to sleep;

OPHELIA.
Good my lord, how does your honour for this many a day?
"""


def _sentences(text: str, min_chars: int = 20) -> list[str]:
    """The text of each span, with whitespace runs collapsed to one space."""
    return [" ".join(text[start:end].split()) for start, end in sentence_spans(text, min_chars=min_chars)]


def test_splits_shakespeare_by_the_documented_rule() -> None:
    sentences = _sentences(SHAKESPEARE)
    assert sentences == [
        "To be, or not to be, that is the question:",
        "Whether 'tis nobler in the mind to suffer",
        "The slings and arrows of outrageous fortune,",
        "Or to take arms against a sea of troubles,",
        "And by opposing end them?",  # split after "?" + space
        "No more; and by a sleep to say we end",
        "The heart-ache, and the thousand natural shocks",
        "That flesh is heir to.",  # split after "." + spaces
        "Devoutly to be wish'd.",
        "Good my lord, how does your honour for this many a day?",
    ]
    # Dropped as shorter than min_chars: headings, speaker names, "To die: to sleep;" (17 chars) and
    # "'Tis a consummation" (19 chars).
    assert all(len(sentence) >= 20 for sentence in sentences)


def test_min_chars_controls_what_is_dropped() -> None:
    sentences = _sentences(SHAKESPEARE, min_chars=1)
    assert "HAMLET." in sentences
    assert "To die: to sleep;" in sentences
    assert "" not in sentences


def test_long_pieces_are_kept_whole() -> None:
    words = " ".join(f"word{index}" for index in range(200))  # one long sentence without punctuation
    assert sentence_spans(words) == [(0, len(words))]


def test_whitespace_is_normalised_and_result_is_deterministic() -> None:
    text = "First   sentence\tis long enough here.\r\nSecond one is also long enough!  Third? no"
    expected = ["First sentence is long enough here.", "Second one is also long enough!"]
    assert _sentences(text) == expected
    assert sentence_spans(text) == sentence_spans(text)


def test_sentence_spans_locate_the_sentences_of_the_rule_in_the_raw_text() -> None:
    text = SHAKESPEARE + "\n\nAll:\nSpeak, speak.  You are all resolved rather to die than to famish?   Resolved!"
    spans = sentence_spans(text)
    assert _sentences(text) == [*_sentences(SHAKESPEARE), "You are all resolved rather to die than to famish?"]
    assert all(text[start:end] == text[start:end].strip() for start, end in spans)


def _pieces(separator: str, text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The spans of `text[start:end]` between matches of `separator`."""
    pieces, position = [], start
    for match in re.compile(separator).finditer(text, start, end):
        pieces.append((position, match.start()))
        position = match.end()
    return [*pieces, (position, end)]


def _line_by_line(text: str, min_chars: int) -> list[tuple[int, int]]:
    """The documented rule, step by step: lines, then sentence breaks within a line, then strip and measure."""
    spans = []
    for line in _pieces(r"\r\n|\r|\n", text, 0, len(text)):
        for start, end in _pieces(r"(?<=[.!?])\s+|(?<=[.!?][\"'\u201d\u2019)\]])\s+", text, *line):
            piece = text[start:end]
            start += len(piece) - len(piece.lstrip())
            end = start + len(piece.strip())
            if end > start and len(re.sub(r"\s+", " ", text[start:end])) >= min_chars:
                spans.append((start, end))
    return spans


def test_sentence_spans_follow_the_rule_on_random_text() -> None:
    rng = random.Random(0)
    alphabet = [*"ab.!?\"')]\u201d\u2019 \t\n\r\x85\u2028\x0b", "word ", "Mr. ", "\r\n", "  "]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        for min_chars in (1, 5):
            assert sentence_spans(text, min_chars=min_chars) == _line_by_line(text, min_chars), repr(text)
