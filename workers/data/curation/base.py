"""What every curation rule returns, and the text helpers the rules share.

A rule looks at one document and says keep or drop with a reason, or returns the rewritten text and
how many lines or matches it removed, as datatrove's filters and formatters do; the pipeline adds the
verdicts up into the report.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import regex
from datatrove.utils.text import TextNormConfig, simplify_text
from datatrove.utils.word_tokenizers import WhitespaceTokenizer

_NORM = TextNormConfig()


@dataclass(frozen=True, slots=True)
class Verdict:
    """A rule's decision on one document: `text` is None when it is dropped (then `reason` says why)."""

    text: str | None
    reason: str | None = None
    lines_removed: int = 0
    replacements: int = 0
    removed_lines: tuple[str, ...] = ()

    @property
    def kept(self) -> bool:
        """Whether the document survives the rule."""
        return self.text is not None


def keep(text: str, *, lines_removed: int = 0, replacements: int = 0, removed_lines: tuple[str, ...] = ()) -> Verdict:
    """The document survives, possibly rewritten."""
    return Verdict(text, None, lines_removed, replacements, removed_lines)


def drop(reason: str, *, lines_removed: int = 0) -> Verdict:
    """The document is removed, for `reason`."""
    return Verdict(None, reason, lines_removed)


def normalise(text: str) -> str:
    """datatrove's matching normalisation: lower case, digits to 0, punctuation and diacritics removed."""
    if text.isascii():
        # The diacritics step (NFD per character) is the slow part and a no-op on ASCII.
        return simplify_text(text, TextNormConfig(norm_unicode_diacritics=False))
    return simplify_text(text, _NORM)


def text_hash(text: str) -> int:
    """A stable 64-bit hash (blake2b), the same in every process whatever PYTHONHASHSEED is."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class FastWordTokenizer(WhitespaceTokenizer):
    """datatrove's `WordTokenizer` for English with a regular expression instead of spaCy.

    datatrove's English word tokenizer is `spacy.blank("en")`, which runs at about 0.2 MB/s here (it
    would make the quality filters take over a quarter of an hour per 200 MB); this one runs at tens of
    MB/s. It follows spaCy's English rules for prose (contractions split as "do n't", "he 's"; "cannot" as
    "can not"; abbreviations, numbers and addresses kept whole; "..." and "--" one token; every other
    punctuation mark a token of its own); `tests/workers/data/curation/test_base.py` checks that the
    datatrove filters reach the same verdicts with it as with spaCy.
    Sentences are datatrove's own regular-expression splitter (`WhitespaceTokenizer`).
    """

    _WORDS = regex.compile(
        r"(?i:can)(?=not\b)"  # cannot -> can not
        r"|\w+?(?=n['’]t\b)|(?i:n['’]t)\b"  # don't -> do n't
        r"|\w+(?=['’](?i:s|ll|re|ve|m)\b)|['’](?i:s|ll|re|ve|m|em)\b"  # he's -> he 's
        r"|(?:\w\.){2,}"  # e.g. U.S.
        r"|\w+(?:[.@]\w+)+"  # 3.5, 10.0.0.1, a@b.com
        r"|\w+(?:['’]\w+)*"  # call'd, o'er
        r"|\.{2,}|-{2,}"  # ... --
        r"|[^\w\s]"
    )

    def __init__(self) -> None:
        super().__init__()
        self.language = "en"

    def word_tokenize(self, text: str) -> list[str]:
        """Words and punctuation marks, in order."""
        return self._WORDS.findall(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FastWordTokenizer, ())


WORD_TOKENIZER = FastWordTokenizer()
