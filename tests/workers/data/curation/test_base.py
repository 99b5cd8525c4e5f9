"""The fast word tokenizer against datatrove's own (spaCy) on the same input."""

from __future__ import annotations

import random

from datatrove.data import Document
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.utils.word_tokenizers import load_word_tokenizer

from tests.factories import SHAKESPEARE
from workers.data.curation.base import WORD_TOKENIZER, normalise, text_hash


def test_tokens_match_spacy_on_plain_prose() -> None:
    spacy = load_word_tokenizer("en")
    for text in [
        "The cat sat on the mat, and the dog didn't. It's 3.5 metres (e.g. quite far)!",
        "Write to a@b.com -- or don't... They'll see; we cannot wait.",
    ]:
        assert WORD_TOKENIZER.word_tokenize(text) == spacy.word_tokenize(text)


def test_gopher_verdicts_agree_with_spacy_tokenizer() -> None:
    """On Shakespeare (punctuation-heavy, right at the alphabetic-words threshold) nearly all verdicts agree."""
    paras = [p for p in SHAKESPEARE.read_text()[:200_000].split("\n\n") if p.strip()]
    rng = random.Random(0)
    docs = []
    for _ in range(40):
        start = rng.randrange(len(paras) - 20)
        docs.append("\n\n".join(paras[start : start + rng.randint(2, 10)]))
    for cls in (GopherQualityFilter, GopherRepetitionFilter):
        ours, theirs = cls(language=WORD_TOKENIZER), cls()
        agree = sum(ours.filter(Document(text=d, id="")) == theirs.filter(Document(text=d, id="")) for d in docs)
        assert agree >= 0.9 * len(docs), (cls.__name__, agree)


def test_normalise_and_hash_are_stable() -> None:
    assert normalise("Hello,  WORLD 42!") == "hello world 0"
    assert normalise("Crème Brûlée") == "creme brulee"
    assert text_hash("abc") == text_hash("abc") != text_hash("abd")
