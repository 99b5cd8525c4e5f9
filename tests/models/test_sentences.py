"""Tests for sentence splitting (models/sentences.py), which the tokenizer records and contrastive draws from."""

from __future__ import annotations

from models.sentences import sentence_spans, split_into_sentences

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


def test_splits_shakespeare_by_the_documented_rule() -> None:
    sentences = split_into_sentences(SHAKESPEARE)
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
    sentences = split_into_sentences(SHAKESPEARE, min_chars=1)
    assert "HAMLET." in sentences
    assert "To die: to sleep;" in sentences
    assert "" not in sentences


def test_long_pieces_are_windowed_at_spaces() -> None:
    words = " ".join(f"word{index}" for index in range(100))  # one long sentence without punctuation
    windows = split_into_sentences(words, min_chars=1, max_chars=50)
    assert all(len(window) <= 50 for window in windows)
    assert " ".join(windows) == words  # nothing lost; cuts fall on spaces
    assert len(windows) > 1


def test_unbroken_text_is_cut_hard_and_short_tails_are_dropped() -> None:
    assert split_into_sentences("x" * 105, min_chars=10, max_chars=50) == ["x" * 50, "x" * 50]


def test_whitespace_is_normalised_and_result_is_deterministic() -> None:
    text = "First   sentence\tis long enough here.\r\nSecond one is also long enough!  Third? no"
    expected = ["First sentence is long enough here.", "Second one is also long enough!"]
    assert split_into_sentences(text) == expected
    assert split_into_sentences(text) == split_into_sentences(text)


def test_sentence_spans_locate_the_sentences_of_the_rule_in_the_raw_text() -> None:
    text = SHAKESPEARE + "\n\nAll:\nSpeak, speak.  You are all resolved rather to die than to famish?   Resolved!"
    spans = sentence_spans(text)
    assert [" ".join(text[start:end].split()) for start, end in spans] == split_into_sentences(text)
    assert all(text[start:end] == text[start:end].strip() for start, end in spans)
